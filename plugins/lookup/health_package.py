"""Lookup plugin appliance.runai.health_package: the GPU health package as role gpu_health ships it.

The package is the collection's own files: src/appliance/health (the agent, the controller, the Xid
catalog) with src/appliance/__init__.py, and beside them the maintenance modules the Ansible modules share
(plugins/module_utils: appliance_nodes.py, appliance_maintenance.py), so the GPU health controller drains a
node for remediation with the very code `appliance node drain` runs. Nothing comes from the CLI's
installed Python package: a collection installed alone (AWX, an execution environment) ships the same.
"""

from __future__ import annotations

DOCUMENTATION = r"""
name: health_package
author: Appliance toolkit maintainers (@appliance-maintainers)
short_description: The GPU health package role gpu_health copies to the nodes, its digest and its files
description:
  - Finds the package C(appliance.health) in the collection (C(src/appliance/health)), and the shared
    maintenance modules in C(plugins/module_utils).
  - Stages them together once per content under C(~/.cache/appliance/health-package/DIGEST) on the
    controller, the directory the role copies from.
  - The digest covers every file by name and content; a node records it, and a run copies the package
    only where the node's differs.
options: {}
"""

EXAMPLES = r"""
- name: Find the package, its digest and files
  ansible.builtin.set_fact:
    gpu_health_package: "{{ lookup('appliance.runai.health_package') }}"
"""

RETURN = r"""
_raw:
  description: One dict with C(digest), C(root) (the staged directory) and C(members) (paths under root).
  type: list
  elements: dict
"""

import hashlib
import os
import shutil
from pathlib import Path

from ansible.errors import AnsibleLookupError
from ansible.plugins.lookup import LookupBase

COLLECTION_ROOT = Path(__file__).resolve().parents[2]
PACKAGE_DIR = COLLECTION_ROOT / "src" / "appliance" / "health"
MODULE_UTILS = COLLECTION_ROOT / "plugins" / "module_utils"
SHARED = ("appliance_nodes.py", "appliance_maintenance.py")
STAGE_DIR = Path(os.path.expanduser("~")) / ".cache" / "appliance" / "health-package"


def package_files(package_dir: Path = PACKAGE_DIR) -> list[Path]:
    """The files a node needs: the package's Python modules and its data (the Xid catalog)."""
    return sorted([*package_dir.glob("*.py"), *package_dir.glob("*.yml")])


def package_digest(files: list[Path]) -> str:
    """sha256 over "NAME:SHA256" of each file, in path order, joined by spaces."""
    entries = [f"{path.name}:{hashlib.sha256(path.read_bytes()).hexdigest()}" for path in files]
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


def describe(
    package_dir: Path = PACKAGE_DIR, module_utils: Path = MODULE_UTILS, stage_dir: Path = STAGE_DIR
) -> dict:
    files = package_files(package_dir)
    shared = [module_utils / name for name in SHARED]
    missing = [str(path) for path in [package_dir.parent / "__init__.py", *shared] if not path.is_file()]
    if not files:
        missing.insert(0, f"{package_dir}/*.py")
    if missing:
        raise AnsibleLookupError(f"appliance.runai.health_package: missing {', '.join(missing)}")
    digest = package_digest([*files, *shared])
    return {
        "digest": digest,
        "root": str(stage(package_dir, files, shared, digest, stage_dir)),
        "members": package_members(package_dir, files, shared),
    }


class LookupModule(LookupBase):
    def run(self, terms, variables=None, **kwargs):
        self.set_options(var_options=variables, direct=kwargs)
        return [describe()]
