"""Maintenance of one node at a time on a live 1.23.5 cluster (issue 6): `appliance node drain|restore|
down|remove|rejoin|status` through the installed CLI, with a test workload that has pods on every worker.

Runs a lab of its own (APPLIANCE_LAB_NAME=labmaint on 172.28.8.0/24: cp-1, worker-1 a GPU worker, worker-2
the Run:ai system node), built with site.yml from the lab's offline bundle. The tests run in file order
and each leaves the cluster in service for the next. A node "fails" by stopping its container.
"""

from __future__ import annotations

import json
import subprocess
import time

import pytest

from tests.conftest import lab_kubectl, run_cli

pytestmark = pytest.mark.lab

LAB_ENV = {"APPLIANCE_LAB_NAME": "labmaint", "APPLIANCE_LAB_SUBNET": "172.28.8.0/24"}
WORKERS = ("worker-1", "worker-2")
DRAIN_TAINT = {"key": "runai", "value": "drain", "effect": "NoExecute"}
GRACE = 5  # the test workload's terminationGracePeriodSeconds

# Four pods spread over the workers; pause (from the bundle's registry) runs until it is stopped.
WORKLOAD = """
apiVersion: apps/v1
kind: Deployment
metadata: {{name: sleeper, namespace: default}}
spec:
  replicas: 4
  selector: {{matchLabels: {{app: sleeper}}}}
  template:
    metadata: {{labels: {{app: sleeper}}}}
    spec:
      terminationGracePeriodSeconds: {grace}
      # A preference only: Kubernetes 1.23 counts a tainted node as a place to spread to, so a hard
      # constraint would leave pods Pending while a worker is drained.
      topologySpreadConstraints:
        - {{maxSkew: 1, topologyKey: kubernetes.io/hostname, whenUnsatisfiable: ScheduleAnyway,
           labelSelector: {{matchLabels: {{app: sleeper}}}}}}
      affinity:
        nodeAffinity:
          requiredDuringSchedulingIgnoredDuringExecution:
            nodeSelectorTerms:
              - matchExpressions: [{{key: node-role.kubernetes.io/master, operator: DoesNotExist}}]
      containers:
        - {{name: pause, image: "172.28.8.10:5000/pause:3.6"}}
"""


def lab_cli(*args: str, timeout: float = 1800) -> subprocess.CompletedProcess[str]:
    return run_cli(*args, env=LAB_ENV, timeout=timeout)


def node_cli(*args: str) -> tuple[subprocess.CompletedProcess[str], dict]:
    """`appliance node ARGS --json`: the process and its JSON summary (report lines, failures, counts)."""
    result = lab_cli("node", *args, "--json")
    try:
        return result, json.loads(result.stdout)
    except json.JSONDecodeError:
        return result, {}


def status_rows(summary: dict) -> dict[str, str]:
    """The lines of `node status`'s table, by node name (the first line is the header)."""
    return {line.split()[0]: line for line in summary["report"][1:]}


def kubectl(*args: str, stdin: str | None = None) -> str:
    result = lab_kubectl(LAB_ENV, *args, stdin=stdin)
    assert result.returncode == 0, result.stderr
    return result.stdout


def node_object(name: str) -> dict:
    return json.loads(kubectl("get", "node", name, "-o", "json"))


def tainted(name: str) -> bool:
    return any(
        {k: t.get(k) for k in DRAIN_TAINT} == DRAIN_TAINT
        for t in node_object(name)["spec"].get("taints") or []
    )


def sleepers() -> list[dict]:
    """The workload's pods that are not on their way out."""
    pods = json.loads(kubectl("get", "pods", "-l", "app=sleeper", "-o", "json"))["items"]
    return [p for p in pods if not p["metadata"].get("deletionTimestamp")]


def placement() -> dict[str, str]:
    return {
        p["metadata"]["name"]: f"{p['spec'].get('nodeName')}:{p['status'].get('phase')}" for p in sleepers()
    }


def wait_for(condition, timeout: float, what: str) -> float:
    """Poll CONDITION every second; the seconds it took, or fail naming WHAT."""
    start = time.monotonic()
    while not condition():
        assert time.monotonic() - start < timeout, f"{what}: not within {timeout} s"
        time.sleep(1)
    return time.monotonic() - start


