"""plugins/modules/node_read.py, run by ansible on this machine: files, paths and commands in one execution.
Roles prereqs and docker run it on real lab nodes (molecule/prereqs, molecule/docker, tests/lab)."""

from __future__ import annotations

from tests.unit.ansible_module import run_module


def node_read(args: dict, *extra: str) -> dict:
    return run_module("node_read", args, *extra)


def test_files_paths_and_commands_are_read_and_nothing_changes(tmp_path):
    present = tmp_path / "present.conf"
    present.write_text("a = 1\n")
    result = node_read(
        {
            "files": [str(present), str(tmp_path / "missing.conf")],
            "paths": [str(tmp_path), str(tmp_path / "nothing")],
            "commands": {"echo": ["echo", "one two"], "fails": ["false"], "absent": ["no-such-program-x"]},
        }
    )
    assert result["changed"] is False
    assert result["files"][str(present)] == {"content": "a = 1\n", "error": ""}
    missing = result["files"][str(tmp_path / "missing.conf")]
    assert missing["content"] == "" and "No such file" in missing["error"]
    assert result["paths"] == {str(tmp_path): True, str(tmp_path / "nothing"): False}
    assert result["commands"]["echo"]["stdout_lines"] == ["one two"]
    assert result["commands"]["echo"]["rc"] == 0
    assert result["commands"]["fails"]["rc"] == 1
    assert result["commands"]["absent"]["rc"] == 127


def test_commands_run_in_check_mode_too():
    result = node_read({"commands": {"echo": ["echo", "read"]}}, "--check")
    assert result["commands"]["echo"]["stdout"] == "read\n"


def test_a_command_that_is_not_a_list_of_strings_is_refused():
    result = node_read({"commands": {"bad": "echo one"}})
    assert result.get("failed") is True
    assert "commands.bad must be a non-empty list of strings" in result["msg"]
