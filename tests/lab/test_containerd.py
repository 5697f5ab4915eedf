"""site.yml with appliance_container_runtime=containerd on fresh lab nodes, from the lab's offline bundle:
both nodes Ready at 1.23.5 on containerd, every system pod Running, a pod on the worker running an image of
the bundle's registry (by the registry's name and by its upstream name, through containerd's mirrors), no
docker on the nodes, crictl talking to containerd, the GPU operator's policy naming containerd, and a
second run that changes nothing.

Runs a lab of its own (APPLIANCE_LAB_NAME=labctd on 172.28.6.0/24, cp-1 and one worker);
tests/lab/test_site.py covers docker, the default container runtime.
"""

from __future__ import annotations

import json
import subprocess
import urllib.request

import pytest

from appliance.lab import kube_bench
from tests.conftest import SITE_IMAGE, build_lab_bundle, lab_kubectl, run_cli, run_playbook

pytestmark = pytest.mark.lab

LAB_ENV = {"APPLIANCE_LAB_NAME": "labctd", "APPLIANCE_LAB_SUBNET": "172.28.6.0/24"}
NODES = ("cp-1", "worker-1")
REGISTRY = "172.28.6.10:5000"
RUNTIME = ("-e", "appliance_container_runtime=containerd")
MANIFEST_TYPES = (
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
)


def lab_cli(*args: str, timeout: float = 1800) -> subprocess.CompletedProcess[str]:
    return run_cli(*args, env=LAB_ENV, timeout=timeout)


