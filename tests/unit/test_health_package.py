"""Package appliance.health as role gpu_health ships it: digest and archive (appliance.health_package)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import tarfile
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


def test_the_archive_holds_the_package_owned_by_root_and_is_made_once_per_digest(tmp_path):
    package = make_package(tmp_path / "src")
    cache = tmp_path / "cache"
    described = health_package.describe(package, cache)
    archive = Path(described["archive"])
    assert archive == cache / f"{described['digest']}.tar"
    with tarfile.open(archive) as tar:
        members = {member.name: member for member in tar.getmembers()}
        assert sorted(members) == [
            "appliance/__init__.py",
            "appliance/health/__init__.py",
            "appliance/health/agent.py",
            "appliance/health/catalog.yml",
        ]
        assert {(m.uname, m.gname, m.uid, m.gid, m.mode) for m in members.values()} == {
            ("root", "root", 0, 0, 0o644)
        }
        assert tar.extractfile("appliance/health/agent.py").read() == b"print('agent')\n"
    made = archive.stat().st_mtime_ns
    assert health_package.describe(package, cache) == described
    assert archive.stat().st_mtime_ns == made  # not packed again
    (package / "agent.py").write_text("print('agent 2')\n")
    changed = health_package.describe(package, cache)
    assert changed["digest"] != described["digest"] and Path(changed["archive"]).is_file()
    assert not list(cache.glob("*.partial"))


def test_the_command_prints_the_real_package(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "appliance.health_package"],
        env={"APPLIANCE_CACHE_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=True,
    )
    described = json.loads(result.stdout)
    with tarfile.open(described["archive"]) as tar:
        assert "appliance/health/agent.py" in tar.getnames()
        assert "appliance/health/catalog.yml" in tar.getnames()
    assert Path(described["archive"]).parent == tmp_path / "gpu-health"
