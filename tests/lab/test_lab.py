"""The lab tier: real systemd nodes in docker, reached by real Ansible over SSH.

Runs a lab of its own (APPLIANCE_LAB_NAME=labtest on 172.28.1.0/24) beside any lab a developer has up,
so the tests never touch it. Needs a docker engine (`make setup`).
"""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.conftest import BIN, PROJECT, run_cli

pytestmark = pytest.mark.lab

LAB_ENV = {"APPLIANCE_LAB_NAME": "labtest", "APPLIANCE_LAB_SUBNET": "172.28.1.0/24"}
INVENTORY = PROJECT / "inventories" / "labtest" / "hosts.yml"
NODES = ("cp-1", "worker-1", "worker-2")


def lab_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return run_cli(*args, env=LAB_ENV)


def docker(*args: str) -> str:
    return subprocess.run(["docker", *args], capture_output=True, text=True, check=True).stdout


def container_ids() -> dict[str, str]:
    return {
        node: docker("inspect", "--format", "{{.Id}}", f"appliance-labtest-{node}").strip() for node in NODES
    }


@pytest.fixture(scope="module")
def lab_up():
    result = lab_cli("lab", "up")
    assert result.returncode == 0, result.stderr
    yield result
    lab_cli("lab", "down")


def test_ansible_reaches_every_node_over_ssh(lab_up):
    inventory = INVENTORY.read_text()
    assert "ansible_connection" not in inventory  # plain SSH, as on a real appliance
    result = subprocess.run(
        [str(BIN / "ansible"), "all", "-i", str(INVENTORY), "-m", "ansible.builtin.ping", "-o"],
        cwd=PROJECT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    for node in NODES:
        assert f"{node} | SUCCESS" in result.stdout


def test_systemd_is_up_on_every_node(lab_up):
    for node in NODES:
        result = lab_cli("lab", "exec", node, "--", "systemctl", "is-system-running")
        assert result.stdout.strip() in ("running", "degraded"), (node, result.stdout, result.stderr)


def test_each_node_has_its_own_identity(lab_up):
    machine_ids = {lab_cli("lab", "exec", n, "--", "cat", "/etc/machine-id").stdout.strip() for n in NODES}
    host_keys = {
        lab_cli("lab", "exec", n, "--", "cat", "/etc/ssh/ssh_host_ed25519_key.pub").stdout.split()[1]
        for n in NODES
    }
    assert len(machine_ids) == len(host_keys) == 3


def test_node_has_writable_proc_sys_and_volumes_for_runtimes(lab_up):
    result = lab_cli(
        "lab",
        "exec",
        "worker-1",
        "--",
        "sh",
        "-c",
        "echo 1 > /proc/sys/net/ipv4/ip_forward && for d in /var/lib/docker "
        "/var/lib/containerd /var/lib/kubelet; do mountpoint -q $d && echo $d; done",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["/var/lib/docker", "/var/lib/containerd", "/var/lib/kubelet"]


def test_playbook_run_over_ssh_with_become(lab_up):
    result = lab_cli("run", "ping", "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    summary = json.loads(result.stdout)
    assert summary["inventory"] == str(INVENTORY)
    # playbooks/ping.yml: connect and run Python; become root and check systemd's state
    assert {host: tally["ok"] for host, tally in summary["hosts"].items()} == dict.fromkeys(NODES, 2)


def test_failure_on_one_node_exits_1_naming_node_and_task(lab_up):
    result = lab_cli("run", str(PROJECT / "tests" / "playbooks" / "fail_on_one_host.yml"))
    assert result.returncode == 1
    assert "FAILED worker-2" in result.stdout
    assert "task: Fail on purpose on the chosen host" in result.stdout


def test_lab_up_again_reuses_running_nodes_and_restarts_stopped_ones(lab_up):
    before = container_ids()
    docker("stop", "appliance-labtest-worker-2")
    result = lab_cli("lab", "up")
    assert result.returncode == 0, result.stderr
    assert "starting stopped worker-2" in result.stdout
    assert "creating" not in result.stdout
    assert container_ids() == before
    status = json.loads(lab_cli("lab", "status", "--json").stdout)
    assert [(row["node"], row["container"]) for row in status] == [(n, "running") for n in NODES]
    ping = lab_cli("run", "ping", "-l", "worker-2", "--json")
    assert ping.returncode == 0, ping.stdout + ping.stderr


def test_exec_on_unknown_node_is_usage_error(lab_up):
    result = lab_cli("lab", "exec", "worker-9", "--", "true")
    assert result.returncode == 2
    assert "unknown lab node 'worker-9'; lab nodes: cp-1, worker-1, worker-2" in result.stderr


def test_down_removes_the_lab_and_nothing_else(lab_up):
    docker("volume", "create", "appliance-labtest-sentinel")  # not the lab's: no lab label
    try:
        result = lab_cli("lab", "down")
        assert result.returncode == 0, result.stderr
        assert docker("ps", "--all", "--quiet", "--filter", "label=appliance.lab=labtest") == ""
        assert docker("volume", "ls", "--quiet", "--filter", "label=appliance.lab=labtest") == ""
        assert "appliance-labtest" not in docker("network", "ls", "--format", "{{.Name}}").split()
        assert "appliance-labtest-sentinel" in docker("volume", "ls", "--quiet").split()
        assert not INVENTORY.exists()
        assert lab_cli("lab", "down").returncode == 0  # idempotent
    finally:
        docker("volume", "rm", "appliance-labtest-sentinel")
