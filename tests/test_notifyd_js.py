"""Run web/notifyd.js's own unit tests (Node's test runner)."""

from __future__ import annotations

import re
import subprocess

from tests.harness import ROOT


def test_notifyd_js_unit_tests():
    tests = ROOT / "tests" / "js" / "notifyd.test.cjs"
    count = len(re.findall(r"^test\(", tests.read_text(), re.MULTILINE))
    assert count > 0
    out = subprocess.run(
        ["node", "--test", str(ROOT / "tests" / "js" / "notifyd.test.cjs")],
        capture_output=True,
        text=True,
        cwd=str(ROOT),
        timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "# fail 0" in out.stdout and f"# pass {count}\n" in out.stdout, out.stdout
