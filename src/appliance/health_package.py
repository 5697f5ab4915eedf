"""Package appliance.health as role gpu_health ships it to the nodes: its digest and one tar archive.

`python -m appliance.health_package` prints {"digest": ..., "archive": ...}. The digest covers the
package's files (a node records it, and a run copies the package only when the node's differs); the
archive holds them with the top package's __init__.py (its docstring and version only: nothing else of
the toolkit goes to a node), made once per digest in the controller's cache, so a run neither packs nor
cleans up anything.
"""

from __future__ import annotations

import hashlib
import json
import os
import tarfile
import tempfile
from pathlib import Path

from appliance import paths
from appliance.bundle.manifest import sha256_of

PACKAGE_DIR = Path(__file__).resolve().parent / "health"


def package_files(package_dir: Path = PACKAGE_DIR) -> list[Path]:
    """The files a node needs: the package's Python modules and its data (the Xid catalog)."""
    return sorted([*package_dir.glob("*.py"), *package_dir.glob("*.yml")])


def package_digest(files: list[Path]) -> str:
    """sha256 over "NAME:SHA256" of each file, in path order, joined by spaces."""
    entries = [f"{path.name}:{sha256_of(path)}" for path in files]
    return hashlib.sha256(" ".join(entries).encode()).hexdigest()


def _owned_by_root(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    info.mode = 0o644
    return info


def package_archive(package_dir: Path, files: list[Path], digest: str, cache: Path) -> Path:
    """FILES under appliance/health/, with the top package's __init__.py, made once per DIGEST."""
    archive = cache / f"{digest}.tar"
    if archive.is_file():
        return archive
    cache.mkdir(parents=True, exist_ok=True)
    # Written beside its final name and renamed: two nodes' runs at once never see half an archive.
    descriptor, partial = tempfile.mkstemp(dir=cache, suffix=".partial")
    try:
        with os.fdopen(descriptor, "wb") as handle, tarfile.open(fileobj=handle, mode="w") as tar:
            top = package_dir.parent / "__init__.py"
            tar.add(top, arcname="appliance/__init__.py", filter=_owned_by_root)
            for path in files:
                tar.add(path, arcname=f"appliance/health/{path.name}", filter=_owned_by_root)
        os.chmod(partial, 0o644)
        os.replace(partial, archive)
    except BaseException:
        Path(partial).unlink(missing_ok=True)
        raise
    return archive


def describe(package_dir: Path = PACKAGE_DIR, cache: Path | None = None) -> dict[str, str]:
    files = package_files(package_dir)
    digest = package_digest(files)
    archive = package_archive(package_dir, files, digest, cache or paths.cache_dir() / "gpu-health")
    return {"digest": digest, "archive": str(archive)}


if __name__ == "__main__":
    print(json.dumps(describe()))
