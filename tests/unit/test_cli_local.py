"""The `appliance run` contract, on real ansible-playbook runs against local hosts (no lab needed)."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import BIN, PROJECT

FAIL_PLAYBOOK = str(PROJECT / "tests" / "playbooks" / "fail_on_one_host.yml")


@pytest.fixture
def local_inventory(tmp_path: Path) -> Path:
    """Three hosts that all run locally, so a real playbook runs with no SSH or containers."""
    inventory = tmp_path / "hosts.yml"
    inventory.write_text(
        "all:\n"
        f"  vars: {{ansible_connection: local, ansible_python_interpreter: {sys.executable}}}\n"
        "  hosts: {cp-1: {}, worker-1: {}, worker-2: {}}\n"
    )
    return inventory


def test_failure_on_one_host_exits_1_and_names_host_and_task(cli, local_inventory):
    result = cli("run", FAIL_PLAYBOOK, "-i", str(local_inventory))
    assert result.returncode == 1, result.stdout + result.stderr
    assert "FAILED worker-2" in result.stdout
    assert "task: Fail on purpose on the chosen host" in result.stdout
    assert "deliberate failure on worker-2" in result.stdout
    assert "playbook failed" in result.stdout


def test_json_summary_counts_per_host(cli, local_inventory):
    result = cli("run", FAIL_PLAYBOOK, "-i", str(local_inventory), "--json", "-e", "fail_on=worker-1")
    assert result.returncode == 1
    summary = json.loads(result.stdout)
    assert summary["succeeded"] is False
    assert summary["hosts"]["worker-1"]["failed"] == 1
    assert summary["hosts"]["worker-1"]["changed"] == 0
    # The other hosts went on to the last task, which reports a change.
    assert summary["hosts"]["cp-1"] == {
        "ok": 2,
        "changed": 1,
        "failed": 0,
        "unreachable": 0,
        "skipped": 1,
        "rescued": 0,
        "ignored": 0,
    }
    assert [(f["host"], f["task"]) for f in summary["failures"]] == [
        ("worker-1", "Fail on purpose on the chosen host")
    ]


def test_success_exits_0_and_limit_applies(cli, local_inventory):
    result = cli("run", FAIL_PLAYBOOK, "-i", str(local_inventory), "-l", "cp-1,worker-1", "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert sorted(summary["hosts"]) == ["cp-1", "worker-1"]
    assert summary["failures"] == []


def test_check_mode_reaches_ansible(cli, local_inventory):
    # In --check, command tasks are skipped: the "change" task reports nothing changed.
    result = cli("run", FAIL_PLAYBOOK, "-i", str(local_inventory), "-l", "cp-1", "--check", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["hosts"]["cp-1"]["changed"] == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "missing.yml"], "unknown playbook 'missing.yml'"),
        (
            ["run", FAIL_PLAYBOOK, "-i", "/nonexistent/hosts.yml"],
            "inventory '/nonexistent/hosts.yml' does not exist",
        ),
        (["run", FAIL_PLAYBOOK, "-i", "{inventory}", "-e", "=oops"], "expected KEY=VALUE"),
        (["run", FAIL_PLAYBOOK, "-i", "{inventory}", "-e", "@/nonexistent.yml"], "no such file"),
        # A node's name is data: text that would set another variable is refused before anything runs.
        (
            ["node", "drain", "worker-1 maintenance_force=true", "-i", "{inventory}"],
            "'worker-1 maintenance_force=true' is not a node name",
        ),
        (["health", "readmit", "Worker_1", "-i", "{inventory}"], "'Worker_1' is not a node name"),
        (["node", "rejoin", "worker-*", "-i", "{inventory}"], "'worker-*' is not a node name"),
    ],
)
def test_bad_usage_exits_2_with_one_line(cli, local_inventory, args, message):
    args = [str(local_inventory) if a == "{inventory}" else a for a in args]
    result = cli(*args)
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert message in lines[0]
    assert "Traceback" not in result.stderr


def test_debug_shows_the_traceback(cli):
    result = cli("--debug", "run", "missing.yml")
    assert result.returncode == 2
    assert "Traceback" in result.stderr


def test_syntax_error_is_one_line_exit_1(cli, local_inventory, tmp_path):
    broken = tmp_path / "broken.yml"
    broken.write_text("- hosts: all\n  tasks:\n    - ansible.builtin.nonexistent_module: {}\n")
    result = cli("run", str(broken), "-i", str(local_inventory))
    assert result.returncode == 1
    assert "before running any task" in result.stderr


def test_version_names_the_toolkit_ansible_and_python(cli):
    result = cli("--version")
    assert result.returncode == 0 and result.stderr == ""
    assert re.fullmatch(
        r"appliance \d+\.\d+\.\d+ \(ansible-core \d+\.\d+\.\d+, ansible-runner \S+, Python 3\.\d+\.\d+\)\n",
        result.stdout,
    ), result.stdout


def test_help_gives_examples_and_every_exit_code(cli):
    result = cli("--help")
    assert result.returncode == 0 and "appliance node drain worker-1" in result.stdout
    codes = re.findall(r"^ +(\d+) {2,}", result.stdout.split("Exit codes")[1], re.MULTILINE)
    assert codes == ["0", "1", "2", "130"]


def test_unknown_option_is_usage_error(cli):
    result = cli("run", "--no-such-option")
    assert result.returncode == 2


def test_ctrl_c_stops_the_run_and_exits_130(local_inventory):
    process = subprocess.Popen(
        [
            str(BIN / "appliance"),
            "run",
            str(PROJECT / "tests" / "playbooks" / "sleep.yml"),
            "-i",
            str(local_inventory),
            "-l",
            "cp-1",
        ],
        cwd=PROJECT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(3)
    process.send_signal(signal.SIGINT)
    started = time.monotonic()
    stdout, stderr = process.communicate(timeout=15)
    assert process.returncode == 130, stdout + stderr
    assert time.monotonic() - started < 10  # it did not wait for the 20 s task
    assert "playbook interrupted" in stdout
    assert "appliance: interrupted" in stderr
