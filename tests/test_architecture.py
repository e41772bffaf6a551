"""The shape of the package (docs/architecture.md): no import circles, and
no module but notifyd.compat reaches into a library's private internals."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "notifyd"


def _trees() -> dict[str, ast.Module]:
    return {p.stem: ast.parse(p.read_text()) for p in sorted(PACKAGE.glob("*.py"))}


def import_graph() -> dict[str, set[str]]:
    """notifyd module -> the notifyd modules it imports (TYPE_CHECKING
    imports included: a circle there is a circle in the design)."""
    trees = _trees()
    graph: dict[str, set[str]] = {name: set() for name in trees}
    for name, tree in trees.items():
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                parts = node.module.split(".")
                if parts[0] != "notifyd":
                    continue
                if len(parts) > 1:
                    graph[name].add(parts[1])
                else:
                    graph[name].update(a.name for a in node.names if a.name in trees)
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    parts = alias.name.split(".")
                    if parts[0] == "notifyd" and len(parts) > 1:
                        graph[name].add(parts[1])
        graph[name].discard(name)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_cycles_finds_a_circle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_the_package_has_no_import_circles():
    assert cycles(import_graph()) == []


def _defined_privates(tree: ast.Module) -> set[str]:
    """Underscore names a module defines: methods, attributes it sets,
    class-level fields and ``__slots__`` entries."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            names.add(node.attr)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        elif isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    names.add(target.id)
                    if target.id == "__slots__":
                        names.update(
                            c.value
                            for c in ast.walk(node.value)
                            if isinstance(c, ast.Constant) and isinstance(c.value, str)
                        )
    return {n for n in names if n.startswith("_") and not n.startswith("__")}


def private_reaches() -> list[str]:
    """``x._name`` (or ``__dict__``) where ``_name`` is defined nowhere in
    notifyd: an underscore attribute of another library."""
    trees = _trees()
    defined = set().union(*(_defined_privates(tree) for tree in trees.values()))
    out = []
    for name, tree in trees.items():
        if name == "compat":
            continue
        for node in ast.walk(tree):
            if not isinstance(node, ast.Attribute):
                continue
            attr = node.attr
            private = attr.startswith("_") and not attr.startswith("__") and attr not in defined
            if private or attr == "__dict__":
                out.append(f"notifyd/{name}.py:{node.lineno}: {ast.unparse(node)}")
            elif (
                isinstance(node.ctx, ast.Store)
                and attr in ("put", "close", "pending")
                and not (isinstance(node.value, ast.Name) and node.value.id == "self")
            ):
                out.append(f"notifyd/{name}.py:{node.lineno}: {ast.unparse(node)} (monkeypatch)")
    return out


def test_only_compat_touches_private_internals_of_other_libraries():
    assert private_reaches() == []


def counters_bumped() -> dict[str, set[str]]:
    """Every counter notifyd bumps, by call: ``inc("…")`` (plain) and
    ``inc_labelled("…", …)`` / ``count("…", …)`` (labelled)."""
    import re

    found: dict[str, set[str]] = {"plain": set(), "labelled": set()}
    for path in PACKAGE.glob("*.py"):
        text = path.read_text()
        for m in re.finditer(r'\.inc\("([a-z_]+)"', text):
            found["plain"].add(m.group(1))
        for m in re.finditer(r'(?:\.inc_labelled|self\.count)\("([a-z_]+)",', text):
            found["labelled"].add(m.group(1))
    return found


def test_every_counter_bumped_is_declared_and_so_exported():
    from notifyd.stats import COUNTERS

    bumped = counters_bumped()
    assert "sessions_closed" in bumped["plain"]  # the scan finds them
    assert "events_rejected" in bumped["labelled"]
    assert {n for n in bumped["plain"] if n not in COUNTERS or COUNTERS[n].label} == set()
    assert {n for n in bumped["labelled"] if n not in COUNTERS or not COUNTERS[n].label} == set()


def test_an_undeclared_counter_cannot_be_bumped():
    import pytest

    from notifyd.stats import Stats

    stats = Stats()
    with pytest.raises(KeyError):
        stats.inc("made_up")
    with pytest.raises(KeyError):
        stats.inc_labelled("made_up", "x")


def test_metrics_export_every_declared_counter():
    from types import SimpleNamespace

    from prometheus_client import generate_latest

    from notifyd.metrics import make_registry
    from notifyd.node import make_router
    from notifyd.router import Policy
    from notifyd.stats import COUNTERS

    router = make_router(Policy(allow_anonymous=True), clock=object())
    broker = router.broker
    router.stats.inc_labelled("events_rejected", "bad_json")
    router.stats.inc("sessions_closed", 3)
    service = SimpleNamespace(
        router=router,
        broker=broker,
        bindings=broker.bindings,
        ws_factory=SimpleNamespace(connections=()),
        amqp=SimpleNamespace(ready=False, reconnects=0),
        history=None,
    )
    text = generate_latest(make_registry(service)).decode()
    for spec in COUNTERS.values():
        assert f"# TYPE {spec.metric}_total counter" in text, spec.metric
    assert 'notifyd_amqp_rejected_total{reason="bad_json"} 1.0' in text
    assert "notifyd_sessions_closed_total 3.0" in text
    assert 'notifyd_client_publishes_total{result="refused"} 0.0' in text


def error_uri_literals() -> list[str]:
    """String constants that are a whole error or close URI, outside
    notifyd.uris."""
    import re

    uri = re.compile(r"(wamp|notifyd)\.(error|close)\.[a-z_.]+")
    out = []
    for name, tree in _trees().items():
        if name == "uris":
            continue
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Constant)
                and isinstance(node.value, str)
                and uri.fullmatch(node.value)
            ):
                out.append(f"notifyd/{name}.py:{node.lineno}: {node.value}")
    return out


def test_error_uris_live_in_one_module():
    assert error_uri_literals() == []


def foreign_private_reads(trees: dict[str, ast.Module] | None = None) -> list[str]:
    """``x._name`` where ``x`` is not ``self``/``cls`` and ``_name`` belongs
    to another notifyd module: one module reading another's private fields."""
    trees = _trees() if trees is None else trees
    own = {name: _defined_privates(tree) for name, tree in trees.items()}
    everywhere = set().union(*own.values())
    out = []
    for name, tree in trees.items():
        for node in ast.walk(tree):
            if not isinstance(node, ast.Attribute):
                continue
            attr = node.attr
            if not attr.startswith("_") or attr.startswith("__"):
                continue
            if isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"):
                continue
            if attr in everywhere and attr not in own[name]:
                out.append(f"notifyd/{name}.py:{node.lineno}: {ast.unparse(node)}")
    return out


def test_foreign_private_reads_finds_one():
    a = ast.parse("class A:\n    def __init__(self):\n        self._x = 1\n")
    b = ast.parse("def f(a):\n    return a._x\n")
    assert foreign_private_reads({"a": a, "b": b}) == ["notifyd/b.py:2: a._x"]


def test_no_module_reads_another_modules_private_fields():
    assert foreign_private_reads() == []
