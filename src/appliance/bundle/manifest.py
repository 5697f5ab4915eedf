"""manifest.json: every file of a bundle with its component, version, size and sha256; and its check.

A bundle is trusted through its manifest: `bundle build` prints the manifest's own sha256 for the
operator to carry to the air-gapped site out of band, and `bundle verify --manifest-sha256` pins it.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance.errors import ApplianceError

MANIFEST = "manifest.json"
FORMAT = 1


def sha256_of(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def bundle_files(root: Path) -> list[str]:
    """Every regular file under ROOT except the manifest, as sorted POSIX paths relative to ROOT."""
    found = []
    for directory, _, names in os.walk(root):
        for name in names:
            relative = (Path(directory) / name).relative_to(root).as_posix()
            if relative != MANIFEST:
                found.append(relative)
    return sorted(found)


def write(root: Path, components: dict[str, tuple[str, str]], meta: dict[str, Any]) -> str:
    """Write ROOT/manifest.json; COMPONENTS maps a file (or a directory prefix ending in /) to
    (component, version). Return the manifest's sha256."""
    files = {}
    for relative in bundle_files(root):
        component, version = _owner(relative, components)
        path = root / relative
        files[relative] = {
            "component": component,
            "version": version,
            "size": path.stat().st_size,
            "sha256": sha256_of(path),
        }
    document = {"format": FORMAT, **meta, "files": files}
    text = json.dumps(document, indent=2, sort_keys=True) + "\n"
    (root / MANIFEST).write_text(text)
    return hashlib.sha256(text.encode()).hexdigest()


def _owner(relative: str, components: dict[str, tuple[str, str]]) -> tuple[str, str]:
    if relative in components:
        return components[relative]
    prefixes = [p for p in components if p.endswith("/") and relative.startswith(p)]
    if not prefixes:
        raise ApplianceError(f"bundle file {relative} belongs to no component (a build step left it behind)")
    return components[max(prefixes, key=len)]


@dataclass(frozen=True)
class Verdict:
    manifest_sha256: str
    checked: int
    missing: list[str]
    extra: list[str]
    altered: list[str]

    @property
    def ok(self) -> bool:
        return not (self.missing or self.extra or self.altered)

    def problems(self) -> str:
        parts = []
        for label, names in (
            ("missing", self.missing),
            ("altered", self.altered),
            ("not in the manifest", self.extra),
        ):
            if names:
                parts.append(f"{label}: {', '.join(names)}")
        return "; ".join(parts)


def load(root: Path) -> dict[str, Any]:
    path = root / MANIFEST
    if not root.is_dir():
        raise ApplianceError(f"{root} is not a bundle directory")
    try:
        document = json.loads(path.read_text())
    except FileNotFoundError as error:
        raise ApplianceError(f"{root} has no {MANIFEST}: not a bundle, or an incomplete one") from error
    except json.JSONDecodeError as error:
        raise ApplianceError(f"{path} is not valid JSON ({error}); the bundle is damaged") from error
    if document.get("format") != FORMAT or not isinstance(document.get("files"), dict):
        raise ApplianceError(f"{path} is not a bundle manifest of format {FORMAT}")
    return document


def verify(root: Path, expected_manifest_sha256: str | None = None) -> Verdict:
    """Check every file of the bundle at ROOT against its manifest: present, same size, same sha256,
    and no file the manifest does not list."""
    manifest_sha256 = sha256_of(root / MANIFEST) if (root / MANIFEST).is_file() else ""
    if expected_manifest_sha256 and manifest_sha256 != expected_manifest_sha256.lower():
        raise ApplianceError(
            f"{root / MANIFEST} has sha256 {manifest_sha256 or '(no manifest)'}, "
            f"not the expected {expected_manifest_sha256}: this is not the bundle that was built"
        )
    document = load(root)
    listed: dict[str, dict[str, Any]] = document["files"]
    present = set(bundle_files(root))
    missing = sorted(set(listed) - present)
    extra = sorted(present - set(listed))
    altered = []
    for relative in sorted(set(listed) & present):
        entry = listed[relative]
        path = root / relative
        if path.stat().st_size != entry["size"] or sha256_of(path) != entry["sha256"]:
            altered.append(relative)
    return Verdict(manifest_sha256, len(listed), missing, extra, altered)