def all_running_off(node: str) -> bool:
    pods = sleepers()
    return len(pods) == 4 and all(
        p["status"].get("phase") == "Running" and p["spec"].get("nodeName") not in (None, node) for p in pods
    )


def spread_over_the_workers() -> None:
    """Start the workload afresh so that both workers run its pods."""
    kubectl("rollout", "restart", "deployment/sleeper")
    kubectl("rollout", "status", "deployment/sleeper", "--timeout", "180s")
    wait_for(
        lambda: len(sleepers()) == 4 and {p["spec"].get("nodeName") for p in sleepers()} == set(WORKERS),
        120,
        "the workload on both workers",
    )


def set_container(node: str, action: str) -> None:
    subprocess.run(["docker", action, f"appliance-labmaint-{node}"], check=True, capture_output=True)


def ready(name: str) -> bool:
    conditions = node_object(name)["status"].get("conditions") or []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


@pytest.fixture(scope="module", autouse=True)
def cluster():
    built = run_cli("lab", "bundle", timeout=4 * 3600)
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr
    up = lab_cli("lab", "up", "--workers", "2")
    assert up.returncode == 0, up.stderr
    try:
        result = lab_cli("bootstrap", "--json")
        assert result.returncode == 0, result.stdout[-4000:] + result.stderr
        kubectl("apply", "-f", "-", stdin=WORKLOAD.format(grace=GRACE))
        spread_over_the_workers()
        yield
    finally:
        lab_cli("lab", "down")


def test_status_shows_every_node_in_service_with_its_roles_and_pods():
    result, summary = node_cli("status")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr
    rows = status_rows(summary)
    assert sorted(rows) == ["cp-1", "worker-1", "worker-2"]
    assert all(" True " in row and "in service" in row for row in rows.values()), rows
    assert "runai-gpu-worker" in rows["worker-1"] and "runai-system" in rows["worker-2"]
    assert "(0 workload)" not in rows["worker-1"] and "(0 workload)" not in rows["worker-2"], rows


def test_an_unknown_node_and_the_last_control_plane_or_system_node_are_refused_before_any_change():
    result, summary = node_cli("drain", "worker-9")
    assert result.returncode == 1
    assert "no node worker-9 in the inventory" in summary["failures"][0]["message"]
    assert "cp-1, worker-1, worker-2" in summary["failures"][0]["message"]

    for node, kind in (("cp-1", "control-plane"), ("worker-2", "Run:ai system")):
        result, summary = node_cli("drain", node)
        assert result.returncode == 1
        message = summary["failures"][0]["message"]
        assert f"last {kind} node in service" in message and "Nothing was changed" in message, message
        assert not tainted(node) and not node_object(node)["spec"].get("unschedulable")
    assert len(sleepers()) == 4


def test_drain_moves_every_workload_pod_off_the_node_and_restore_returns_it_to_service():
    before = placement()
    result, summary = node_cli("drain", "worker-1", "--check")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr
    assert any("worker-1: would be drained" in line for line in summary["report"]), summary["report"]
    assert not tainted("worker-1") and placement() == before

    start = time.monotonic()
    result, summary = node_cli("drain", "worker-1")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr
    assert tainted("worker-1")
    wait_for(
        lambda: all_running_off("worker-1"), GRACE + 15 - (time.monotonic() - start), "pods Running elsewhere"
    )
    elapsed = time.monotonic() - start
    assert elapsed <= GRACE + 15, elapsed
    assert any("left worker-1; its pods now run on worker-2" in line for line in summary["report"]), summary
    on_node = json.loads(
        kubectl("get", "pods", "-A", "--field-selector", "spec.nodeName=worker-1", "-o", "json")
    )
    owners = {
        (o["kind"])
        for p in on_node["items"]
        for o in p["metadata"].get("ownerReferences") or []
        if o.get("controller")
    }
    assert owners <= {"DaemonSet"}, owners

    again, summary = node_cli("drain", "worker-1")
    assert again.returncode == 0 and summary["hosts"]["cp-1"]["changed"] == 0, summary

    result, summary = node_cli("restore", "worker-1")
    assert result.returncode == 0, result.stdout[-3000:]
    assert not tainted("worker-1") and not node_object("worker-1")["spec"].get("unschedulable")
    again, summary = node_cli("restore", "worker-1")
    assert again.returncode == 0 and summary["hosts"]["cp-1"]["changed"] == 0, summary
    spread_over_the_workers()  # the scheduler uses worker-1 again


