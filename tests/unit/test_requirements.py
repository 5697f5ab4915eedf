"""requirements.yml: every collection the roles and playbooks call is pinned there, at the version the
pinned `ansible` package installs (what the lab tests and what the bundle's controller/ carries)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from appliance.bundle import controller
from tests.conftest import PROJECT

FQCN = re.compile(r"\b([a-z][a-z0-9_]*)\.([a-z][a-z0-9_]*)\.[a-z][a-z0-9_]*\b")
BUILTIN = {("ansible", "builtin"), ("ansible", "legacy")}


def _pins() -> dict[str, str]:
    document = yaml.safe_load((PROJECT / "requirements.yml").read_text())
    return {entry["name"]: str(entry["version"]) for entry in document["collections"]}


def _used_collections() -> dict[str, str]:
    """Each collection named by a fully qualified module, filter or lookup, with one file using it."""
    installed = {path.parent.parent.name + "." + path.parent.name for path in _manifests()}
    used: dict[str, str] = {}
    files = [
        PROJECT / "site.yml",
        *(PROJECT / "playbooks").rglob("*.yml"),
        *(PROJECT / "roles").rglob("*.yml"),
    ]
    for file in files:
        for namespace, name in FQCN.findall(file.read_text()):
            collection = f"{namespace}.{name}"
            if (namespace, name) not in BUILTIN and collection in installed:
                used.setdefault(collection, str(file.relative_to(PROJECT)))
    return used


def _manifests() -> list[Path]:
    root = controller.installed_collection("ansible.posix").parents[1]
    return list(root.glob("*/*/MANIFEST.json"))


def test_every_collection_the_roles_use_is_pinned():
    missing = {name: where for name, where in _used_collections().items() if name not in _pins()}
    assert not missing, f"used but not in requirements.yml: {missing}"
    assert "community.crypto" in _used_collections()


def test_every_pin_is_the_installed_version():
    for name, version in _pins().items():
        manifest = controller.installed_collection(name) / "MANIFEST.json"
        assert json.loads(manifest.read_text())["collection_info"]["version"] == version, name
