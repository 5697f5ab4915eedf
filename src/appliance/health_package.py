"""Package appliance.health as role gpu_health ships it to the nodes: its digest and its files.

`python -m appliance.health_package` prints {"digest": ..., "root": ..., "members": [...]}. The digest
covers the package's files (a node records it, and a run copies the package only when the node's
differs); the members, relative to root, are those files with the top package's __init__.py (its
docstring and version only: nothing else of the toolkit goes to a node), which the role copies in one tar
stream (action plugin tar_stream).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from appliance.bundle.manifest import sha256_of

PACKAGE_DIR = Path(__file__).resolve().parent / "health"


def package_files(package_dir: Path = PACKAGE_DIR) -> list[Path]:
    """The files a node needs: the package's Python modules and its data (the Xid catalog)."""
    return sorted([*package_dir.glob("*.py"), *package_dir.glob("*.yml")])


def package_digest(files: list[Path]) -> str:
    """sha256 over "NAME:SHA256" of each file, in path order, joined by spaces."""
    entries = [f"{path.name}:{sha256_of(path)}" for path in files]
    return hashlib.sha256(" ".join(entries).encode()).hexdigest()


def package_members(package_dir: Path, files: list[Path]) -> list[str]:
    """What a node gets, relative to the directory above the top package: its __init__.py and FILES."""
    top = package_dir.parent
    return [f"{top.name}/__init__.py", *(f"{top.name}/{package_dir.name}/{path.name}" for path in files)]


def describe(package_dir: Path = PACKAGE_DIR) -> dict:
    files = package_files(package_dir)
    return {
        "digest": package_digest(files),
        "root": str(package_dir.parents[1]),
        "members": package_members(package_dir, files),
    }


if __name__ == "__main__":
    print(json.dumps(describe()))
