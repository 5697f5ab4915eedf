"""site.yml on fresh lab nodes, from the lab's offline bundle: the host roles' outcomes an operator checks
(issue 4's acceptance), idempotence, --check, and bad input stopped before any change.

Runs a lab of its own (APPLIANCE_LAB_NAME=labsite on 172.28.4.0/24, one worker).
"""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.conftest import run_cli

pytestmark = pytest.mark.lab

LAB_ENV = {"APPLIANCE_LAB_NAME": "labsite", "APPLIANCE_LAB_SUBNET": "172.28.4.0/24"}
NODES = ("cp-1", "worker-1")
KUBE = ("kubeadm", "kubectl", "kubelet")


def lab_cli(*args: str, timeout: float = 1800) -> subprocess.CompletedProcess[str]:
    return run_cli(*args, env=LAB_ENV, timeout=timeout)


def on(node: str, script: str) -> str:
    result = lab_cli("lab", "exec", node, "--", "sh", "-c", script)
    assert result.returncode == 0, result.stderr
    return result.stdout


def site(*extra: str) -> tuple[subprocess.CompletedProcess[str], dict]:
    result = lab_cli("run", "site.yml", "--json", *extra)
    try:
        return result, json.loads(result.stdout)
    except json.JSONDecodeError:
        return result, {}


def changed(summary: dict) -> dict[str, int]:
    return {host: tally["changed"] for host, tally in summary["hosts"].items()}


@pytest.fixture(scope="module")
def converged():
    built = run_cli("lab", "bundle", timeout=4 * 3600)
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr
    up = lab_cli("lab", "up", "--workers", "1")
    assert up.returncode == 0, up.stderr
    result, summary = site()
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr
    yield summary
    lab_cli("lab", "down")


def test_a_wrong_variable_stops_the_run_before_any_change(converged):
    result, summary = site("-e", "kube_packages_version=1.23")
    assert result.returncode == 1
    assert "kube_packages_version=1.23 is not a Kubernetes version of the form MAJOR.MINOR.PATCH" in (
        " ".join(summary["failures"][0]["message"].split())
    )
    assert set(changed(summary).values()) == {0}
    assert {f["task"] for f in summary["failures"]} == {"Check the requested version"}


def test_docker_uses_the_systemd_cgroup_driver_on_every_node(converged):
    for node in NODES:
        assert on(node, "docker info --format '{{.CgroupDriver}}'").strip() == "systemd"


def test_kubernetes_packages_are_1_23_5_held_and_not_moved_by_an_upgrade(converged):
    for node in NODES:
        versions = on(node, "dpkg-query --show --showformat='${Package} ${Version}\\n' " + " ".join(KUBE))
        assert sorted(versions.split("\n")[:-1]) == [f"{name} 1.23.5-00" for name in KUBE]
        assert sorted(on(node, "apt-mark showhold").split()) == list(KUBE)
        upgrade = on(node, "apt-get -s upgrade")
        moved = [line.split()[1] for line in upgrade.splitlines() if line.startswith("Inst ")]
        assert not set(moved) & set(KUBE), moved


def test_a_node_with_other_versions_is_refused_unless_allowed(converged):
    result, summary = site("-e", "kube_packages_version=1.23.4", "-l", "worker-1")
    assert result.returncode == 1
    message = " ".join(summary["failures"][0]["message"].split())
    assert "kubelet 1.23.5-00" in message and "this role installs 1.23.4-00" in message
    assert "kube_packages_allow_version_change=true" in message
    assert changed(summary) == {"worker-1": 0}


def test_a_second_run_changes_nothing_and_keeps_a_runtime_added_by_hand(converged):
    on(
        "worker-1",
        "python3 -c \"import json; p='/etc/docker/daemon.json'; d=json.load(open(p)); "
        "d['runtimes']={'nvidia': {'path': '/usr/bin/nvidia-container-runtime', 'runtimeArgs': []}}; "
        "json.dump(d, open(p, 'w'), indent=4)\" && systemctl restart docker",
    )
    result, summary = site()
    assert result.returncode == 0, result.stdout[-3000:]
    assert set(changed(summary).values()) == {0}
    config = json.loads(on("worker-1", "cat /etc/docker/daemon.json"))
    assert config["runtimes"]["nvidia"]["path"] == "/usr/bin/nvidia-container-runtime"
    assert config["exec-opts"] == ["native.cgroupdriver=systemd"]


def test_check_mode_on_the_converged_lab_reports_no_change(converged):
    result, summary = site("--check")
    assert result.returncode == 0, result.stdout[-3000:]
    assert set(changed(summary).values()) == {0}