def on(node: str, script: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = lab_cli("lab", "exec", node, "--", "sh", "-c", script)
    if check:
        assert result.returncode == 0, result.stdout + result.stderr
    return result


def site(*extra: str) -> tuple[subprocess.CompletedProcess[str], dict]:
    return run_playbook(LAB_ENV, "site.yml", *RUNTIME, *extra)


@pytest.fixture(scope="module")
def converged():
    built = build_lab_bundle()
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr
    # The lab goes down however the setup ends: this machine's two cores are shared.
    try:
        up = lab_cli("lab", "up", "--workers", "1")
        assert up.returncode == 0, up.stderr
        result, summary = site()
        assert result.returncode == 0, result.stdout[-4000:] + result.stderr
        yield summary
    finally:
        lab_cli("lab", "down")


def kubectl(*args: str, stdin: str | None = None, timeout: float = 300) -> str:
    result = lab_kubectl(LAB_ENV, *args, stdin=stdin, timeout=timeout)
    assert result.returncode == 0, result.stderr
    return result.stdout


def kube_json(*args: str) -> dict:
    return json.loads(kubectl(*args, "-o", "json"))


def test_both_nodes_are_ready_at_1_23_5_on_containerd(converged):
    found = {item["metadata"]["name"]: item for item in kube_json("get", "nodes")["items"]}
    assert sorted(found) == sorted(NODES)
    for name, node in found.items():
        ready = next(c for c in node["status"]["conditions"] if c["type"] == "Ready")
        assert ready["status"] == "True", (name, ready)
        assert node["status"]["nodeInfo"]["kubeletVersion"] == "v1.23.5"
        assert node["status"]["nodeInfo"]["containerRuntimeVersion"].startswith("containerd://"), name


def test_every_system_and_flannel_pod_runs_from_the_bundles_registry(converged):
    for namespace in ("kube-system", "kube-flannel"):
        pods = kube_json("-n", namespace, "get", "pods")["items"]
        assert pods, namespace
        for pod in pods:
            name = pod["metadata"]["name"]
            assert pod["status"]["phase"] == "Running", (name, pod["status"].get("phase"))
            assert all(c["ready"] for c in pod["status"]["containerStatuses"]), name
            images = [c["image"] for c in pod["spec"]["containers"]]
            assert all(image.startswith(f"{REGISTRY}/") for image in images), (name, images)
    flannel_nodes = {p["spec"]["nodeName"] for p in kube_json("-n", "kube-flannel", "get", "pods")["items"]}
    assert flannel_nodes == set(NODES)


def registry_digest(repository: str, tag: str) -> str:
    request = urllib.request.Request(
        f"http://{REGISTRY}/v2/{repository}/manifests/{tag}",
        method="HEAD",
        headers={"Accept": ", ".join(MANIFEST_TYPES)},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.headers["Docker-Content-Digest"]


POD = """
apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: default}}
spec:
  nodeSelector: {{kubernetes.io/hostname: worker-1}}
  containers: [{{name: main, image: "{image}", imagePullPolicy: Always, args: {args}}}]
"""


# By the registry's own name (as kubeadm and flannel name images), by the upstream name, which
# containerd's mirrors (role bundle_client) send to the registry, and by the name of the site image that
# `lab bundle --image` added (gcr.io, mirrored because the bundle's manifest lists an image of it): no
# other registry can be reached here.
@pytest.mark.parametrize(
    ("pod", "image", "args"),
    [
        ("from-registry", f"{REGISTRY}/pause:3.6", []),
        ("from-upstream-name", "k8s.gcr.io/pause:3.6", []),
        ("from-site-image", SITE_IMAGE, ["serve", ":8080"]),
    ],
)
def test_a_pod_on_the_worker_runs_an_image_pulled_from_the_bundles_registry(converged, pod, image, args):
    kubectl("delete", "pod", pod, "--ignore-not-found", "--wait")
    kubectl("apply", "-f", "-", stdin=POD.format(name=pod, image=image, args=json.dumps(args)))
    kubectl("wait", "--for=condition=Ready", f"pod/{pod}", "--timeout=180s")
    found = kube_json("get", "pod", pod)
    assert found["spec"]["nodeName"] == "worker-1"
    status = found["status"]["containerStatuses"][0]
    assert status["ready"] and "running" in status["state"], status
    repository, tag = image.split("/", 1)[1].rsplit(":", 1)
    assert status["imageID"].endswith("@" + registry_digest(repository, tag)), status["imageID"]
    kubectl("delete", "pod", pod, "--wait=false")


def test_the_gpu_operator_runs_and_its_policy_names_containerd(converged):
    """site.yml's platform.yml with containerd: the ClusterPolicy's defaultRuntime is the cluster's runtime
    (the operator's toolkit configures that runtime on GPU nodes), and the operator runs on containerd."""
    policy = kube_json("get", "clusterpolicies.nvidia.com", "cluster-policy")
    assert policy["spec"]["operator"]["defaultRuntime"] == "containerd"
    pods = kube_json("-n", "gpu-operator", "get", "pods", "-l", "app=gpu-operator")["items"]
    assert [p["status"]["phase"] for p in pods] == ["Running"]
    assert pods[0]["spec"]["containers"][0]["image"] == f"{REGISTRY}/nvidia/gpu-operator:v1.11.1"


def test_docker_is_not_installed_on_any_node(converged):
    for node in NODES:
        status = on(node, "dpkg-query --show --showformat='${db:Status-Abbrev}' docker.io", check=False)
        assert not status.stdout.startswith("ii"), (node, status.stdout)
        assert on(node, "command -v docker dockerd", check=False).stdout == "", node


def test_crictl_on_every_node_talks_to_containerd(converged):
    for node in NODES:
        version = dict(
            line.split(":", 1) for line in on(node, "crictl version").stdout.splitlines() if ":" in line
        )
        assert version["RuntimeName"].strip() == "containerd", (node, version)
        running = on(node, "crictl ps --state running --output json").stdout
        names = {c["metadata"]["name"] for c in json.loads(running)["containers"]}
        assert {"kube-proxy", "kube-flannel"} <= names, (node, names)


def test_a_second_run_changes_nothing(converged):
    result, summary = site()
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr
    assert {host: tally["changed"] for host, tally in summary["hosts"].items()} == dict.fromkeys(NODES, 0)


# What kube-bench's CIS 1.23 benchmark still fails on a kubeadm 1.23.5 appliance, until issue 24's hardened
# cluster configuration lands (docs/hardening.md says what each is and how it will be met). Any other FAIL
# is a regression; each one fixed is taken off this list.
NOT_YET_HARDENED = {
    "cp-1": ["1.1.12", "1.2.6", "1.2.18", "1.2.19", "1.2.20", "1.2.21", "1.2.22", "1.3.2", "1.4.1", "4.2.6"],
    "worker-1": ["4.2.6"],
}


def test_kube_bench_cis_1_23_fails_only_the_checks_not_yet_hardened(converged):
    """kube-bench, built from its source by `make setup`, run on the control plane (targets master,
    controlplane, etcd, node) and on the worker (node) with --benchmark cis-1.23; every target reports."""
    for node, targets in (
        ("cp-1", kube_bench.CONTROL_PLANE_TARGETS),
        ("worker-1", kube_bench.WORKER_TARGETS),
    ):
        summary = kube_bench.summarize(kube_bench.run(f"appliance-labctd-{node}", targets))
        assert set(summary) == set(targets), summary
        assert all(sum(target.counts.values()) > 0 for target in summary.values()), summary
        failed = [check for target in targets for check in summary[target].failed]
        assert failed == NOT_YET_HARDENED[node], (node, failed)