def test_restore_keeps_the_cordon_an_admin_had_set_before_the_drain():
    kubectl("cordon", "worker-1")
    try:
        assert node_cli("drain", "worker-1")[0].returncode == 0
        result, summary = node_cli("restore", "worker-1")
        assert result.returncode == 0
        assert not tainted("worker-1")
        assert node_object("worker-1")["spec"].get("unschedulable") is True
        assert any("stays cordoned (as it was before the drain)" in line for line in summary["report"])
    finally:
        kubectl("uncordon", "worker-1")
    spread_over_the_workers()


def upstream_names_survive_the_restart(node: str) -> None:
    """docker rewrote the node container's /etc/hosts when it started again, dropping role bundle_client's
    block; appliance-registry-hosts.service put it back during the boot, and the registry proxy's socket
    put its link-local address back on the loopback, so the node still pulls an image of the bundle by its
    upstream name, over TLS (issues 23 and 24)."""
    journal = lab_cli("lab", "exec", node, "--", "journalctl", "-b", "-u", "appliance-registry-hosts")
    assert "names the mirrored registries again" in journal.stdout, journal.stdout + journal.stderr
    hosts = lab_cli("lab", "exec", node, "--", "cat", "/etc/hosts").stdout
    assert any(
        line.split()[:1] == ["169.254.77.1"] and "k8s.gcr.io" in line.split() for line in hosts.splitlines()
    ), hosts
    pulled = lab_cli("lab", "exec", node, "--", "docker", "pull", "k8s.gcr.io/pause:3.6")
    assert pulled.returncode == 0, pulled.stdout + pulled.stderr


def test_down_moves_the_pods_of_a_stopped_node_within_60_s_and_other_work_goes_on():
    set_container("worker-2", "stop")
    try:
        start = time.monotonic()
        result, summary = node_cli("down", "worker-2")
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr
        wait_for(
            lambda: all_running_off("worker-2"), 60 - (time.monotonic() - start), "pods Running elsewhere"
        )
        assert tainted("worker-2")

        # With worker-2 down, maintenance of the others still works: nothing waits for worker-2.
        result, summary = node_cli("status")
        assert result.returncode == 0
        rows = status_rows(summary)
        assert "drained" in rows["worker-2"] and "(0 workload)" in rows["worker-2"], rows
        assert node_cli("down", "worker-2")[1]["hosts"]["cp-1"]["changed"] == 0
        result, summary = node_cli("restore", "worker-1")
        assert result.returncode == 0 and summary["hosts"]["cp-1"]["changed"] == 0, summary
    finally:
        set_container("worker-2", "start")
    wait_for(lambda: ready("worker-2"), 180, "worker-2 Ready after its restart")
    upstream_names_survive_the_restart("worker-2")
    result, _ = node_cli("restore", "worker-2")
    assert result.returncode == 0, result.stdout[-3000:]
    assert not tainted("worker-2") and not node_object("worker-2")["spec"].get("unschedulable")
    spread_over_the_workers()  # pods are scheduled on worker-2 again


