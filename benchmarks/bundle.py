"""Benchmark of the offline bundle: prints build time (cold and warm), verify time and bundle size.

    python benchmarks/bundle.py [--cold] [--out DIR]

Runs the installed CLI as a user would. "warm" rebuilds with every cache filled (nothing changed);
--cold first builds with an empty cache directory (APPLIANCE_CACHE_DIR in a temporary directory, so
Go modules, Go builds, images and Debian packages are all fetched and built again: tens of minutes).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BIN = Path(sys.executable).parent


def timed(*args: str, env: dict[str, str] | None = None) -> float:
    started = time.monotonic()
    result = subprocess.run(
        [str(BIN / "appliance"), *args],
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        sys.exit(f"appliance {' '.join(args)} failed: {result.stderr.strip()}")
    return time.monotonic() - started


def size_of(directory: Path) -> int:
    return sum(path.stat().st_size for path in directory.rglob("*") if path.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cold", action="store_true", help="also time a build from empty caches")
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "appliance-bench-bundle")
    options = parser.parse_args()

    figures: list[tuple[str, str]] = []
    if options.cold:
        with tempfile.TemporaryDirectory(prefix="appliance-cold-cache-", dir="/var/tmp") as cache:
            seconds = timed("bundle", "build", "--out", str(options.out), env={"APPLIANCE_CACHE_DIR": cache})
            figures.append(("bundle build, cold (empty caches)", f"{seconds:8.1f} s"))
    timed("bundle", "build", "--out", str(options.out))  # fill the default caches
    figures.append(
        (
            "bundle build, warm (nothing changed)",
            f"{timed('bundle', 'build', '--out', str(options.out)):8.1f} s",
        )
    )
    figures.append(("bundle verify", f"{timed('bundle', 'verify', str(options.out)):8.1f} s"))
    figures.append(("bundle size", f"{size_of(options.out) / 2**20:8.1f} MiB"))
    figures.append(
        ("bundle files (with manifest.json)", f"{sum(1 for p in options.out.rglob('*') if p.is_file()):8d}")
    )
    width = max(len(label) for label, _ in figures)
    for label, value in figures:
        print(f"{label:<{width}}  {value}")


if __name__ == "__main__":
    main()
