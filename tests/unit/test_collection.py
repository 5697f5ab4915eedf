"""The collection appliance.runai as ansible-galaxy builds it from galaxy.yml: what goes in and what
stays out, and that its version is the toolkit's (`make collection` runs ansible-test sanity on it)."""

from __future__ import annotations

import subprocess
import sys
import tarfile
import tomllib
from pathlib import Path

import yaml

from tests.conftest import PROJECT


def test_the_collection_version_is_the_toolkits():
    galaxy = yaml.safe_load((PROJECT / "galaxy.yml").read_text())
    project = tomllib.loads((PROJECT / "pyproject.toml").read_text())["project"]
    assert (galaxy["namespace"], galaxy["name"]) == ("appliance", "runai")
    assert galaxy["version"] == project["version"]


def test_the_artifact_holds_the_ansible_content_and_the_health_package_only(tmp_path):
    galaxy = Path(sys.executable).parent / "ansible-galaxy"
    subprocess.run(
        [str(galaxy), "collection", "build", str(PROJECT), "--output-path", str(tmp_path)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    (artifact,) = tmp_path.glob("appliance-runai-*.tar.gz")
    with tarfile.open(artifact) as tar:
        names = set(tar.getnames())
        files = {member.name for member in tar.getmembers() if member.isfile()}
    for needed in (
        "playbooks/site.yml",
        "playbooks/maintenance/drain.yml",
        "roles/gpu_health/tasks/install.yml",
        "plugins/modules/node_maintenance.py",
        "plugins/module_utils/appliance_maintenance.py",
        "plugins/lookup/health_package.py",
        "plugins/doc_fragments/kubeconfig.py",
        "meta/runtime.yml",
        "meta/execution-environment.yml",
        "meta/ee-requirements.txt",
        "meta/ee-bindep.txt",
        "versions.yml",
        "tests/sanity/ignore-2.19.txt",
        "src/appliance/__init__.py",
        "src/appliance/health/agent.py",
        "src/appliance/health/catalog.yml",
    ):
        assert needed in names, needed
    src = {name for name in files if name.startswith("src/")}
    assert all(
        name == "src/appliance/__init__.py" or name.startswith("src/appliance/health/") for name in src
    ), src
    for left_out in (
        "tests/unit", "tests/lab", "molecule", "collections", "benchmarks", ".venv", "build",
        "execution-environment.yml",
    ):  # fmt: skip
        assert not any(name == left_out or name.startswith(left_out + "/") for name in names), left_out
    assert not any("__pycache__" in name or name.endswith(".pyc") for name in names)
