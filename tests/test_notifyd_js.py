"""Run web/notifyd.js's own unit tests (Node's test runner): the client and
the Hub that shares one session between tabs."""

from __future__ import annotations

import re
import subprocess

from tests.harness import ROOT


def test_notifyd_js_unit_tests():
    files = sorted((ROOT / "tests" / "js").glob("*.test.cjs"))
    assert [f.name for f in files] == ["hub.test.cjs", "notifyd.test.cjs"]
    count = sum(len(re.findall(r"^test\(", f.read_text(), re.MULTILINE)) for f in files)
    assert count > 0
    out = subprocess.run(
        ["node", "--test", *map(str, files)],
        capture_output=True,
        text=True,
        cwd=str(ROOT),
        timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "# fail 0" in out.stdout and f"# pass {count}\n" in out.stdout, out.stdout
