"""Package appliance.health as role gpu_health ships it: digest and members (appliance.health_package)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

from appliance import health_package


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


def test_the_members_are_the_package_with_the_top_init_relative_to_the_root(tmp_path):
    package = make_package(tmp_path / "src")
    described = health_package.describe(package)
    assert described["root"] == str(tmp_path / "src")
    assert described["members"] == [
        "appliance/__init__.py",
        "appliance/health/__init__.py",
        "appliance/health/agent.py",
        "appliance/health/catalog.yml",
    ]
    assert all((Path(described["root"]) / member).is_file() for member in described["members"])
    assert described["digest"] == health_package.package_digest(health_package.package_files(package))


def test_the_command_prints_the_real_package():
    result = subprocess.run(
        [sys.executable, "-m", "appliance.health_package"],
        env={"PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=True,
    )
    described = json.loads(result.stdout)
    assert "appliance/health/agent.py" in described["members"]
    assert "appliance/health/catalog.yml" in described["members"]
    assert all((Path(described["root"]) / member).is_file() for member in described["members"])
