"""Package appliance.health as role gpu_health ships it to the nodes: its digest and its files.

`python -m appliance.health_package` prints {"digest": ..., "root": ..., "members": [...]}. The digest
covers the package's files (a node records it, and a run copies the package only when the node's
differs); the members, relative to root, are those files with the top package's __init__.py (its
docstring and version only: nothing else of the toolkit goes to a node), which the role copies in one tar
stream (action plugin tar_stream).

Beside the package go the maintenance modules the Ansible modules share (plugins/module_utils:
appliance_nodes.py, appliance_maintenance.py): the GPU health controller drains a node for remediation
with the very code `appliance node drain` runs. The members are staged together under
~/.cache/appliance/health-package/DIGEST, the root the role copies from.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from appliance import paths
from appliance.bundle.manifest import sha256_of

PACKAGE_DIR = Path(__file__).resolve().parent / "health"
SHARED = ("appliance_nodes.py", "appliance_maintenance.py")
STAGE_DIR = Path.home() / ".cache" / "appliance" / "health-package"


def package_files(package_dir: Path = PACKAGE_DIR) -> list[Path]:
    """The files a node needs: the package's Python modules and its data (the Xid catalog)."""
    return sorted([*package_dir.glob("*.py"), *package_dir.glob("*.yml")])


def package_digest(files: list[Path]) -> str:
    """sha256 over "NAME:SHA256" of each file, in path order, joined by spaces."""
    entries = [f"{path.name}:{sha256_of(path)}" for path in files]
    return hashlib.sha256(" ".join(entries).encode()).hexdigest()


def package_members(package_dir: Path, files: list[Path], shared: list[Path] = ()) -> list[str]:
    """What a node gets, relative to the directory above the top package: its __init__.py, FILES, and the
    SHARED modules beside the top package."""
    top = package_dir.parent
    return [
        f"{top.name}/__init__.py",
        *(f"{top.name}/{package_dir.name}/{path.name}" for path in files),
        *(path.name for path in shared),
    ]


def stage(package_dir: Path, files: list[Path], shared: list[Path], digest: str, stage_dir: Path) -> Path:
    """The members under STAGE_DIR/DIGEST, copied once (a digest names one content)."""
    root = stage_dir / digest
    if (root / ".complete").exists():
        return root
    top = package_dir.parent
    targets = {top / "__init__.py": root / top.name / "__init__.py"}
    targets.update({path: root / top.name / package_dir.name / path.name for path in files})
    targets.update({path: root / path.name for path in shared})
    for source, target in targets.items():
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
    (root / ".complete").write_text(digest + "\n")
    return root


def module_utils_dir() -> Path:
    """The project's plugins/module_utils: the checkout's, or the one a bundle's controller/install.sh
    unpacked beside the virtualenv (paths.project_root finds either)."""
    return paths.project_root() / "plugins" / "module_utils"


def describe(
    package_dir: Path = PACKAGE_DIR, module_utils: Path | None = None, stage_dir: Path = STAGE_DIR
) -> dict:
    module_utils = module_utils or module_utils_dir()
    files = package_files(package_dir)
    shared = [module_utils / name for name in SHARED]
    missing = [str(path) for path in shared if not path.is_file()]
    if missing:
        raise SystemExit(f"appliance.health_package: missing {', '.join(missing)}")
    digest = package_digest([*files, *shared])
    return {
        "digest": digest,
        "root": str(stage(package_dir, files, shared, digest, stage_dir)),
        "members": package_members(package_dir, files, shared),
    }


if __name__ == "__main__":
    print(json.dumps(describe()))
