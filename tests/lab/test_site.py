"""site.yml on fresh lab nodes, from the lab's offline bundle: a working 1.23.5 appliance (issue 5's
acceptance: nodes Ready with their roles, pods Running, a Deployment answering through a Service by DNS
name), the host roles' outcomes (issue 4), idempotence, --check, and bad input stopped before any change.

Runs a lab of its own (APPLIANCE_LAB_NAME=labsite on 172.28.4.0/24, cp-1 and two workers), with docker,
the default container runtime (tests/lab/test_containerd.py covers containerd).
"""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import json
import os
import socket
import ssl
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import (
    ECHO_IMAGE,
    PROJECT,
    SITE_IMAGE,
    build_lab_bundle,
    lab_kubectl,
    lab_registry_password,
    run_cli,
    run_playbook,
)

pytestmark = pytest.mark.lab

LAB_ENV = {"APPLIANCE_LAB_NAME": "labsite", "APPLIANCE_LAB_SUBNET": "172.28.4.0/24"}
NODES = ("cp-1", "worker-1", "worker-2")
MASTER_TOLERATION = {"key": "node-role.kubernetes.io/master", "operator": "Exists", "effect": "NoSchedule"}
KUBE = ("kubeadm", "kubectl", "kubelet")
UNREACHABLE_MIRROR = "http://127.0.0.1:9/debian"


def lab_cli(*args: str, timeout: float = 1800) -> subprocess.CompletedProcess[str]:
    return run_cli(*args, env=LAB_ENV, timeout=timeout)


def on(node: str, script: str) -> str:
    result = lab_cli("lab", "exec", node, "--", "sh", "-c", script)
    assert result.returncode == 0, result.stderr
    return result.stdout


# The Run:ai control plane from a synthetic tarball (`appliance lab runai-tarball`: Run:ai's layout, its
# pods run a stand-in built here; the real tarball is proprietary). The lab's DNS does not know the
# domain, so preflight's name check is off; the role connects to the IP with the domain's name for TLS.
RUNAI_DOMAIN = "runai.labsite.example"
RUNAI_IP = "172.28.4.10"
RUNAI_PASSWORD = "labsite-admin-0"
RUNAI_VARS = Path(tempfile.gettempdir()) / "appliance-test-site-runai.yml"


def site(*extra: str) -> tuple[subprocess.CompletedProcess[str], dict]:
    return run_playbook(LAB_ENV, "site.yml", "-e", f"@{RUNAI_VARS}", *extra)


def runai_tarball(version: str) -> str:
    built = run_cli("lab", "runai-tarball", "--version", version, timeout=1200)
    assert built.returncode == 0, built.stderr
    return built.stdout.strip()


def changed(summary: dict) -> dict[str, int]:
    return {host: tally["changed"] for host, tally in summary["hosts"].items()}


@pytest.fixture(scope="module")
def converged():
    built = build_lab_bundle()
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr
    up = lab_cli("lab", "up", "--workers", "2")
    assert up.returncode == 0, up.stderr
    RUNAI_VARS.write_text(
        json.dumps(
            {
                "runai_airgapped_tar": runai_tarball("2.9.0"),
                "runai_domain": RUNAI_DOMAIN,
                "runai_external_ip": RUNAI_IP,
                "runai_tls_generate": True,
                "runai_local_storage_path": "/var/lib/runai-local",
                "runai_admin_password": RUNAI_PASSWORD,
                "preflight_runai_domain": "",
            }
        )
    )
    try:
        # An air-gapped site: the nodes' own apt sources cannot be reached (connection refused).
        for node in NODES:
            on(node, f"echo 'deb {UNREACHABLE_MIRROR} bookworm main' > /etc/apt/sources.list")
        on("cp-1", f"useradd --create-home --shell /bin/bash {RESEARCHER}")
        # --check first, on the fresh nodes: what it reported and what it left on them.
        check, check_summary = site("--check")
        left = {
            node: on(node, f"ls -d {' '.join(FRESH_PATHS)} 2>/dev/null || true").split() for node in NODES
        }
        result, summary = site()
        assert result.returncode == 0, result.stdout[-4000:] + result.stderr
        yield {"fresh_check": (check, check_summary, left), "run": summary}
    finally:
        if not os.environ.get("APPLIANCE_TEST_KEEP_LAB"):
            lab_cli("lab", "down")


# What a run of site.yml creates first on a fresh node; --check must create none of them.
FRESH_PATHS = (
    "/etc/docker",
    "/var/lib/appliance",
    "/etc/apt/sources.list.d/appliance-bundle.list",
    "/etc/kubernetes",
)


def test_check_mode_on_fresh_nodes_reports_what_a_run_would_do_and_changes_nothing(converged):
    check, summary, left = converged["fresh_check"]
    assert check.returncode == 0, check.stdout[-4000:] + check.stderr
    assert all(count > 0 for count in changed(summary).values()), changed(summary)
    log = Path(summary["log"]).read_text()
    for reported in ("Would join worker-1", "Would join worker-2", "Would install release gpu-operator"):
        assert reported in log, reported
    assert left == {node: [] for node in NODES}


