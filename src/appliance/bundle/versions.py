"""versions.yml: the version and checksum of every artifact, read here and by the roles."""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import yaml

from appliance import paths
from appliance.errors import ApplianceError

SECTIONS = ("binaries", "images", "charts", "manifests")
OPTIONAL = ("operand_images",)  # images only `--source upstream` carries


def versions_file(project: Path | None = None) -> Path:
    return (project or paths.project_root()) / "versions.yml"


@cache
def load(path: Path | None = None) -> dict[str, Any]:
    """The parsed versions file, checked for the shape the builder relies on."""
    path = path or versions_file()
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as error:
        raise ApplianceError(f"cannot read {path}: {error}") from error
    problems = check(data)
    if problems:
        raise ApplianceError(f"{path}: {'; '.join(problems)}")
    return data


def check(data: Any) -> list[str]:
    """Every problem of the versions data: missing sections, unsorted tables, malformed checksums."""
    if not isinstance(data, dict):
        return ["expected a mapping at the top"]
    problems = []
    for section in ("architectures", "kubernetes", *SECTIONS, "os_packages"):
        if section not in data:
            problems.append(f"missing section {section!r}")
    for section in (*SECTIONS, *OPTIONAL):
        table = data.get(section) or {}
        if list(table) != sorted(table):
            problems.append(f"{section}: keep the components sorted by name ({', '.join(sorted(table))})")
        for name, entry in table.items():
            pinned = entry.get("sha256") or {}
            if isinstance(pinned, str):  # an architecture-independent file (a manifest)
                pinned = dict.fromkeys(data.get("architectures", []), pinned)
            for arch, digest in pinned.items():
                if arch not in data.get("architectures", []):
                    problems.append(f"{section}.{name}.sha256: unknown architecture {arch!r}")
                if not (
                    isinstance(digest, str)
                    and len(digest) == 64
                    and all(c in "0123456789abcdef" for c in digest)
                ):
                    problems.append(f"{section}.{name}.sha256.{arch}: {digest!r} is not a sha256 hex digest")
    extra = data.get("bundle_extra_images")
    if extra is not None and not (isinstance(extra, list) and all(isinstance(i, str) for i in extra)):
        problems.append("bundle_extra_images: expected a list of image names (strings)")
    return problems


def image_names(data: dict[str, Any]) -> list[str]:
    return [entry["image"] for entry in data["images"].values()]


def operand_image_names(data: dict[str, Any]) -> list[str]:
    """The GPU operator's operands: carried by `--source upstream` only (versions.yml says why)."""
    return [entry["image"] for _, entry in sorted((data.get("operand_images") or {}).items())]
