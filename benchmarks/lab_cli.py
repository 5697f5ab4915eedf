"""The installed `appliance` CLI as the lab benchmarks call it: on the lab their environment names, stopping
the benchmark with the command's output when it fails (a figure of a failed run means nothing)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

BIN = Path(sys.executable).parent


def appliance(env: dict[str, str], *args: str) -> str:
    result = subprocess.run(
        [str(BIN / "appliance"), *args], env=env, capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        sys.exit(f"appliance {' '.join(args)} failed:\n{result.stdout[-3000:]}{result.stderr[-3000:]}")
    return result.stdout


def timed(env: dict[str, str], *args: str) -> float:
    """Seconds `appliance ARGS` took."""
    started = time.monotonic()
    appliance(env, *args)
    return time.monotonic() - started
