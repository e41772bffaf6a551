"""Run web/notifyd.js's own unit tests (Node's test runner)."""

from __future__ import annotations

import subprocess

from tests.harness import ROOT


def test_notifyd_js_unit_tests():
    out = subprocess.run(
        ["node", "--test", str(ROOT / "tests" / "js" / "notifyd.test.cjs")],
        capture_output=True,
        text=True,
        cwd=str(ROOT),
        timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "# fail 0" in out.stdout and "# pass 13" in out.stdout, out.stdout
