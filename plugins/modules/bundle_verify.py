#!/usr/bin/python
"""Ansible module bundle_verify: compare a copy of the offline bundle with its manifest, file by file."""

from __future__ import annotations

DOCUMENTATION = r"""
module: bundle_verify
short_description: Name the files of a bundle copy that are missing, altered or not in the manifest
description:
  - Hashes every file the manifest lists under O(path) with sha256, on as many threads as the host has
    CPUs (C(appliance bundle verify) does the same check on the controller), and lists the files under
    O(parts) that the manifest does not know.
  - Changes nothing; role bundle_serve decides what to copy and when to refuse the bundle.
options:
  path:
    description: Root of the bundle copy (the directory that holds C(manifest.json)).
    type: path
    required: true
  files:
    description: Relative path -> expected sha256 of every file to check, the manifest itself included.
    type: dict
    required: true
  parts:
    description: Top-level directories of the bundle in which a file not in O(files) counts as extra.
    type: list
    elements: str
    default: []
attributes:
  check_mode:
    support: full
    description: It only reads, so it runs in check mode as in any other run.
  diff_mode:
    support: none
    description: Returns no diff.
author:
  - Appliance toolkit maintainers (@appliance-maintainers)
"""

EXAMPLES = r"""
- name: Compare this node's copy with the manifest
  appliance.runai.bundle_verify:
    path: /var/lib/appliance/bundle
    files:
      manifest.json: 5f2b...
      debs/Packages: 9c1e...
    parts: [debs, images]
"""

RETURN = r"""
missing:
  description: Files of O(files) that do not exist under O(path) (or cannot be read), sorted.
  returned: always
  type: list
  elements: str
altered:
  description: Files whose sha256 differs from O(files), sorted.
  returned: always
  type: list
  elements: str
extra:
  description: Files and links under O(parts) that are not in O(files), sorted.
  returned: always
  type: list
  elements: str
"""

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor

from ansible.module_utils.basic import AnsibleModule

CHUNK = 1 << 20


def sha256_of(path: str) -> str | None:
    """sha256 of a file, or None if unreadable (hashlib releases the GIL: threads hash in parallel)."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            while block := handle.read(CHUNK):
                digest.update(block)
    except OSError:
        return None
    return digest.hexdigest()


def compare(root: str, files: dict[str, str], parts: list[str]) -> dict[str, list[str]]:
    names = sorted(files)
    # Largest first, so that no thread is left hashing one big image at the end.
    by_size = sorted(names, key=lambda name: _size(os.path.join(root, name)), reverse=True)
    with ThreadPoolExecutor(max_workers=max(1, os.cpu_count() or 1)) as pool:
        hashed = pool.map(lambda name: sha256_of(os.path.join(root, name)), by_size)
        digests = dict(zip(by_size, hashed, strict=True))
    missing = [name for name in names if digests[name] is None]
    altered = [name for name in names if digests[name] is not None and digests[name] != files[name].lower()]
    extra = []
    for part in parts:
        for directory, subdirectories, filenames in os.walk(os.path.join(root, part)):
            for name in filenames + [
                entry for entry in subdirectories if os.path.islink(os.path.join(directory, entry))
            ]:
                relative = os.path.relpath(os.path.join(directory, name), root)
                if relative not in files:
                    extra.append(relative)
    return {"missing": missing, "altered": altered, "extra": sorted(extra)}


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "path": {"type": "path", "required": True},
            "files": {"type": "dict", "required": True},
            "parts": {"type": "list", "elements": "str", "default": []},
        },
        supports_check_mode=True,
    )
    files = {str(name): str(digest) for name, digest in module.params["files"].items()}
    module.exit_json(changed=False, **compare(module.params["path"], files, module.params["parts"]))


if __name__ == "__main__":
    main()