def test_a_drain_blocked_by_a_disruption_budget_times_out_naming_it_and_only_a_forced_remove_goes_on():
    kubectl("create", "poddisruptionbudget", "sleeper", "--selector", "app=sleeper", "--min-available", "4")
    try:
        wait_for(
            lambda: (
                json.loads(kubectl("get", "pdb", "sleeper", "-o", "json"))["status"].get("currentHealthy")
                == 4
            ),
            60,
            "the budget sees the pods",
        )
        result, summary = node_cli("drain", "worker-1", "--evict", "--timeout", "20")
        assert result.returncode == 1
        message = summary["failures"][0]["message"]
        assert "PodDisruptionBudget default/sleeper allows 0 disruptions" in message, message

        result, summary = node_cli("remove", "worker-1", "--timeout", "15")
        assert result.returncode == 1
        assert "PodDisruptionBudget default/sleeper" in summary["failures"][0]["message"]
        assert ready("worker-1")  # still a node of the cluster
        assert {p["spec"]["nodeName"] for p in sleepers()} == set(WORKERS)

        result, summary = node_cli("remove", "worker-1", "--force", "--timeout", "10")
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr
        assert "worker-1" not in kubectl("get", "nodes", "-o", "jsonpath={.items[*].metadata.name}").split()
        assert any("worker-1: kubeadm state reset" in line for line in summary["report"]), summary["report"]
    finally:
        kubectl("delete", "poddisruptionbudget", "sleeper", "--ignore-not-found")


def test_remove_is_idempotent_and_rejoin_brings_the_node_back_ready_with_its_role_labels():
    result, summary = node_cli("remove", "worker-1")  # removed by the forced removal above
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr
    assert sum(tally["changed"] for tally in summary["hosts"].values()) == 0, summary
    assert any("was not one before this run" in line for line in summary["report"]), summary["report"]

    left = lab_cli("lab", "exec", "worker-1", "--", "ls", "/etc/kubernetes")
    assert "kubelet.conf" not in left.stdout
    # The pods bound to a deleted node are deleted by Kubernetes' pod garbage collector (within about 60 s).
    wait_for(lambda: all_running_off("worker-1"), 120, "pods Running elsewhere")

    result, summary = node_cli("rejoin", "worker-1")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr
    assert ready("worker-1")
    labels = node_object("worker-1")["metadata"]["labels"]
    assert labels.get("node-role.kubernetes.io/runai-gpu-worker") == "true", labels
    assert node_object("worker-1")["status"]["nodeInfo"]["kubeletVersion"] == "v1.23.5"

    again, summary = node_cli("rejoin", "worker-1")
    assert again.returncode == 0
    assert {host: tally["changed"] for host, tally in summary["hosts"].items()} == {"cp-1": 0, "worker-1": 0}


def test_a_worker_that_is_down_is_removed_and_a_deleted_node_with_stale_state_rejoins():
    set_container("worker-1", "stop")
    try:
        start = time.monotonic()
        result, summary = node_cli("remove", "worker-1")
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr
        assert any("worker-1 did not answer" in line for line in summary["report"]), summary["report"]
        assert "worker-1" not in kubectl("get", "nodes", "-o", "jsonpath={.items[*].metadata.name}").split()
        wait_for(
            lambda: all_running_off("worker-1"), 60 - (time.monotonic() - start), "pods Running elsewhere"
        )
    finally:
        set_container("worker-1", "start")
    lab_cli("lab", "exec", "worker-1", "--", "systemctl", "is-system-running", "--wait")

    # The seed's way to take a node out: `kubectl delete node`, its kubelet stopped. Its kubeadm state stays,
    # so rejoin must reset it before the join.
    lab_cli("lab", "exec", "worker-1", "--", "systemctl", "stop", "kubelet")
    kubectl("delete", "node", "worker-1", "--ignore-not-found")
    stale = lab_cli("lab", "exec", "worker-1", "--", "ls", "/etc/kubernetes")
    assert "kubelet.conf" in stale.stdout
    # The rejoin involves worker-1 and the control plane only: worker-2 being down does not block it.
    set_container("worker-2", "stop")
    try:
        result, summary = node_cli("rejoin", "worker-1")
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr
        assert sorted(summary["hosts"]) == ["cp-1", "worker-1"], summary["hosts"]
        assert summary["hosts"]["worker-1"]["changed"] > 0
    finally:
        set_container("worker-2", "start")
    wait_for(lambda: ready("worker-1"), 60, "worker-1 Ready")
    labels = node_object("worker-1")["metadata"]["labels"]
    assert labels.get("node-role.kubernetes.io/runai-gpu-worker") == "true", labels