def kubectl(*args: str, stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = lab_kubectl(LAB_ENV, *args, stdin=stdin)
    if check:
        assert result.returncode == 0, result.stderr
    return result


def kube_json(*args: str) -> dict:
    return json.loads(kubectl(*args, "-o", "json").stdout)


def test_three_nodes_are_ready_at_1_23_5_with_their_run_ai_roles(converged):
    found = {item["metadata"]["name"]: item for item in kube_json("get", "nodes")["items"]}
    assert sorted(found) == sorted(NODES)
    for name, node in found.items():
        ready = next(c for c in node["status"]["conditions"] if c["type"] == "Ready")
        assert ready["status"] == "True", (name, ready)
        assert node["status"]["nodeInfo"]["kubeletVersion"] == "v1.23.5"
        assert node["status"]["nodeInfo"]["containerRuntimeVersion"].startswith("docker://")
    roles = {
        name: sorted(
            k.split("/", 1)[1] for k, v in n["metadata"]["labels"].items() if "runai-" in k and v == "true"
        )
        for name, n in found.items()
    }
    # The lab's inventory: worker-1 a GPU worker, worker-2 a CPU worker hosting the Run:ai system services.
    assert roles == {
        "cp-1": [],
        "worker-1": ["runai-gpu-worker"],
        "worker-2": ["runai-cpu-worker", "runai-system"],
    }


def test_every_system_and_flannel_pod_runs_and_flannel_is_on_every_node(converged):
    for namespace in ("kube-system", "kube-flannel"):
        pods = kube_json("-n", namespace, "get", "pods")["items"]
        assert pods, namespace
        for pod in pods:
            assert pod["status"]["phase"] == "Running", (pod["metadata"]["name"], pod["status"].get("phase"))
            assert all(c["ready"] for c in pod["status"]["containerStatuses"]), pod["metadata"]["name"]
    flannel_nodes = {p["spec"]["nodeName"] for p in kube_json("-n", "kube-flannel", "get", "pods")["items"]}
    assert flannel_nodes == set(NODES)
    images = {
        c["image"]
        for p in kube_json("-n", "kube-system", "get", "pods")["items"]
        for c in p["spec"]["containers"]
    }
    assert all(image.startswith("172.28.4.10:5000/") for image in images), images


@pytest.fixture(scope="module")
def echo_image(converged):
    """The test workload (tests/lab/fixtures/echo, built by the converged fixture) pushed into the lab's
    registry from cp-1 (the registry takes pushes from that node only, with the pusher's credentials),
    named by the registry's address."""
    # The credentials go in an auth file (0600), not on the command line that ps shows.
    auth = base64.b64encode(f"appliance:{lab_registry_password(LAB_ENV)}".encode()).decode()
    with tempfile.TemporaryDirectory() as work:
        archive, authfile = Path(work) / "echo.tar", Path(work) / "auth.json"
        subprocess.run(["docker", "save", "-o", str(archive), ECHO_IMAGE], check=True)
        authfile.write_text(json.dumps({"auths": {"127.0.0.1:5001": {"auth": auth}}}))
        authfile.chmod(0o600)
        for source, target in ((archive, "/root/echo.tar"), (authfile, "/root/echo-auth.json")):
            subprocess.run(["docker", "cp", str(source), f"appliance-labsite-cp-1:{target}"], check=True)
    on(
        "cp-1",
        "skopeo copy --quiet --dest-tls-verify=false --authfile /root/echo-auth.json "
        f"docker-archive:/root/echo.tar docker://127.0.0.1:5001/{ECHO_IMAGE}; "
        "pushed=$?; rm -f /root/echo.tar /root/echo-auth.json; exit $pushed",
    )
    return f"172.28.4.10:5000/{ECHO_IMAGE}"


WORKLOAD = """
apiVersion: apps/v1
kind: Deployment
metadata: {{name: echo, namespace: default}}
spec:
  replicas: 2
  selector: {{matchLabels: {{app: echo}}}}
  template:
    metadata: {{labels: {{app: echo}}}}
    spec:
      topologySpreadConstraints:
        - {{maxSkew: 1, topologyKey: kubernetes.io/hostname, whenUnsatisfiable: DoNotSchedule,
           labelSelector: {{matchLabels: {{app: echo}}}}}}
      affinity:
        nodeAffinity:
          requiredDuringSchedulingIgnoredDuringExecution:
            nodeSelectorTerms:
              - matchExpressions: [{{key: node-role.kubernetes.io/master, operator: DoesNotExist}}]
      containers:
        - {{name: echo, image: "{image}", args: [serve, ":8080"], ports: [{{containerPort: 8080}}]}}
---
apiVersion: v1
kind: Service
metadata: {{name: echo, namespace: default}}
spec:
  selector: {{app: echo}}
  ports: [{{port: 80, targetPort: 8080}}]
"""


def test_a_deployment_on_both_workers_answers_through_a_service_by_dns_name_from_the_control_plane(
    echo_image,
):
    kubectl("apply", "-f", "-", stdin=WORKLOAD.format(image=echo_image))
    kubectl("rollout", "status", "deployment/echo", "--timeout", "180s")
    pods = kube_json("get", "pods", "-l", "app=echo")["items"]
    where = {p["metadata"]["name"]: p["spec"]["nodeName"] for p in pods}
    assert sorted(where.values()) == ["worker-1", "worker-2"], where

    # A client pod on the control plane asks the Service by its DNS name, 20 times on new connections.
    kubectl("delete", "pod", "echo-client", "--ignore-not-found", "--wait")
    kubectl(
        "run", "echo-client", f"--image={echo_image}", "--restart=Never",
        "--overrides", json.dumps({"spec": {"nodeName": "cp-1", "tolerations": [MASTER_TOLERATION]}}),
        "--", "get", "http://echo.default.svc.cluster.local/", "20",
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        phase = kube_json("get", "pod", "echo-client")["status"].get("phase")
        if phase in ("Succeeded", "Failed"):
            break
        time.sleep(2)
    answers = kubectl("logs", "echo-client").stdout.split()
    assert phase == "Succeeded", answers
    # Every answer came from a pod of the Deployment, and both pods (on both workers) answered.
    assert len(answers) == 20 and set(answers) == set(where), (answers, where)


UPSTREAM_POD = """
apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: default}}
spec:
  nodeSelector: {{kubernetes.io/hostname: {node}}}
  containers: [{{name: main, image: "{image}", imagePullPolicy: Always, args: {args}}}]
"""


def test_pods_naming_images_by_their_upstream_names_run_on_docker_from_the_private_registry(converged):
    """Issue 23: docker mirrors Docker Hub alone, so role bundle_client names the other registries in
    /etc/hosts after a proxy on each node that forwards to the private registry (on a link-local address
    of the loopback, where docker checks the registry's certificate, issue 24). A pod naming
    k8s.gcr.io/pause:3.6 (an image of the bundle) and one naming the site image that `lab bundle --image`
    added (gcr.io, a registry only the site image brings) run, pulled (imagePullPolicy Always) with no
    internet; neither image was on the node by that name before."""
    cases = {
        "upstream-pause": ("worker-1", "k8s.gcr.io/pause:3.6", []),
        "site-image": ("worker-2", SITE_IMAGE, ["serve", ":8080"]),
    }
    for node, image, _ in cases.values():
        present = on(node, f"docker image inspect {image} >/dev/null 2>&1 && echo present || echo absent")
        assert present.strip() == "absent", (node, image)
    for name, (node, image, args) in cases.items():
        kubectl("delete", "pod", name, "--ignore-not-found", "--wait")
        pod = UPSTREAM_POD.format(name=name, node=node, image=image, args=json.dumps(args))
        kubectl("apply", "-f", "-", stdin=pod)
    try:
        for name in cases:
            kubectl("wait", "--for=condition=Ready", f"pod/{name}", "--timeout=180s")
        for name, (node, image, _) in cases.items():
            found = kube_json("get", "pod", name)
            assert found["spec"]["nodeName"] == node
            status = found["status"]["containerStatuses"][0]
            assert status["ready"] and "running" in status["state"], status
            # The pull named the upstream registry: docker records the manifest's digest under that name.
            # (dockershim reports the image by the first name docker has for it, maybe the registry's.)
            digests = json.loads(
                on(node, f"docker image inspect --format '{{{{json .RepoDigests}}}}' {image}")
            )
            repository = image.rsplit(":", 1)[0]
            upstream = [d.split("@")[1] for d in digests if d.startswith(f"{repository}@")]
            assert upstream == [status["imageID"].rsplit("@", 1)[1]], (digests, status["imageID"])
        names = [
            line.split() for line in on("worker-1", "cat /etc/hosts").splitlines() if "k8s.gcr.io" in line
        ]
        assert len(names) == 1 and names[0][0] == "169.254.77.1" and "gcr.io" in names[0], names
    finally:
        kubectl("delete", "pod", *cases, "--wait=false")


def test_nothing_came_from_the_nodes_own_apt_sources(converged):
    # The run succeeded with those sources unreachable; apt's index holds the bundle's repository only.
    for node in NODES:
        lists = on(node, "ls /var/lib/apt/lists").split()
        indexes = [name for name in lists if name.endswith("_Packages")]
        assert indexes, (node, lists)
        assert all("appliance_bundle" in name or ":8081_" in name for name in indexes), (node, indexes)


def test_swap_is_off_on_every_node(converged):
    for node in NODES:
        assert on(node, "swapon --show --noheadings").strip() == ""


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


def helm_releases() -> list[dict]:
    listing = on("cp-1", "helm --kubeconfig /etc/kubernetes/admin.conf list --all-namespaces --output json")
    return json.loads(listing)


def test_the_gpu_operator_runs_from_the_private_registry_with_the_cluster_runtime(converged):
    """site.yml's platform.yml: chart v1.11.1 released, its CRD and ClusterPolicy with the cluster's runtime,
    and the operator Running on the image the bundle built from its Go module, pulled from the private
    registry. There is no GPU here: the operator finds no GPU node and says so."""
    assert [
        (r["namespace"], r["chart"], r["status"]) for r in helm_releases() if r["name"] == "gpu-operator"
    ] == [("gpu-operator", "gpu-operator-v1.11.1", "deployed")]
    kubectl("get", "crd", "clusterpolicies.nvidia.com")
    policy = kube_json("get", "clusterpolicies.nvidia.com", "cluster-policy")
    assert policy["spec"]["operator"]["defaultRuntime"] == "docker"
    assert policy["spec"]["driver"]["enabled"] is True
    assert policy["spec"]["toolkit"]["repository"] == "172.28.4.10:5000/nvidia/k8s"
    pods = kube_json("-n", "gpu-operator", "get", "pods", "-l", "app=gpu-operator")["items"]
    assert len(pods) == 1
    pod = pods[0]
    assert pod["status"]["phase"] == "Running"
    assert all(c["ready"] for c in pod["status"]["containerStatuses"])
    assert pod["spec"]["containers"][0]["image"] == "172.28.4.10:5000/nvidia/gpu-operator:v1.11.1"
    deadline = time.monotonic() + 60
    while "No GPU node" not in (log := kubectl("-n", "gpu-operator", "logs", pod["metadata"]["name"]).stdout):
        assert time.monotonic() < deadline, log[-2000:]
        time.sleep(3)


def test_node_feature_discovery_labels_every_node_from_the_image_the_bundle_built(converged):
    """The chart's node-feature-discovery (the role's default gpu_operator_nfd_enabled): its master Ready,
    which its probes (grpc_health_probe) decide, a worker Ready on every node, each pod on the image the
    bundle built from NFD's source; each node labelled from the host's files the worker reads under
    /host-etc, /host-sys, ... (Debian 12's os-release)."""
    selector = "app.kubernetes.io/name=node-feature-discovery"
    deadline = time.monotonic() + 300
    while True:
        pods = kube_json("-n", "gpu-operator", "get", "pods", "-l", selector)["items"]
        roles = sorted(pod["metadata"]["labels"].get("role", "") for pod in pods)
        if roles == ["master", *["worker"] * len(NODES)] and all(pod_settled(pod) for pod in pods):
            break
        states = [
            (p["metadata"]["name"], p["status"].get("phase"), p["status"].get("containerStatuses"))
            for p in pods
        ]
        assert time.monotonic() < deadline, states
        time.sleep(5)
    assert {p["spec"]["nodeName"] for p in pods if p["metadata"]["labels"]["role"] == "worker"} == set(NODES)
    for pod in pods:
        assert pod["spec"]["containers"][0]["image"] == "172.28.4.10:5000/nfd/node-feature-discovery:v0.10.1"
    deadline = time.monotonic() + 120
    for node in NODES:
        while (labels := kube_json("get", "node", node)["metadata"]["labels"]).get(
            "feature.node.kubernetes.io/system-os_release.ID"
        ) != "debian":
            assert time.monotonic() < deadline, (node, labels)
            time.sleep(5)
        assert labels["feature.node.kubernetes.io/system-os_release.VERSION_ID"] == "12", (node, labels)


def test_a_second_run_changes_nothing_and_keeps_a_runtime_added_by_hand(converged):
    on(
        "worker-1",
        "python3 -c \"import json; p='/etc/docker/daemon.json'; d=json.load(open(p)); "
        "d.setdefault('runtimes', {})['nvidia']="
        "{'path': '/usr/bin/nvidia-container-runtime', 'runtimeArgs': []}; "
        "json.dump(d, open(p, 'w'), indent=4)\" && systemctl restart docker",
    )
    result, summary = site()
    assert result.returncode == 0, result.stdout[-3000:]
    assert set(changed(summary).values()) == {0}
    # No new revision of the GPU operator's release either.
    assert {r["name"]: r["revision"] for r in helm_releases()} == {
        "gpu-operator": "1",
        "runai-backend": "1",
        "runai-cluster": "1",
    }
    config = json.loads(on("worker-1", "cat /etc/docker/daemon.json"))
    assert config["runtimes"]["nvidia"]["path"] == "/usr/bin/nvidia-container-runtime"
    assert config["exec-opts"] == ["native.cgroupdriver=systemd"]


def test_a_new_registry_reloads_docker_instead_of_restarting_it(converged):
    """A change of docker's registries (here a site registry of the operator's own, through
    docker_insecure_registries; without the registry's TLS, a site image from a registry not mirrored
    before does the same through role bundle_client): daemon.json gains it and dockerd takes it on a reload
    (filter docker_reload_only): same main PID, kube-proxy's container not restarted, and docker knows the
    registry."""
    node = "worker-2"
    started = "docker inspect --format '{{.State.StartedAt}}' $(docker ps -q --filter name=k8s_kube-proxy)"
    pid, proxy = on(node, "systemctl show docker --property MainPID --value").strip(), on(node, started)
    original = on(node, "cat /etc/docker/daemon.json")
    extra = json.dumps({"docker_insecure_registries": ["reload.example:5000"]})
    try:
        result, summary = run_playbook(LAB_ENV, "playbooks/hosts.yml", "-e", extra, "--limit", node)
        assert result.returncode == 0, result.stdout[-3000:]
        assert summary["hosts"][node]["changed"] >= 1, summary["hosts"]  # daemon.json (and the reload)
        assert (
            "reload.example:5000"
            in json.loads(on(node, "cat /etc/docker/daemon.json"))["insecure-registries"]
        )
        assert on(node, "systemctl show docker --property MainPID --value").strip() == pid
        assert on(node, started) == proxy
        indexes = json.loads(on(node, "docker info --format '{{json .RegistryConfig.IndexConfigs}}'"))
        assert indexes["reload.example:5000"]["Secure"] is False, indexes
    finally:
        # The role merges and never removes: put the file back as it was, and reload.
        on(node, f"cat > /etc/docker/daemon.json <<'EOF'\n{original}EOF\nsystemctl reload docker")


# curl on cp-1 to the control plane's ingress with the domain's name and CA, and its login request.
RUNAI_CURL = (
    f"curl -s --resolve {RUNAI_DOMAIN}:443:{RUNAI_IP} --cacert /etc/kubernetes/appliance/runai-ca.crt"
)
RUNAI_LOGIN = (
    "-d grant_type=password -d client_id=runai -d username=test@run.ai --data-urlencode password={password}"
    f" https://{RUNAI_DOMAIN}/auth/realms/runai/protocol/openid-connect/token"
)


def runai_login(password: str) -> str:
    """The HTTP status of a login of the admin account, from cp-1, through the control plane's ingress.
    Retried for a minute while the ingress refuses connections or answers 5xx: a pod that has just
    turned Ready is not always behind its Service's external IP yet (kube-proxy programs it after)."""
    return on(
        "cp-1",
        f"{RUNAI_CURL} --retry 12 --retry-delay 5 --retry-connrefused -o /dev/null -w '%{{http_code}}'"
        f" {RUNAI_LOGIN.format(password=password)}",
    )


def test_the_run_ai_control_plane_runs_from_the_private_registry_without_the_default_login(converged):
    """runai_backend with the synthetic tarball 2.9.0: the release deployed, every pod Running on images
    pushed into the private registry, the ingress on the external IP with the generated certificate, and
    the well-known admin login refused while the inventory's password logs in."""
    releases = {r["name"]: r for r in helm_releases()}
    assert (releases["runai-backend"]["namespace"], releases["runai-backend"]["chart"]) == (
        "runai-backend",
        "runai-backend-2.9.0",
    )
    assert releases["runai-backend"]["status"] == "deployed"
    pods = kube_json("-n", "runai-backend", "get", "pods")["items"]
    # The backend, its ingress, and its PostgreSQL on a local volume of the runai_system node.
    assert len(pods) == 3
    claim = kube_json("-n", "runai-backend", "get", "pvc", "data-runai-backend-postgresql-0")
    assert (claim["status"]["phase"], claim["spec"]["storageClassName"]) == ("Bound", "runai-local")
    for pod in pods:
        assert pod["status"]["phase"] == "Running", pod["metadata"]["name"]
        assert all(c["ready"] for c in pod["status"]["containerStatuses"])
        assert pod["spec"]["containers"][0]["image"].startswith(f"{RUNAI_IP}:5000/run-ai-prod/")
        assert pod["spec"]["nodeName"] == "worker-2"  # the runai_system group's node
    assert runai_login("password") == "401"
    assert runai_login(RUNAI_PASSWORD) == "200"
    values = on("cp-1", "stat -c '%a %U' /etc/kubernetes/appliance/runai-backend-values.yaml").split()
    assert values == ["600", "root"]


def test_the_run_ai_cluster_is_connected_to_the_control_plane(converged):
    """runai_cluster: the cluster chart 2.9.0 released in namespace runai; its agent is ready only while it
    reaches https://DOMAIN with the control plane's CA (its readiness is the connection), and says so."""
    release = {r["name"]: r for r in helm_releases()}["runai-cluster"]
    assert (release["namespace"], release["chart"], release["status"]) == (
        "runai",
        "runai-cluster-2.9.0",
        "deployed",
    )
    pods = kube_json("-n", "runai", "get", "pods", "-l", "app.kubernetes.io/name=runai-agent")["items"]
    assert len(pods) == 1 and all(c["ready"] for c in pods[0]["status"]["containerStatuses"])
    assert pods[0]["spec"]["containers"][0]["image"] == f"{RUNAI_IP}:5000/run-ai-prod/agent:2.9.0"
    log = kubectl("-n", "runai", "logs", pods[0]["metadata"]["name"]).stdout
    assert f"connected to control plane https://{RUNAI_DOMAIN} (version 2.9.0)" in log


def test_a_bad_run_ai_tarball_or_certificate_strategy_stops_the_run_before_any_change(converged, tmp_path):
    corrupt = tmp_path / "runai-airgapped-2.9.0.tar.gz"
    corrupt.write_bytes(Path(runai_tarball("2.9.0")).read_bytes()[:3_000_000])
    cases = {
        "missing": (
            ["-e", f"runai_airgapped_tar={tmp_path / 'nothing.tar.gz'}"],
            "does not exist on the controller",
        ),
        "corrupt": (["-e", f"runai_airgapped_tar={corrupt}"], "cannot be read"),
        "no certificate": (["-e", "runai_tls_generate=false"], "No certificate for runai.labsite.example"),
    }
    for case, (extra, expected) in cases.items():
        result, summary = site(*extra)
        assert result.returncode != 0, case
        message = " ".join(summary["failures"][0]["message"].split())
        assert "nothing was changed" in message and expected in message, (case, message)
        assert set(changed(summary).values()) == {0}, (case, summary["hosts"])


# `--check` on the converged lab changes nothing: the next three tests prove it, each running site.yml the
# way a site would (a controller installed from the bundle, the built collection, its execution environment).
def test_a_controller_installed_from_the_bundle_alone_runs_check_on_the_lab_with_no_change(
    converged, tmp_path
):
    """Issue 23's air-gapped controller: in a container of the lab's node image (Debian 12's python3, no
    pip, no python3-venv) with no network and the bundle read-only, controller/install.sh makes a working
    `appliance`; then, on the lab's network, that controller's `appliance bootstrap --check` changes
    nothing. The lab's state directory (its SSH key, known_hosts, Run:ai inputs and generated CA, kept per
    inventory directory) and the inventory are mounted where they are here; the playbooks and roles come
    from the bundle, not from this checkout (the container's working directory is /)."""
    image = run_cli("lab", "image", timeout=3600)
    assert image.returncode == 0, image.stderr
    tag = image.stdout.strip()
    bundle = Path.home() / ".local/state/appliance/bundle"
    venv = tmp_path / "controller"
    venv.mkdir()
    base = ["docker", "run", "--rm", "--entrypoint", "/bin/sh", "-v", f"{venv}:/opt/controller"]
    installed = subprocess.run(
        [*base, "--network", "none", "-v", f"{bundle}:/bundle:ro", tag, "-c",
         "if command -v pip || command -v pip3 || python3 -c 'import ensurepip' 2>/dev/null; then "
         "echo 'the image has pip or ensurepip: not the bare python3 this test needs' >&2; exit 9; fi; "
         "/bundle/controller/install.sh /opt/controller/v && /opt/controller/v/bin/appliance --version"],
        capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    assert installed.returncode == 0, installed.stdout[-3000:] + installed.stderr[-3000:]
    assert installed.stdout.strip().splitlines()[-1].startswith("appliance 0.1.0 (ansible-core 2.19.14"), (
        installed.stdout
    )

    state = Path.home() / ".local/state/appliance"
    inventory = PROJECT / "inventories" / "labsite" / "hosts.yml"
    checked = subprocess.run(
        [*base, "--network", "appliance-labsite", "-v", f"{state}:{state}",
         "-v", f"{inventory}:{inventory}:ro", "-v", f"{RUNAI_VARS}:{RUNAI_VARS}:ro", "-w", "/", tag, "-c",
         f"/opt/controller/v/bin/appliance bootstrap -i {inventory} -e @{RUNAI_VARS} --check --json"],
        capture_output=True, text=True, timeout=1800, check=False,
    )  # fmt: skip
    assert checked.returncode == 0, checked.stdout[-4000:] + checked.stderr[-3000:]
    summary = json.loads(checked.stdout)
    assert set(changed(summary).values()) == {0}, summary["hosts"]
    assert set(summary["hosts"]) == set(NODES)


def test_a_playbook_outside_the_repository_runs_the_installed_collection_with_no_change(converged, tmp_path):
    """Issue 23's collection: `ansible-galaxy collection build` of this checkout, installed into an empty
    collections path; a playbook in a directory of its own (no ansible.cfg, no roles/ or plugins/ beside
    it) imports appliance.runai.site, and plain ansible-playbook runs it in --check on the converged lab
    with no change. The collections it depends on are those installed beside ansible-core."""
    bin_dir = Path(sys.executable).parent
    galaxy = str(bin_dir / "ansible-galaxy")
    built = subprocess.run(
        [galaxy, "collection", "build", str(PROJECT), "--output-path", str(tmp_path)],
        cwd=tmp_path, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert built.returncode == 0, built.stdout + built.stderr
    (artifact,) = tmp_path.glob("appliance-runai-*.tar.gz")
    collections = tmp_path / "collections"
    installed = subprocess.run(
        [galaxy, "collection", "install", str(artifact), "--no-deps", "--force",
         "--collections-path", str(collections)],
        cwd=tmp_path, capture_output=True, text=True, check=False,
    )  # fmt: skip
    # Run from this checkout, ansible-galaxy would see the collection in ./collections (ansible.cfg) and
    # install nothing; from tmp_path, with --force, the artifact is what the playbook runs.
    assert (collections / "ansible_collections/appliance/runai/playbooks/site.yml").is_file(), (
        installed.stdout
    )
    assert installed.returncode == 0, installed.stdout + installed.stderr
    site = tmp_path / "site"
    site.mkdir()
    (site / "appliance.yml").write_text(
        "- name: The appliance, from the collection\n"
        "  ansible.builtin.import_playbook: appliance.runai.site\n"
    )
    env = {
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "HOME": str(Path.home()),
        "ANSIBLE_COLLECTIONS_PATH": str(collections),
        "ANSIBLE_STDOUT_CALLBACK": "json",
        "ANSIBLE_LOAD_CALLBACK_PLUGINS": "1",
        "ANSIBLE_FORKS": "10",
    }
    inventory = PROJECT / "inventories" / "labsite" / "hosts.yml"
    checked = subprocess.run(
        [str(bin_dir / "ansible-playbook"), "-i", str(inventory), "appliance.yml", "-e", f"@{RUNAI_VARS}",
         "--check"],
        cwd=site, env=env, capture_output=True, text=True, timeout=1800, check=False,
    )  # fmt: skip
    assert checked.returncode == 0, checked.stdout[-4000:] + checked.stderr[-3000:]
    stats = json.loads(checked.stdout)["stats"]
    assert set(stats) == set(NODES), stats
    assert {host: result["changed"] for host, result in stats.items()} == dict.fromkeys(NODES, 0), stats
    # The roles ran from the installed copy, not from this checkout.
    plays = json.loads(checked.stdout)["plays"]
    assert any(
        "ansible_collections/appliance/runai/roles/" in (task["task"].get("path") or "")
        for play in plays
        for task in play["tasks"]
    )


def test_ansible_navigator_runs_site_in_the_bundles_execution_environment_with_no_change(converged, tmp_path):
    """Issue 23's execution environment: the image in the bundle (controller/execution-environment.tar,
    `docker load`ed as a site with no registry would) holds the collection and everything its plays need
    on the controller. ansible-navigator runs appliance.runai.site in it (--mode stdout --eei, nothing
    pulled) in --check against the converged lab: no change. As an AWX job would, it gets the controller-
    side state (the lab's SSH key, the Run:ai CA and password, the bundle) through appliance_state_dir, a
    directory mounted into the container."""
    state = Path.home() / ".local" / "state" / "appliance"
    archive = state / "bundle" / "controller" / "execution-environment.tar"
    loaded = subprocess.run(
        ["docker", "load", "--input", str(archive)], capture_output=True, text=True, check=False
    )
    assert loaded.returncode == 0, loaded.stderr
    (image,) = [
        line.split("Loaded image: ", 1)[1] for line in loaded.stdout.splitlines() if "Loaded image: " in line
    ]
    assert image.startswith("appliance-ee:"), loaded.stdout
    project = tmp_path / "project"
    project.mkdir()
    (project / "appliance.yml").write_text(
        "- name: The appliance, from the collection in the execution environment\n"
        "  ansible.builtin.import_playbook: appliance.runai.site\n"
    )
    (project / "runai.yml").write_text(RUNAI_VARS.read_text())
    # The lab's own inventory (navigator mounts it): its directory names the Run:ai certificate's files.
    inventory = PROJECT / "inventories" / "labsite" / "hosts.yml"
    artifact = tmp_path / "artifact.json"
    navigator = str(Path(sys.executable).parent / "ansible-navigator")
    checked = subprocess.run(
        [navigator, "run", "appliance.yml", "--mode", "stdout", "--execution-environment", "true",
         "--container-engine", "docker", "--execution-environment-image", image, "--pull-policy", "never",
         "--playbook-artifact-enable", "true", "--playbook-artifact-save-as", str(artifact),
         "--log-file", str(tmp_path / "navigator.log"),
         "--execution-environment-volume-mounts", f"{state}:{state}",
         "--container-options=--network=host",
         "--set-environment-variable", "ANSIBLE_FORKS=10",
         "--inventory", str(inventory),
         "-e", "@runai.yml", "-e", f"appliance_state_dir={state}", "--check"],
        cwd=project, env={"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "HOME": str(Path.home())},
        capture_output=True, text=True, timeout=1800, check=False,
    )  # fmt: skip
    assert checked.returncode == 0, checked.stdout[-4000:] + checked.stderr[-3000:]
    report = json.loads(artifact.read_text())
    assert report["status"] == "successful", report["status"]
    tasks = [task for play in report["plays"] for task in play["tasks"]]
    assert {task["host"] for task in tasks} == set(NODES)
    changed_tasks = [(task["host"], task["task"]) for task in tasks if task["__changed"]]
    assert changed_tasks == [], changed_tasks
    # The plays ran inside the image: its collection (nothing of this checkout is mounted but the inventory).
    assert all(
        task["task_path"].startswith("/usr/share/ansible/collections/ansible_collections/appliance/runai/")
        for task in tasks
    ), {task["task_path"] for task in tasks}


def release_values(name: str, namespace: str) -> dict:
    return json.loads(
        on("cp-1", f"helm --kubeconfig /etc/kubernetes/admin.conf get values {name} -n {namespace} -o json")
    )


def test_an_upgrade_to_a_newer_tarball_keeps_every_value_and_a_second_one_changes_nothing(converged):
    """playbooks/upgrade.yml from the synthetic 2.9.0 to 2.10.0: a value an operator set by hand (helm
    --reuse-values --set) survives with every other value; the pods run the new images from the private
    registry; the admin password stays; a second run is a no-op. After it the lab runs 2.10.0."""
    on(
        "cp-1",
        "helm --kubeconfig /etc/kubernetes/admin.conf upgrade runai-backend"
        " /var/lib/appliance/runai/2.9.0/deploy/runai-backend-2.9.0.tgz -n runai-backend"
        " --reuse-values --set operatorNote=kept --wait >/dev/null",
    )
    before = {
        name: release_values(name, ns)
        for name, ns in (("runai-backend", "runai-backend"), ("runai-cluster", "runai"))
    }
    assert before["runai-backend"]["operatorNote"] == "kept"
    upgrade = ("upgrade", "-e", f"@{RUNAI_VARS}", "-e", f"runai_airgapped_tar={runai_tarball('2.10.0')}")
    result, summary = run_playbook(LAB_ENV, *upgrade)
    assert result.returncode == 0, result.stdout[-4000:]
    releases = {r["name"]: r for r in helm_releases()}
    assert releases["runai-backend"]["chart"] == "runai-backend-2.10.0"
    assert releases["runai-cluster"]["chart"] == "runai-cluster-2.10.0"
    after = {
        name: release_values(name, ns)
        for name, ns in (("runai-backend", "runai-backend"), ("runai-cluster", "runai"))
    }
    assert after == before
    images = kubectl(
        "get",
        "pods",
        "-A",
        "-l",
        "app.kubernetes.io/instance in (runai-backend,runai-cluster)",
        "-o",
        "jsonpath={range .items[*]}{.spec.containers[0].image}{'\\n'}{end}",
    ).stdout.split()
    assert sorted(images) == [
        f"{RUNAI_IP}:5000/run-ai-prod/{name}:2.10.0"
        for name in ("agent", "backend", "nginx-ingress-controller", "postgresql")
    ]
    assert runai_login("password") == "401"
    assert runai_login(RUNAI_PASSWORD) == "200"
    revisions = {r["name"]: r["revision"] for r in helm_releases()}
    again, summary = run_playbook(LAB_ENV, *upgrade)
    assert again.returncode == 0, again.stdout[-4000:]
    assert set(changed(summary).values()) == {0}
    assert {r["name"]: r["revision"] for r in helm_releases()} == revisions


KUBEFLOW_CRD = Path(__file__).parent / "fixtures" / "kubeflow-poddefault-crd.yaml"
MLFLOW_PLACEHOLDERS = {
    "{replaced with MLflow Project name}": "mlflow-demo",
    "{replaced with URI of Docker image created during Project execution}": "registry.local/mlflow/team-a:1",
    "{replaced with MLflow Project entry point command}": "python",
}


def test_kubeflow_pod_defaults_and_mlflow_templates_put_work_in_run_ai_projects(converged, tmp_path):
    """integrations.yml (role runai_integrations): PodDefaults for whole GPUs and fractions in a Kubeflow
    namespace, and an MLflow job template the API server accepts with the Run:ai scheduler in the project's
    namespace. Kubeflow cannot run here: its PodDefault CRD (tests/lab/fixtures) stands in for it."""
    kubectl("apply", "-f", str(KUBEFLOW_CRD))
    kubectl("create", "namespace", "kubeflow-alice")
    kubectl("create", "namespace", "runai-team-a")
    settings = tmp_path / "integrations.yml"
    settings.write_text(
        json.dumps(
            {
                "runai_integrations_kubeflow_namespaces": [
                    {"namespace": "kubeflow-alice", "project": "team-a", "fractions": [0.5]}
                ],
                "runai_integrations_mlflow_projects": [{"project": "team-a", "gpus": 1}],
            }
        )
    )
    result, summary = run_playbook(LAB_ENV, "integrations", "-e", f"@{settings}")
    assert result.returncode == 0, result.stdout[-3000:]
    defaults = {
        item["metadata"]["name"]: item["spec"]
        for item in kube_json("-n", "kubeflow-alice", "get", "poddefaults")["items"]
    }
    assert set(defaults) == {"runai-non-fractional", "runai-0-5-gpu"}
    assert defaults["runai-non-fractional"]["env"] == [{"name": "RUNAI_PROJECT", "value": "team-a"}]
    assert defaults["runai-0-5-gpu"]["env"] == [
        {"name": "RUNAI_PROJECT", "value": "team-a"},
        {"name": "RUNAI_GPU_FRACTION", "value": "0.5"},
    ]
    for name, spec in defaults.items():
        assert spec["selector"] == {"matchLabels": {name: "true"}}
    template = on("cp-1", "cat /etc/runai/mlflow/team-a/kubernetes_job_template.yaml")
    for placeholder, value in MLFLOW_PLACEHOLDERS.items():
        template = template.replace(placeholder, value)
    job = json.loads(kubectl("create", "--dry-run=server", "-o", "json", "-f", "-", stdin=template).stdout)
    assert job["metadata"]["namespace"] == "runai-team-a"
    assert job["spec"]["template"]["spec"]["schedulerName"] == "runai-scheduler"
    config = json.loads(on("cp-1", "cat /etc/runai/mlflow/team-a/kubernetes_config.json"))
    assert config["kube-job-template-path"] == "/etc/runai/mlflow/team-a/kubernetes_job_template.yaml"
    again, summary = run_playbook(LAB_ENV, "integrations", "-e", f"@{settings}")
    assert again.returncode == 0 and set(changed(summary).values()) == {0}, again.stdout[-3000:]


# Last: these restart the API server. Researcher authentication (playbooks/researchers.yml, role
# apiserver_oidc). The API server fetches the issuer's discovery document only when a token comes, so an
# issuer that does not exist here still lets it start.
ISSUER = "https://runai.lab.example/auth/realms/runai"
APISERVER_MANIFEST = "/etc/kubernetes/manifests/kube-apiserver.yaml"


RESEARCHER = "alice"  # an account on cp-1, the lab's jumpbox (made by the fixture)


def researchers(*extra: str) -> tuple[subprocess.CompletedProcess[str], dict]:
    return run_playbook(
        LAB_ENV,
        "playbooks/researchers.yml",
        "-e",
        f"@{RUNAI_VARS}",
        "-e",
        json.dumps({"runai_cli_researchers": [RESEARCHER]}),
        *extra,
    )


def apiserver_command() -> list[str]:
    pod = kube_json("-n", "kube-system", "get", "pod", "kube-apiserver-cp-1")
    return pod["spec"]["containers"][0]["command"]


def test_the_api_server_authenticates_researchers_with_the_oidc_flags(converged):
    result, summary = researchers("-e", f"apiserver_oidc_issuer_url={ISSUER}")
    assert result.returncode == 0, result.stdout[-3000:]
    assert changed(summary)["cp-1"] > 0
    command = apiserver_command()
    for flag in (
        f"--oidc-issuer-url={ISSUER}",
        "--oidc-client-id=runai",
        "--oidc-username-claim=email",
        "--oidc-groups-claim=groups",
        "--oidc-username-prefix=-",
    ):
        assert flag in command, command
    assert len(kube_json("get", "nodes")["items"]) == len(NODES)
    again, summary = researchers("-e", f"apiserver_oidc_issuer_url={ISSUER}")
    assert again.returncode == 0, again.stdout[-3000:]
    assert set(changed(summary).values()) == {0}  # validate.yml runs on every node


def test_researchers_get_the_run_ai_cli_with_completion_and_a_kubeconfig_of_the_run_ai_user(converged):
    """runai_cli on the jumpbox (cp-1), from researchers.yml's run above: the tarball's CLI, its bash
    completion in login shells, and the researcher's own kubeconfig, whose user is the Run:ai
    authenticated user: kubectl asks for a Run:ai login instead of using any admin credential."""
    as_researcher = f"su - {RESEARCHER} -c"
    assert on("cp-1", f"{as_researcher} 'runai version'").strip() == "Version: 2.9.0"
    assert on("cp-1", f"{as_researcher} 'complete -p runai'").strip() == "complete -F _runai runai"
    assert on("cp-1", f"stat -c '%a %U' ~{RESEARCHER}/.kube/config").split() == ["600", RESEARCHER]
    config = yaml.safe_load(on("cp-1", f"cat ~{RESEARCHER}/.kube/config"))
    assert config["clusters"][0]["cluster"]["server"] == f"https://{RUNAI_IP}:6443"
    user = config["users"][0]
    assert user["name"] == "runai-authenticated-user"
    assert user["user"]["auth-provider"]["name"] == "oidc"
    assert user["user"]["auth-provider"]["config"]["idp-issuer-url"] == ISSUER
    assert on("cp-1", f"{as_researcher} 'runai whoami'").strip() == "runai-authenticated-user"
    refused = on("cp-1", f"{as_researcher} 'kubectl get nodes 2>&1 || true'")
    assert "No valid id-token" in refused, refused


def test_an_issuer_the_api_server_refuses_puts_the_previous_manifest_back(converged):
    """%zz is no URL escape: the API server exits at start. The role waits, restores and fails clearly."""
    before = on("cp-1", f"cat {APISERVER_MANIFEST}")
    broken = "apiserver_oidc_issuer_url=https://runai.lab.example/%zz"
    result, _ = researchers("-e", broken, "-e", "apiserver_oidc_wait_timeout=90")
    assert result.returncode != 0
    assert "the previous manifest is back" in result.stdout, result.stdout[-3000:]
    assert on("cp-1", f"cat {APISERVER_MANIFEST}") == before
    assert f"--oidc-issuer-url={ISSUER}" in apiserver_command()
    assert len(kube_json("get", "nodes")["items"]) == len(NODES)


def test_an_issuer_that_is_not_https_is_refused_before_any_change(converged):
    before = on("cp-1", f"cat {APISERVER_MANIFEST}")
    result, summary = researchers(
        "-e", "apiserver_oidc_issuer_url=http://runai.lab.example/auth/realms/runai"
    )
    assert result.returncode != 0
    assert "is not an https URL" in result.stdout, result.stdout[-3000:]
    assert set(changed(summary).values()) == {0}  # validate.yml runs on every node
    assert on("cp-1", f"cat {APISERVER_MANIFEST}") == before


# ----------------------------------------------------------------------------- certificates (issue 21)
KUBEADM_CERTIFICATES = (
    "apiserver",
    "apiserver-kubelet-client",
    "apiserver-etcd-client",
    "front-proxy-client",
    "etcd-server",
    "etcd-peer",
    "etcd-healthcheck-client",
    "admin.conf",
    "controller-manager.conf",
    "scheduler.conf",
)
CERTIFICATE_AUTHORITIES = ("ca", "front-proxy-ca", "etcd-ca")


def certs(*args: str) -> tuple[subprocess.CompletedProcess[str], dict]:
    result = lab_cli("certs", *args, "--json", "-e", f"@{RUNAI_VARS}", timeout=1200)
    try:
        return result, json.loads(result.stdout)
    except json.JSONDecodeError:
        return result, {}


def certificates(summary: dict) -> dict[tuple[str, str], dict]:
    return {(c["node"], c["name"]): c for c in summary["data"]["certificates"]}


def served_serial() -> str:
    """The serial of the certificate the API server serves on cp-1:6443, as this machine sees it."""
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    with (
        socket.create_connection((RUNAI_IP, 6443), timeout=10) as raw,
        context.wrap_socket(raw) as tls,
    ):
        pem = ssl.DER_cert_to_PEM_cert(tls.getpeercert(binary_form=True))
    text = subprocess.run(
        ["openssl", "x509", "-noout", "-serial"], input=pem, capture_output=True, text=True, check=True
    )
    return text.stdout.strip().removeprefix("serial=").upper()


def runai_served_serial() -> str:
    """The serial of the certificate the Run:ai control plane's ingress serves for its domain, from cp-1."""
    serial = on(
        "cp-1",
        f"openssl s_client -connect {RUNAI_IP}:443 -servername {RUNAI_DOMAIN} </dev/null 2>/dev/null"
        " | openssl x509 -noout -serial",
    )
    return serial.strip().removeprefix("serial=").upper()


CERTS_WORKLOAD = f"""
apiVersion: apps/v1
kind: Deployment
metadata: {{name: certs-workload, namespace: default}}
spec:
  replicas: 2
  selector: {{matchLabels: {{app: certs-workload}}}}
  template:
    metadata: {{labels: {{app: certs-workload}}}}
    spec:
      containers:
        - {{name: pause, image: "{RUNAI_IP}:5000/pause:3.6"}}
"""


def workload_pods() -> dict[str, tuple[str, int]]:
    """A user's workload (CERTS_WORKLOAD, 2 pods) and every other pod but those a renewal restarts on purpose
    - the control-plane static pods, and the Run:ai control plane's, which roll to serve its re-issued
    certificate - and the two upstream components that exit during the API server's restart (below):
    UID -> (name, its containers' restarts)."""
    static = ("etcd-", "kube-apiserver-", "kube-controller-manager-", "kube-scheduler-")
    # node-feature-discovery v0.10.1's worker exits when nfd-master cannot label its node, which happens
    # when its labelling round falls inside the API server's restart (pkg/nfd-client/worker: "failed to
    # advertise labels" returns from the worker's loop); the kubelet restarts it.
    upstream_exits = ("gpu-operator-node-feature-discovery-worker-",)

    # The GPU operator v1.11.1 runs with --leader-elect and controller-runtime's 10 s renew deadline (its
    # chart sets no other): when the API server is away longer, it loses the lease and exits, and the
    # kubelet restarts it (CI saw it once, on this 2-core machine). roles/certs/README.md says both.
    def exits_by_design(pod: dict) -> bool:
        labels = pod["metadata"].get("labels") or {}
        return pod["metadata"]["name"].startswith(upstream_exits) or (
            pod["metadata"]["namespace"] == "gpu-operator" and labels.get("app") == "gpu-operator"
        )

    pods = kube_json("get", "pods", "--all-namespaces")["items"]
    return {
        pod["metadata"]["uid"]: (
            f"{pod['metadata']['namespace']}/{pod['metadata']['name']}",
            sum(s.get("restartCount", 0) for s in pod["status"].get("containerStatuses", [])),
        )
        for pod in pods
        if not (pod["metadata"]["namespace"] == "kube-system" and pod["metadata"]["name"].startswith(static))
        and pod["metadata"]["namespace"] != "runai-backend"
        and not exits_by_design(pod)
    }


def test_certs_status_lists_every_certificate_with_its_days_left_and_fails_within_the_warning(converged):
    result, summary = certs("status")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr
    found = certificates(summary)
    for name in KUBEADM_CERTIFICATES + CERTIFICATE_AUTHORITIES + ("kubelet-client",):
        assert ("cp-1", name) in found, sorted(found)
    for worker in ("worker-1", "worker-2"):
        assert {name for node, name in found if node == worker} == {"ca", "kubelet-client"}
        assert found[(worker, "kubelet-client")]["subject"] == f"CN=system:node:{worker},O=system:nodes"
    # The Run:ai control plane's, made by role runai_backend on the controller.
    assert found[("controller", "runai-domain")]["kind"] == "appliance"
    assert found[("controller", "runai-domain")]["subject"] == f"CN={RUNAI_DOMAIN}"
    assert found[("controller", "runai-ca")]["kind"] == "appliance"
    for row in found.values():
        assert row["not_after"] and row["serial"] and row["issuer"] and row["subject"]
        assert 300 < row["days_left"] < 3660, row
        assert not row["expiring"]
    assert found[("cp-1", "apiserver")]["issuer"] == "CN=kubernetes"
    assert any(line.startswith("NODE") for line in summary["report"])

    warned, summary = certs("status", "--warn-days", "400")
    assert warned.returncode == 1
    [failure] = summary["failures"]
    assert "expire within 400 days" in failure["message"]
    for name in (
        "cp-1 apiserver ",
        "cp-1 admin.conf ",
        "worker-1 kubelet-client ",
    ):
        assert name in failure["message"], failure["message"]
    assert "cp-1 ca " not in failure["message"]  # ten years
    assert "controller runai-domain " not in failure["message"]  # 825 days (runai_backend_tls_valid_days)


def test_certs_renew_force_renews_every_kubeadm_certificate_and_keeps_the_cluster_running(converged):
    _, before = certs("status")
    old = certificates(before)
    served_before = served_serial()
    kubectl("apply", "-f", "-", stdin=CERTS_WORKLOAD)
    kubectl("rollout", "status", "deployment/certs-workload", "--timeout=120s")
    pods_before = workload_pods()

    result, summary = certs("renew", "--force")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr
    assert changed(summary)["cp-1"] > 0
    assert any("restarted, one at a time: etcd, kube-apiserver" in line for line in summary["report"])

    _, after = certs("status")
    new = certificates(after)
    for name in KUBEADM_CERTIFICATES:
        assert new[("cp-1", name)]["not_after"] > old[("cp-1", name)]["not_after"], name
        assert new[("cp-1", name)]["serial"] != old[("cp-1", name)]["serial"], name
    for name in CERTIFICATE_AUTHORITIES:  # CAs are never touched
        assert new[("cp-1", name)]["serial"] == old[("cp-1", name)]["serial"], name
        assert new[("cp-1", name)]["not_after"] == old[("cp-1", name)]["not_after"], name
    # The Run:ai certificate the toolkit made: re-issued from its CA (unchanged), and served by the ingress.
    assert new[("controller", "runai-domain")]["not_after"] > old[("controller", "runai-domain")]["not_after"]
    assert new[("controller", "runai-ca")]["serial"] == old[("controller", "runai-ca")]["serial"]
    assert any("the Run:ai certificate for" in line and "was re-issued" in line for line in summary["report"])
    assert runai_served_serial() == new[("controller", "runai-domain")]["serial"]
    assert runai_login(RUNAI_PASSWORD) == "200"
    assert served_serial() == new[("cp-1", "apiserver")]["serial"] != served_before
    assert "cp-1: last renewal " in "\n".join(after["report"])
    assert "renewed 10 certificate(s), restarted etcd, kube-apiserver" in "\n".join(after["report"])

    # The controller's copy (certs_admin_kubeconfig_fetch, the lab's admin.conf) and the Ansible user's
    # on cp-1 are the renewed admin.conf, and kubectl works with the controller's copy as it is.
    admin = on("cp-1", "cat /etc/kubernetes/admin.conf")
    copy = Path.home() / ".local/state/appliance" / LAB_ENV["APPLIANCE_LAB_NAME"] / "admin.conf"
    assert copy.read_text() == admin and copy.stat().st_mode & 0o777 == 0o600
    assert on("cp-1", "cat ~ansible/.kube/config") == admin
    nodes = subprocess.run(
        [
            str(Path.home() / ".local/state/appliance/bundle/bin/kubectl"),
            "--kubeconfig",
            str(copy),
            "get",
            "nodes",
            "--output",
            "json",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    for node in json.loads(nodes.stdout)["items"]:
        ready = [c["status"] for c in node["status"]["conditions"] if c["type"] == "Ready"]
        assert ready == ["True"], node["metadata"]["name"]
    # The user's workload: the same pods, never restarted.
    after_pods = workload_pods()
    workload = {uid: pod for uid, pod in pods_before.items() if "/certs-workload-" in pod[0]}
    assert len(workload) == 2 and all(after_pods.get(uid) == pod for uid, pod in workload.items()), after_pods
    # No other pod restarted a container (a pod replaced by its controller is listed, for the record).
    restarted = [
        pod for uid, pod in after_pods.items() if uid in pods_before and pod[1] > pods_before[uid][1]
    ]
    assert restarted == [], restarted
    # The upstream components that may exit during the window (workload_pods) are back, on every node.
    for workload_name in ("daemonset/gpu-operator-node-feature-discovery-worker", "deployment/gpu-operator"):
        kubectl("--namespace", "gpu-operator", "rollout", "status", workload_name, "--timeout=300s")
    kubectl("delete", "deployment", "certs-workload")

    again, summary = certs("renew")
    assert again.returncode == 0, again.stdout[-3000:]
    assert set(changed(summary).values()) == {0}
    assert any("nothing is due within 90 days" in line for line in summary["report"])


def test_the_renewal_timer_runs_monthly_on_the_control_plane(converged):
    timers = on("cp-1", "systemctl list-timers --all --no-pager appliance-certs-renew.timer")
    assert "appliance-certs-renew.timer" in timers and "appliance-certs-renew.service" in timers
    assert on("cp-1", "systemctl is-enabled appliance-certs-renew.timer").strip() == "enabled"
    assert "OnCalendar=*-*-01 03:00:00" in on("cp-1", "systemctl cat appliance-certs-renew.timer")
    # What the timer runs, by hand: nothing is due, and the result is recorded for `certs status`.
    on("cp-1", "systemctl start appliance-certs-renew.service")
    journal = on("cp-1", "journalctl -u appliance-certs-renew.service --no-pager -n 20")
    assert "appliance-certs: nothing is due" in journal, journal
    _, summary = certs("status")
    assert "cp-1: last check " in "\n".join(summary["report"])


# --- Backup and restore (issue 21): the archive, its refusals, and a disaster drill on cp-1 --------------

BACKUP_OUT = Path(tempfile.gettempdir()) / "appliance-test-site-backups"
BACKUP_PROGRAM = Path(__file__).resolve().parents[2] / "roles" / "backup" / "files" / "appliance_backup.py"
PASSPHRASE_FILE = Path.home() / ".local/state/appliance" / LAB_ENV["APPLIANCE_LAB_NAME"] / "backup-passphrase"
CRI_SOCKET = "unix:///var/run/dockershim.sock"


def appliance_json(*args: str, timeout: float = 1800) -> tuple[subprocess.CompletedProcess[str], dict]:
    result = lab_cli(*args, "--json", "-e", f"@{RUNAI_VARS}", timeout=timeout)
    try:
        return result, json.loads(result.stdout)
    except json.JSONDecodeError:
        return result, {}


def backup_program():
    """roles/backup/files/appliance_backup.py as a module: the tests read archives as the node does."""
    spec = importlib.util.spec_from_file_location("appliance_backup_lab", BACKUP_PROGRAM)
    module = importlib.util.module_from_spec(spec)
    sys.modules["appliance_backup_lab"] = module
    spec.loader.exec_module(module)
    return module


def runai_api(method: str, path: str, body: dict | None = None) -> tuple[int, str]:
    """A call of the Run:ai control plane's API as its admin, from cp-1 through the ingress: status, body."""
    login = on("cp-1", f"{RUNAI_CURL} {RUNAI_LOGIN.format(password=RUNAI_PASSWORD)}")
    token = json.loads(login)["access_token"]
    data = f" -H 'Content-Type: application/json' -d '{json.dumps(body)}'" if body is not None else ""
    answer = on(
        "cp-1",
        f"{RUNAI_CURL} -w '\\n%{{http_code}}' -X {method} -H 'Authorization: Bearer {token}'{data}"
        f" https://{RUNAI_DOMAIN}{path}",
    )
    text, _, status = answer.rpartition("\n")
    return int(status), text


@pytest.fixture(scope="module")
def first_backup(converged):
    """`appliance backup --out DIR` on the converged lab, before anything below changes it."""
    BACKUP_OUT.mkdir(exist_ok=True)
    for old in BACKUP_OUT.glob("*"):
        old.unlink()
    status, _ = runai_api("POST", "/v1/k8s/projects", {"name": "drill-project", "gpus": 2})
    assert status == 201, status
    kubectl("create", "configmap", "drill-config", "--from-literal=answer=42")
    result, summary = appliance_json("backup", "--out", str(BACKUP_OUT))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr
    return summary


def test_the_backup_timer_runs_daily_on_the_first_control_plane_node(converged):
    timers = on("cp-1", "systemctl list-timers --all --no-pager")
    assert "appliance-backup.timer" in timers and "appliance-certs-renew.timer" in timers, timers
    assert on("cp-1", "systemctl is-enabled appliance-backup.timer").strip() == "enabled"
    assert "OnCalendar=*-*-* 02:30:00" in on("cp-1", "systemctl cat appliance-backup.timer")
    for node in ("worker-1", "worker-2"):  # the first control-plane node only
        assert (
            on(node, "systemctl list-timers --all --no-pager | grep -c appliance-backup || true").strip()
            == "0"
        )


def test_a_backup_holds_what_a_lost_control_plane_needs_and_never_shows_the_passphrase(first_backup):
    taken = first_backup["data"]["backup"]
    archive = BACKUP_OUT / taken["name"]
    assert taken["name"].startswith("labsite-") and taken["name"].endswith(".backup")
    assert archive.stat().st_mode & 0o777 == 0o600
    assert on("cp-1", f"stat -c '%a %U' /var/backups/appliance/{taken['name']}").split() == ["600", "root"]
    assert on("cp-1", "stat -c '%a' /var/backups/appliance /etc/appliance/backup/passphrase").split() == [
        "700",
        "600",
    ]
    assert taken["etcd_keys"] > 100 and taken["runai_database"] is True
    assert {"gpu-operator/gpu-operator", "runai-backend/runai-backend", "runai/runai-cluster"} <= set(
        taken["helm_releases"]
    )
    passphrase = PASSPHRASE_FILE.read_text().strip()
    assert passphrase not in Path(first_backup["log"]).read_text()
    assert passphrase.encode() not in archive.read_bytes()

    program = backup_program()
    with tempfile.TemporaryDirectory() as work:
        manifest, _ = program.verify(archive, passphrase.encode(), Path(work))
    members = set(manifest["members"])
    for member in (
        "etcd/snapshot.db",
        "pki/ca.key",
        "pki/etcd/ca.key",
        "kubeadm/cluster-configuration.yaml",
        "kubeadm/kubeadm-config.yaml",
        "kubelet/config.yaml",
        "helm/runai-backend/runai-backend.values.yaml",
        "runai/database.dump",
    ):
        assert member in members, member
    assert manifest["etcd"]["status"]["totalKey"] == taken["etcd_keys"]
    assert manifest["etcd"]["member"] == "cp-1"
    assert len(manifest["bundle_manifest_sha256"]) == 64
    assert len(manifest["inventory_sha256"]) == 64
    assert manifest["ca_sha256"] == hashlib_sha256(on("cp-1", "cat /etc/kubernetes/pki/ca.crt"))


def hashlib_sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def test_backup_list_and_verify_show_the_archive_on_the_node_and_here(first_backup):
    name = first_backup["data"]["backup"]["name"]
    result, summary = appliance_json("backup", "list", "--out", str(BACKUP_OUT))
    assert result.returncode == 0, result.stdout[-3000:]
    archives = summary["data"]["archives"]
    assert name in [a["name"] for a in archives["cp-1"]] and name in [
        a["name"] for a in archives["controller"]
    ]
    result, summary = appliance_json("backup", "verify", str(BACKUP_OUT / name))
    assert result.returncode == 0, result.stdout[-3000:]
    assert any(line.startswith(f"{name}: sound") for line in summary["report"]), summary["report"]
    # By its name alone: the node's copy.
    result, _ = appliance_json("backup", "verify", name)
    assert result.returncode == 0, result.stdout[-3000:]


def test_a_bad_archive_or_passphrase_is_refused_with_one_clear_line(first_backup, tmp_path):
    name = first_backup["data"]["backup"]["name"]
    passphrase = PASSPHRASE_FILE.read_text().strip().encode()
    program = backup_program()
    # One byte altered in the middle of the etcd snapshot's content (CTR mode: the same byte of the tar).
    archive = BACKUP_OUT / name
    _, header_length = program.read_header(archive)
    program.decrypt(archive, header_length, passphrase, tmp_path / "plain.tar")
    with tarfile.open(tmp_path / "plain.tar") as tar:
        member = tar.getmember("etcd/snapshot.db")
    altered = tmp_path / name
    data = bytearray(archive.read_bytes())
    data[header_length + 16 + member.offset_data + member.size // 2] ^= 0x01
    altered.write_bytes(bytes(data))
    result, summary = appliance_json("backup", "verify", str(altered))
    assert result.returncode == 1
    assert "member etcd/snapshot.db does not match its sha256" in json.dumps(summary["failures"])
    result, summary = appliance_json("restore", str(altered), "--force")
    assert result.returncode == 1 and set(changed(summary).values()) == {0}
    assert "member etcd/snapshot.db does not match its sha256" in json.dumps(summary["failures"])
    # The wrong passphrase.
    result, summary = appliance_json(
        "backup", "verify", str(archive), "-e", "backup_passphrase=not-the-lab-passphrase"
    )
    assert result.returncode == 1
    assert "the passphrase does not open" in json.dumps(summary["failures"])
    # Another cluster's archive: the same members, but the CA (and its sha256) of another cluster.
    with tempfile.TemporaryDirectory() as work:
        manifest, tar_path = program.verify(archive, passphrase, Path(work))
        other = tmp_path / "other"
        other.mkdir()
        collector = program.Collector(other / "archive.tar")
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", str(other / "ca.key"), "-out", str(other / "ca.crt"), "-subj", "/CN=kubernetes",
             "-days", "30"],
            check=True, capture_output=True,
        )  # fmt: skip
        with tarfile.open(tar_path) as tar:
            for item in tar.getmembers()[1:]:
                content = (
                    (other / "ca.crt").read_bytes()
                    if item.name == "pki/ca.crt"
                    else (tar.extractfile(item).read())
                )
                collector.add_bytes(item.name, content)
        foreign = {key: value for key, value in manifest.items() if key != "members"}
        foreign["ca_sha256"] = hashlib_sha256((other / "ca.crt").read_text())
        collector.finish(foreign)
        stranger = tmp_path / name
        stranger.unlink()
        program.encrypt(other / "archive.tar", stranger, passphrase, manifest["cluster"], manifest["created"])
    result, summary = appliance_json("restore", str(stranger))
    assert result.returncode == 1 and set(changed(summary).values()) == {0}
    assert "is not of this cluster: its CA" in json.dumps(summary["failures"])


def test_backup_out_on_a_full_or_read_only_directory_fails_and_leaves_nothing(first_backup, tmp_path):
    full, read_only = tmp_path / "full", tmp_path / "read-only"
    for directory, options in ((full, "size=64k"), (read_only, "size=1m,ro")):
        directory.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(directory)], check=True)
    try:
        result, summary = appliance_json("backup", "--out", str(full))
        assert result.returncode == 1
        assert "copying it to" in json.dumps(summary["failures"]), summary.get("failures")
        assert list(full.iterdir()) == []
        result, summary = appliance_json("backup", "--out", str(read_only))
        assert result.returncode == 1
        assert f"--out {read_only}: not writable" in json.dumps(summary["failures"])
        assert list(read_only.iterdir()) == []
    finally:
        for directory in (full, read_only):
            subprocess.run(["umount", str(directory)], check=False)


def pod_settled(pod: dict) -> bool:
    """Running with every container ready; a pod that runs once (restartPolicy Never) may have ended."""
    status = pod["status"]
    if pod["spec"].get("restartPolicy") == "Never" and status["phase"] in ("Succeeded", "Failed"):
        return True
    return status["phase"] == "Running" and all(c["ready"] for c in status.get("containerStatuses", []))


def node_identities() -> dict[str, str]:
    return {n["metadata"]["name"]: n["metadata"]["uid"] for n in kube_json("get", "nodes")["items"]}


def kubelet_client_serials() -> dict[str, str]:
    return {
        node: on(node, "openssl x509 -noout -serial -in /var/lib/kubelet/pki/kubelet-client-current.pem")
        for node in ("worker-1", "worker-2")
    }


def test_disaster_drill_a_wiped_control_plane_comes_back_from_the_archive(first_backup):
    """The ConfigMap and the Run:ai project of the backup, deleted, then cp-1 wiped: restore brings both
    back, every node Ready as the same node (same UID, the workers' kubelet certificates unchanged: no
    rejoin), every pod Running, and the admin logs in with the inventory's password."""
    archive = BACKUP_OUT / first_backup["data"]["backup"]["name"]
    kubectl("delete", "configmap", "drill-config")
    status, _ = runai_api("DELETE", "/v1/k8s/projects/drill-project")
    assert status in (200, 204), status
    assert runai_api("GET", "/v1/k8s/projects/drill-project")[0] == 404
    identities, serials = node_identities(), kubelet_client_serials()

    # A lost control plane: kubeadm reset, its containers gone (reset cannot remove them once the kubelet
    # stops, with docker), etcd's data and the PKI removed.
    on(
        "cp-1",
        f"kubeadm reset --force --cri-socket {CRI_SOCKET}"
        " && docker ps --all --quiet --filter name=^k8s_ | xargs --no-run-if-empty docker rm --force"
        " && rm -rf /var/lib/etcd /etc/kubernetes/pki",
    )
    result, summary = appliance_json("restore", str(archive), "--force", timeout=3600)
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr

    assert kube_json("get", "configmap", "drill-config")["data"] == {"answer": "42"}
    status, body = runai_api("GET", "/v1/k8s/projects/drill-project")
    assert status == 200 and json.loads(body)["name"] == "drill-project"
    assert node_identities() == identities
    assert kubelet_client_serials() == serials
    for node in kube_json("get", "nodes")["items"]:
        ready = [c["status"] for c in node["status"]["conditions"] if c["type"] == "Ready"]
        assert ready == ["True"], node["metadata"]["name"]
    deadline = time.monotonic() + 600
    while True:
        pods = kube_json("get", "pods", "--all-namespaces")["items"]
        waiting = [p["metadata"]["name"] for p in pods if not pod_settled(p)]
        if not waiting or time.monotonic() > deadline:
            break
        time.sleep(10)
    assert waiting == [], waiting
    assert runai_login(RUNAI_PASSWORD) == "200"
    assert any("Run:ai database: restored into runai-backend/" in line for line in summary["report"])

    # The control plane is healthy now: a restore without --force is refused before any change.
    again, summary = appliance_json("restore", str(archive))
    assert again.returncode == 1 and set(changed(summary).values()) == {0}
    assert "is healthy (its API server answers /readyz)" in json.dumps(summary["failures"])
    kubectl("delete", "configmap", "drill-config")
