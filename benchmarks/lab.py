"""Benchmark of the lab: prints how long `lab up` takes cold and warm, and `lab down`.

    python benchmarks/lab.py [--workers N] [--rebuild-image]

Runs its own lab (APPLIANCE_LAB_NAME=bench on 172.28.2.0/24) through the installed CLI, as a user would.
"cold" is a lab up with no node containers (the node image cached); --rebuild-image also times the
node image build from Debian's archive, which happens once per recipe change.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

BIN = Path(sys.executable).parent
ENV = {**os.environ, "APPLIANCE_LAB_NAME": "bench", "APPLIANCE_LAB_SUBNET": "172.28.2.0/24"}


def timed(*args: str) -> float:
    started = time.monotonic()
    result = subprocess.run(
        [str(BIN / "appliance"), *args], env=ENV, capture_output=True, text=True, check=False
    )
    elapsed = time.monotonic() - started
    if result.returncode != 0:
        sys.exit(f"appliance {' '.join(args)} failed: {result.stderr.strip()}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rebuild-image", action="store_true", help="also time the node image build")
    options = parser.parse_args()

    timed("lab", "down")  # start from nothing
    figures: list[tuple[str, float]] = []
    if options.rebuild_image:
        tag = subprocess.run(
            [str(BIN / "appliance"), "lab", "image"], capture_output=True, text=True
        ).stdout.strip()
        subprocess.run(["docker", "rmi", "--force", tag], capture_output=True, check=False)
        figures.append(("node image build (debootstrap + import)", timed("lab", "image")))
    workers = str(options.workers)
    figures.append(
        (f"lab up, cold (1 control plane + {workers} workers created)", timed("lab", "up", "-w", workers))
    )
    figures.append(("lab up, warm (all nodes running, reused)", timed("lab", "up", "-w", workers)))
    figures.append(("lab down", timed("lab", "down")))
    width = max(len(label) for label, _ in figures)
    for label, seconds in figures:
        print(f"{label:<{width}}  {seconds:7.2f} s")


if __name__ == "__main__":
    main()
