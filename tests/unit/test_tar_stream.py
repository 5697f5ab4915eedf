"""plugins/action/tar_stream.py, run by ansible on this machine over the local connection (its put_file way;
the lab tests of bundle_serve copy the bundle through its ssh stream)."""

from __future__ import annotations

import os
from pathlib import Path

from tests.unit.ansible_module import run_module


def source(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    (src / "debs").mkdir(parents=True)
    (src / "manifest.json").write_text("{}\n")
    (src / "debs" / "a.deb").write_bytes(os.urandom(4096))
    (src / "left-out").write_text("not asked for\n")
    return src


def test_the_files_asked_for_arrive_in_a_new_directory(tmp_path):
    src = source(tmp_path)
    dest = tmp_path / "dest" / "bundle"
    result = run_module(
        "tar_stream", {"src": str(src), "files": ["manifest.json", "debs/a.deb"], "dest": str(dest)}
    )
    assert result.get("failed") is not True, result
    assert result["changed"] is True and result["method"] == "put_file" and result["files"] == 2
    assert (dest / "manifest.json").read_text() == "{}\n"
    assert (dest / "debs" / "a.deb").read_bytes() == (src / "debs" / "a.deb").read_bytes()
    assert not (dest / "left-out").exists()
    assert (dest / "debs" / "a.deb").stat().st_uid == 0


def test_a_file_is_replaced(tmp_path):
    src = source(tmp_path)
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "manifest.json").write_text("damaged")
    result = run_module("tar_stream", {"src": str(src), "files": ["manifest.json"], "dest": str(dest)})
    assert result["changed"] is True, result
    assert (dest / "manifest.json").read_text() == "{}\n"


def test_nothing_to_copy_is_no_change(tmp_path):
    result = run_module(
        "tar_stream", {"src": str(source(tmp_path)), "files": [], "dest": str(tmp_path / "dest")}
    )
    assert result["changed"] is False and result["files"] == 0, result
    assert not (tmp_path / "dest").exists()


def test_paths_outside_the_source_are_refused_before_any_copy(tmp_path):
    src = source(tmp_path)
    dest = tmp_path / "dest"
    result = run_module(
        "tar_stream", {"src": str(src), "files": ["manifest.json", "../etc/passwd"], "dest": str(dest)}
    )
    assert result["failed"] is True
    assert "files must be paths inside src: ../etc/passwd" in result["msg"]
    assert not dest.exists()


def test_a_missing_file_fails_with_tars_message(tmp_path):
    result = run_module(
        "tar_stream", {"src": str(source(tmp_path)), "files": ["not-there"], "dest": str(tmp_path / "dest")}
    )
    assert result["failed"] is True
    assert "tar on the controller failed" in result["msg"] and "not-there" in result["msg"], result
