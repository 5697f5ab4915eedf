"""appliance.bundle.controller: the bundle's controller/ parts, built and installed with the real
ansible-galaxy and tar (the wheels and install.sh as a whole run in tests/lab/test_site.py, on a node
with no network)."""

from __future__ import annotations

import json
import subprocess
import tarfile
from pathlib import Path

import pytest
import yaml

from appliance.bundle import controller
from appliance.errors import ApplianceError
from tests.conftest import PROJECT

EPOCH = 1647907200


def _collection(root: Path, version: str = "1.2.3") -> Path:
    source = root / "ansible_collections" / "acme" / "tools"
    (source / "plugins" / "modules" / "__pycache__").mkdir(parents=True)
    (source / "plugins" / "modules" / "ping.py").write_text(
        '#!/usr/bin/python\nDOCUMENTATION = r"""\nmodule: ping\nshort_description: ping\ndescription: ping\n'
        'author: acme\n"""\nfrom ansible.module_utils.basic import AnsibleModule\n'
        "AnsibleModule(argument_spec={}).exit_json(pong=True)\n"
    )
    (source / "plugins" / "modules" / "__pycache__" / "ping.cpython-311.pyc").write_bytes(b"\0")
    (source / "README.md").write_text("acme.tools\n")
    manifest = {
        "collection_info": {"namespace": "acme", "name": "tools", "version": version, "dependencies": {}},
        # The distribution's own FILES.json lists a file it left out: a copy of it would fail the install.
        "file_manifest_file": {"name": "FILES.json", "ftype": "file", "chksum_type": "sha256",
                               "chksum_sha256": "0" * 64, "format": 1},
        "format": 1,
    }  # fmt: skip
    (source / "MANIFEST.json").write_text(json.dumps(manifest))
    (source / "FILES.json").write_text(json.dumps({"files": [{"name": "tests/gone.py"}], "format": 1}))
    return source


def test_a_collection_artifact_installs_with_ansible_galaxy_offline_and_is_reproducible(tmp_path: Path):
    source = _collection(tmp_path / "installed")
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    artifact = controller.build_artifact(source, first, EPOCH)
    again = controller.build_artifact(source, second, EPOCH)
    assert artifact.name == "acme-tools-1.2.3.tar.gz"
    assert artifact.read_bytes() == again.read_bytes()
    with tarfile.open(artifact) as tar:
        names = tar.getnames()
        assert {member.mtime for member in tar.getmembers()} == {EPOCH}
    assert not [name for name in names if "__pycache__" in name or name.endswith(".pyc")]

    result = subprocess.run(
        [str(PROJECT / ".venv" / "bin" / "ansible-galaxy"), "collection", "install", "--offline", "--no-deps",
         "--collections-path", str(tmp_path / "collections"), str(artifact)],
        capture_output=True, text=True, check=False,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "ANSIBLE_COLLECTIONS_PATH": str(tmp_path / "c")},
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    installed = tmp_path / "collections" / "ansible_collections" / "acme" / "tools"
    assert (installed / "plugins" / "modules" / "ping.py").read_text().startswith("#!/usr/bin/python")
    files = json.loads((installed / "FILES.json").read_text())["files"]
    assert {entry["name"] for entry in files} == {".", "README.md", "plugins", "plugins/modules",
                                                   "plugins/modules/ping.py"}  # fmt: skip


def test_every_pinned_collection_and_its_dependencies_become_artifacts(tmp_path: Path):
    artifacts = controller.collection_artifacts(PROJECT, tmp_path, EPOCH)
    names = [artifact.name for artifact in artifacts]
    pinned = yaml.safe_load((PROJECT / "requirements.yml").read_text())["collections"]
    for entry in pinned:
        assert f"{entry['name'].replace('.', '-')}-{entry['version']}.tar.gz" in names
    # community.docker needs community.library_inventory_filtering_v1: it comes along.
    assert any(name.startswith("community-library_inventory_filtering_v1-") for name in names)


def test_a_pin_that_the_installed_collection_does_not_match_fails_the_build(tmp_path: Path):
    project = tmp_path / "project"
    project.mkdir()
    (project / "requirements.yml").write_text(
        yaml.safe_dump({"collections": [{"name": "ansible.posix", "version": "1.0.0"}]})
    )
    with pytest.raises(ApplianceError, match=r"ansible.posix: requirements.yml pins 1.0.0, .* is 2\.1\.0"):
        controller.collection_artifacts(project, tmp_path, EPOCH)


def test_the_project_archive_holds_what_ansible_playbook_runs_and_nothing_else(tmp_path: Path):
    archive = controller.project_archive(PROJECT, tmp_path / "project.tar.gz", EPOCH)
    again = controller.project_archive(PROJECT, tmp_path / "again.tar.gz", EPOCH)
    assert archive.read_bytes() == again.read_bytes()
    with tarfile.open(archive) as tar:
        names = set(tar.getnames())
        modes = {member.name: member.mode for member in tar.getmembers()}
    for needed in ("site.yml", "ansible.cfg", "versions.yml", "roles/gpu_health/tasks/main.yml",
                   "playbooks/maintenance/drain.yml", "plugins/modules", "inventories"):  # fmt: skip
        assert needed in names or any(name.startswith(needed + "/") for name in names), needed
    for absent in ("tests/", "molecule/", "src/", "benchmarks/", ".git/", ".venv/"):
        assert not [name for name in names if name.startswith(absent)], absent
    assert not [name for name in names if "__pycache__" in name]
    assert modes["site.yml"] == 0o644


def test_install_sh_refuses_a_directory_it_did_not_make_and_says_how_to_call_it(tmp_path: Path):
    target = tmp_path / "controller"
    target.mkdir()
    (target / "wheels").mkdir()
    (target / "wheels" / "pip-25.3-py3-none-any.whl").write_bytes(b"")
    script = target / "install.sh"
    script.write_bytes(controller.INSTALL_SCRIPT.read_bytes())
    script.chmod(0o755)
    busy = tmp_path / "home"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine\n")

    result = subprocess.run([str(script)], capture_output=True, text=True, check=False)
    assert result.returncode == 2
    assert result.stderr.startswith("usage:")
    result = subprocess.run([str(script), str(busy)], capture_output=True, text=True, check=False,
                            env={"PATH": "/usr/bin:/bin"})  # fmt: skip
    assert result.returncode == 1
    assert "is a non-empty directory that is not a virtualenv" in result.stderr
    assert (busy / "notes.txt").read_text() == "mine\n"
