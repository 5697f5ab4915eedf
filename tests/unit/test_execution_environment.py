"""The execution environment's definition (execution-environment.yml) and how the bundle stages it
(src/appliance/bundle/ee.py): pins, what pip and ansible-galaxy may reach, and what ansible-builder makes of
it. tests/lab/test_site.py builds the image and runs site.yml in it with ansible-navigator."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import yaml

from appliance.bundle import ee
from tests.conftest import PROJECT


def definition() -> dict:
    return yaml.safe_load((PROJECT / ee.DEFINITION).read_text())


def test_ansible_core_and_runner_are_pinned_as_the_toolkit_pins_them():
    dependencies = tomllib.loads((PROJECT / "pyproject.toml").read_text())["project"]["dependencies"]
    pins = {requirement.split("==")[0]: requirement for requirement in dependencies}
    ee_deps = definition()["dependencies"]
    assert ee_deps["ansible_core"]["package_pip"] == pins["ansible-core"]
    assert ee_deps["ansible_runner"]["package_pip"] == pins["ansible-runner"]


def test_pip_installs_the_collections_own_requirements_and_the_builders_tools():
    requirements = ee.pip_requirements(PROJECT)
    assert "cryptography" in requirements  # meta/ee-requirements.txt: community.crypto on the controller
    assert {"ansible-core==2.19.14", "ansible-runner==2.4.3", "bindep"} <= set(requirements)


def test_every_pip_requirement_is_pinned_by_constraints():
    pinned = {
        line.split("==")[0].lower()
        for line in (PROJECT / "constraints.txt").read_text().splitlines()
        if "==" in line
    }
    names = {requirement.split("==")[0].lower() for requirement in ee.pip_requirements(PROJECT)}
    assert names <= pinned, names - pinned


def staged(tmp_path: Path) -> Path:
    collections = []
    for name in ("appliance-runai-0.1.0.tar.gz", "community-crypto-3.0.5.tar.gz"):
        artifact = tmp_path / name
        artifact.write_bytes(b"artifact")
        collections.append(artifact)
    wheel = tmp_path / "ansible_core-2.19.14-py3-none-any.whl"
    wheel.write_bytes(b"wheel")
    into = tmp_path / "staged"
    into.mkdir()
    ee.stage(PROJECT, collections, [wheel], into)
    return into


def test_the_staged_directory_names_every_collection_artifact_and_carries_the_pins(tmp_path):
    into = staged(tmp_path)
    requirements = yaml.safe_load((into / "collections" / "requirements.yml").read_text())
    assert requirements == {
        "collections": [
            {"name": "collections/appliance-runai-0.1.0.tar.gz", "type": "file"},
            {"name": "collections/community-crypto-3.0.5.tar.gz", "type": "file"},
        ]
    }
    assert (into / "wheels" / "ansible_core-2.19.14-py3-none-any.whl").read_bytes() == b"wheel"
    assert (into / "wheels" / "constraints.txt").read_text() == (PROJECT / "constraints.txt").read_text()


def test_the_recipe_changes_with_any_staged_file(tmp_path, monkeypatch):
    monkeypatch.setattr(ee, "docker_image_id", lambda tag: "sha256:base")
    into = staged(tmp_path)
    first = ee.recipe_digest(into, "appliance-ee-base:x")
    assert ee.recipe_digest(into, "appliance-ee-base:x") == first
    (into / "collections" / "appliance-runai-0.1.0.tar.gz").write_bytes(b"changed")
    assert ee.recipe_digest(into, "appliance-ee-base:x") != first


def test_ansible_builder_makes_an_offline_build_of_it(tmp_path):
    """ansible-builder's own `create` (schema check included) on the staged directory: the Containerfile it
    writes installs with pip from wheels/ only, collections --offline, and never runs the package manager's
    network installs for the base (Debian's python3-pip is there)."""
    into = staged(tmp_path)
    builder = Path(sys.executable).with_name("ansible-builder")
    created = subprocess.run(
        [str(builder), "create", "--file", str(into / ee.DEFINITION), "--context", str(tmp_path / "context"),
         "--output-filename", "Containerfile"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert created.returncode == 0, created.stdout + created.stderr
    containerfile = (tmp_path / "context" / "Containerfile").read_text()
    assert "no-index = true" in containerfile
    assert 'ANSIBLE_GALAXY_CLI_COLLECTION_OPTS="--offline"' in containerfile
    assert "ensurepip" not in containerfile and "pip_install" not in containerfile.split("# Builder")[0]
    assert "rm -rf /wheels /etc/pip.conf" in containerfile
    assert 'ENTRYPOINT ["/opt/builder/bin/entrypoint", "dumb-init"]' in containerfile
    context = tmp_path / "context" / "_build"
    assert (context / "collections" / "requirements.yml").is_file()
    assert (context / "wheels" / "constraints.txt").is_file()
