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
from tests.conftest import SITE_IMAGE, build_lab_bundle, changed_tasks, lab_kubectl, run_cli, run_playbook

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
    "cp-1": ["1.1.12", "1.2.6"],
    "worker-1": [],
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


# What a run changes when appliance_kubelet_protect_kernel_defaults flips: the kernel parameters' file
# (role prereqs), kubeadm's configuration file and the cluster's KubeletConfiguration (cp-1), and each
# node's kubelet, one at a time.
KUBELET_FLIP = {
    "cp-1": {
        "prereqs : Write the kernel parameters for boot",
        "prereqs : Set the kernel parameters now",
        "kube_control_plane : Render the kubeadm configuration",
        "kube_control_plane : Upload the kubelet configuration, changed in protectKernelDefaults",
        "kube_node : Write the cluster's kubelet configuration on this node",
        "kube_node : Restart the kubelet with it",
    },
    "worker-1": {
        "prereqs : Write the kernel parameters for boot",
        "prereqs : Set the kernel parameters now",
        "kube_node : Write the cluster's kubelet configuration on this node",
        "kube_node : Restart the kubelet with it",
    },
}


def kubelet_protects(node: str) -> bool:
    """protectKernelDefaults in the node's kubelet configuration file (kubeadm leaves false out)."""
    lines = on(node, "cat /var/lib/kubelet/config.yaml").stdout.splitlines()
    value = next(
        (line.split(":", 1)[1].strip() for line in lines if line.startswith("protectKernelDefaults:")), None
    )
    return value == "true"


def test_a_re_run_that_turns_protect_kernel_defaults_off_changes_the_kubelets_and_nothing_else(converged):
    """Hardening default (issue 24): on by default, and a re-run with it off applies that to the running
    cluster (the ConfigMap, each node's file, each kubelet restarted and healthy) and changes nothing else;
    the next run with it off changes nothing; a run with it on again puts it back."""
    assert {node: kubelet_protects(node) for node in NODES} == dict.fromkeys(NODES, True)
    # Off, off again (nothing left to change: kubeadm stores false as no key), then on again.
    for protect, expected in ((False, KUBELET_FLIP), (False, {}), (True, KUBELET_FLIP)):
        result, summary = site("-e", f"appliance_kubelet_protect_kernel_defaults={str(protect).lower()}")
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr
        changed = {host: tasks for host, tasks in changed_tasks(summary).items() if tasks}
        assert changed == expected, (protect, changed)
        assert {node: kubelet_protects(node) for node in NODES} == dict.fromkeys(NODES, protect)
        configmap = kubectl(
            "-n", "kube-system", "get", "configmap", "kubelet-config-1.23", "-o", "jsonpath={.data.kubelet}"
        )
        assert ("protectKernelDefaults: true" in configmap) == protect, configmap
        for node in NODES:
            assert on(node, "curl -sf http://127.0.0.1:10248/healthz").stdout == "ok", node
            sysctl = on(node, "cat /etc/sysctl.d/k8s.conf").stdout
            assert ("vm.overcommit_memory = 1" in sysctl) == protect, (node, sysctl)
    ready = kube_json("get", "nodes")["items"]
    assert all(
        next(c for c in n["status"]["conditions"] if c["type"] == "Ready")["status"] == "True" for n in ready
    )


# What a run changes when kube_control_plane_profiling flips: kubeadm's configuration file, the three
# manifests that carry --profiling (one at a time, each waited on), and the stored ClusterConfiguration.
PROFILING_FLIP = {
    "cp-1": {
        "kube_control_plane : Render the kubeadm configuration",
        "kube_control_plane : Write the manifest with kubeadm for kube-apiserver",
        "kube_control_plane : Write the manifest with kubeadm for kube-controller-manager",
        "kube_control_plane : Write the manifest with kubeadm for kube-scheduler",
        "kube_control_plane : Store the ClusterConfiguration, changed in apiServer.extraArgs, "
        "controllerManager.extraArgs, scheduler.extraArgs",
    }
}


def control_plane_flags(component: str) -> list[str]:
    pod = kube_json("-n", "kube-system", "get", "pod", f"{component}-cp-1")
    return [arg for arg in pod["spec"]["containers"][0]["command"] if arg.startswith("--")]


def test_a_re_run_that_turns_profiling_on_rewrites_three_manifests_the_kubeadm_way_and_nothing_else(
    converged,
):
    """Hardening default (issue 24): --profiling=false on the API server, controller-manager and scheduler,
    and the audit log, from kubeadm's ClusterConfiguration. A re-run with profiling on has kubeadm write
    those three manifests again (etcd's is the same), each running and ready before the next; the stored
    ClusterConfiguration follows, so `kubeadm upgrade` keeps it."""
    components = ("kube-apiserver", "kube-controller-manager", "kube-scheduler")
    for component in components:
        assert "--profiling=false" in control_plane_flags(component), component
    audit = control_plane_flags("kube-apiserver")
    assert "--audit-log-path=/var/log/kubernetes/audit/audit.log" in audit, audit
    assert "--tls-min-version=VersionTLS12" in audit, audit
    assert (
        on("cp-1", "test -s /var/log/kubernetes/audit/audit.log && echo written").stdout.strip() == "written"
    )
    etcd_before = on("cp-1", "cat /etc/kubernetes/manifests/etcd.yaml").stdout
    # One run, profiling on (its hardening off): the way back is the same code (test above: both ways).
    result, summary = site("-e", "kube_control_plane_profiling=true")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr
    changed = {host: tasks for host, tasks in changed_tasks(summary).items() if tasks}
    assert changed == PROFILING_FLIP, changed
    for component in components:
        assert "--profiling=false" not in control_plane_flags(component), component
    assert "--audit-log-path=/var/log/kubernetes/audit/audit.log" in control_plane_flags("kube-apiserver")
    stored = kubectl(
        "-n",
        "kube-system",
        "get",
        "configmap",
        "kubeadm-config",
        "-o",
        "jsonpath={.data.ClusterConfiguration}",
    )
    assert "profiling" not in stored and "audit-log-maxage" in stored, stored
    assert on("cp-1", "cat /etc/kubernetes/manifests/etcd.yaml").stdout == etcd_before
    assert on("cp-1", "ls /etc/kubernetes/tmp 2>/dev/null | grep -c dryrun || true").stdout.strip() == "0"
