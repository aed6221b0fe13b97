"""``scripts/demo`` (one of README's two commands) works: its three requests through a real
mitmdump in front of the bundled fake, on an ephemeral port."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_demo_runs_its_three_requests() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "demo.py"), "--once", "--port", "0"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    out = done.stdout
    streamed = out[out.index("1. streamed") : out.index("2. JSON")]
    assert streamed.count(" delta ") == 4  # the fake's default: four deltas, each on its own line
    assert streamed.rstrip().endswith("response.completed")
    assert "status=completed output_text='echo: A JSON answer, please." in out
    assert "HTTP 429:" in out and "usage_limit_reached" in out
