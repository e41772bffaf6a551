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


def private_reaches() -> list[str]:
    """``x._name`` (or ``__dict__``) where ``_name`` is defined nowhere in
    notifyd: an underscore attribute of another library."""
    trees = _trees()
    defined: set[str] = set()
    for tree in trees.values():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                defined.add(node.name)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                defined.add(node.attr)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                defined.add(node.id)
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                defined.add(node.target.id)
            elif isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == "__slots__" for t in node.targets
            ):
                defined.update(
                    c.value
                    for c in ast.walk(node.value)
                    if isinstance(c, ast.Constant) and isinstance(c.value, str)
                )
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


def counters_bumped() -> set[str]:
    """Every counter name notifyd increments (``stats.inc("…")``, ``count``
    callbacks), f-string prefixes ending in ``_``."""
    import re

    names: set[str] = set()
    for path in PACKAGE.glob("*.py"):
        text = path.read_text()
        for m in re.finditer(r'(?:\.inc|count)\(f?"([a-z_]+)', text):
            names.add(m.group(1))
    return names


def test_every_counter_is_exported():
    from notifyd import metrics

    exported_prefixes = tuple(metrics._LABELLED)
    plain = set(metrics._PLAIN_COUNTERS) | {"publishes", "publishes_refused"}
    missing = {
        n for n in counters_bumped() if n not in plain and not n.startswith(exported_prefixes)
    }
    assert missing == set()
    assert "sessions_closed" in counters_bumped()  # the scan finds them
