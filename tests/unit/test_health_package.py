"""Package appliance.health as role gpu_health ships it: digest and members (lookup plugin
appliance.runai.health_package)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

from ansible_collections.appliance.runai.plugins.lookup import health_package

from tests.conftest import PROJECT


def make_package(root: Path) -> Path:
    package = root / "appliance" / "health"
    package.mkdir(parents=True)
    (root / "appliance" / "__init__.py").write_text('"""top"""\n')
    (package / "__init__.py").write_text("")
    (package / "agent.py").write_text("print('agent')\n")
    (package / "catalog.yml").write_text("xid: {}\n")
    (package / "notes.txt").write_text("not shipped\n")
    return package


def test_the_files_are_the_modules_and_the_catalog_in_path_order(tmp_path):
    package = make_package(tmp_path)
    names = [path.name for path in health_package.package_files(package)]
    assert names == ["__init__.py", "agent.py", "catalog.yml"]


def test_the_digest_covers_each_file_by_name_and_content(tmp_path):
    package = make_package(tmp_path)
    files = health_package.package_files(package)
    expected = " ".join(f"{p.name}:{hashlib.sha256(p.read_bytes()).hexdigest()}" for p in files)
    before = health_package.package_digest(files)
    assert before == hashlib.sha256(expected.encode()).hexdigest()
    (package / "agent.py").write_text("print('agent 2')\n")
    assert health_package.package_digest(files) != before


def make_module_utils(root: Path) -> Path:
    root.mkdir(parents=True)
    for name in health_package.SHARED:
        (root / name).write_text(f"# {name}\n")
    return root


def test_the_members_are_the_package_and_the_shared_modules_staged_under_their_digest(tmp_path):
    package = make_package(tmp_path / "src")
    utils = make_module_utils(tmp_path / "plugins" / "module_utils")
    described = health_package.describe(package, utils, tmp_path / "stage")
    files = health_package.package_files(package)
    digest = health_package.package_digest([*files, *(utils / name for name in health_package.SHARED)])
    assert described["digest"] == digest
    assert described["root"] == str(tmp_path / "stage" / digest)
    assert described["members"] == [
        "appliance/__init__.py",
        "appliance/health/__init__.py",
        "appliance/health/agent.py",
        "appliance/health/catalog.yml",
        "appliance_nodes.py",
        "appliance_maintenance.py",
    ]
    root = Path(described["root"])
    assert (root / "appliance_maintenance.py").read_text() == "# appliance_maintenance.py\n"
    assert (root / "appliance/health/agent.py").read_text() == "print('agent')\n"
    # A change of a shared module is a new package.
    (utils / "appliance_nodes.py").write_text("# changed\n")
    assert health_package.describe(package, utils, tmp_path / "stage")["digest"] != digest


def test_the_lookup_gives_the_collections_own_package_through_ansible(tmp_path):
    """In a play, as role gpu_health calls it: the package and the shared modules of the collection."""
    inventory = tmp_path / "hosts.yml"
    inventory.write_text("all:\n  hosts:\n    node:\n      ansible_connection: local\n")
    ansible = Path(sys.executable).parent / "ansible"
    result = subprocess.run(
        [str(ansible), "node", "-i", str(inventory), "-m", "ansible.builtin.debug", "-a",
         "msg={{ lookup('appliance.runai.health_package') | to_json }}"],
        cwd=PROJECT, capture_output=True, text=True, check=False,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "ANSIBLE_CONFIG": str(PROJECT / "ansible.cfg"),
             "ANSIBLE_STDOUT_CALLBACK": "json", "ANSIBLE_LOAD_CALLBACK_PLUGINS": "1"},
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    described = json.loads(json.loads(result.stdout)["plays"][0]["tasks"][0]["hosts"]["node"]["msg"])
    assert "appliance/health/agent.py" in described["members"]
    assert "appliance/health/catalog.yml" in described["members"]
    assert "appliance_maintenance.py" in described["members"]
    root = Path(described["root"])
    assert root.is_relative_to(tmp_path / ".cache/appliance/health-package")
    assert all((root / member).is_file() for member in described["members"])
    assert (root / "appliance/health/agent.py").read_bytes() == (
        PROJECT / "src/appliance/health/agent.py"
    ).read_bytes()
