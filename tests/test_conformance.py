"""RFC 6455 conformance of notifyd's WebSocket layer: the Autobahn TestSuite
cases (run by kosoku) against the testee endpoint, which echoes with exactly
the WebSocket options notifyd serves with.  Core cases 1-10 and the 9.x
performance cases run here; the permessage-deflate cases (12.x, 13.x) run in
`make conformance`, which turns compression on."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

from tests.sync_notifyd import SyncNotifyd, free_port

KOSOKU = str(Path(sys.executable).parent / "kosoku")
PASSING = {"OK", "NON-STRICT", "INFORMATIONAL"}


def run_kosoku(address: str, outdir: Path, *args: str) -> dict:
    proc = subprocess.run(
        [KOSOKU, address, "-o", str(outdir), *args], capture_output=True, text=True, timeout=1800
    )
    index = outdir / "index.json"
    assert index.exists(), proc.stdout[-2000:] + proc.stderr[-2000:]
    (results,) = json.loads(index.read_text()).values()
    return results


def test_core_and_performance_cases(rabbit, exchange, tmp_path):
    compression = os.environ.get("NOTIFYD_CONFORMANCE_COMPRESSION") == "1"
    node = SyncNotifyd(
        rabbit.url,
        exchange,
        free_port(),
        "--testee-listen",
        "tcp:0:interface=127.0.0.1",
        # the 9.x cases send messages of up to 16 MiB
        "--max-message-size",
        str(64 * 1024 * 1024),
        *(["--compression"] if compression else []),
    )
    node.start()
    try:
        port = int(node.wait_line(r"testee listening on 127\.0\.0\.1:(\d+)").group(1))
        excluded = [] if compression else ["-x", "12.*", "-x", "13.*"]
        results = run_kosoku(f"127.0.0.1:{port}", tmp_path / "reports", "-p", "2", *excluded)
    finally:
        node.stop()
    verdicts = Counter(r["behavior"] for r in results.values())
    failed = {case: r for case, r in results.items() if r["behavior"] not in PASSING}
    print(f"kosoku: {len(results)} cases, {dict(verdicts)}")
    assert len(results) >= (450 if compression else 290)
    assert any(case.startswith("9.") for case in results)
    assert not failed, failed
