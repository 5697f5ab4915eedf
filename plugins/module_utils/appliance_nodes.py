"""What the maintenance modules know about Kubernetes nodes and their pods, read through kubectl.

Shared by plugins/modules/node_maintenance.py and node_status.py. They run on a control-plane node with
its admin kubeconfig: kubectl is there, and no Python Kubernetes client has to reach an air-gapped node.
"""

from __future__ import annotations

import json

# The taint Run:ai's own procedure sets for planned maintenance and unplanned downtime: no new workload
# starts on the node and the running ones move to other nodes or back to the queue.
DRAIN_TAINT = {"key": "runai", "value": "drain", "effect": "NoExecute"}
# What the node looked like before the toolkit drained it, so that a restore returns it to that state
# (a node an admin had cordoned stays cordoned).
BEFORE_DRAIN_ANNOTATION = "maintenance.appliance/before-drain"
ROLE_PREFIX = "node-role.kubernetes.io/"
CONTROL_PLANE_ROLES = ("control-plane", "master")
SYSTEM_ROLE = "runai-system"


class KubectlError(Exception):
    pass


class Kubectl:
    """kubectl with one kubeconfig; every call's failure becomes a KubectlError with kubectl's message."""

    def __init__(self, module, kubeconfig: str) -> None:
        self.module = module
        self.command = [module.get_bin_path("kubectl", required=True), "--kubeconfig", kubeconfig]

    def run(self, *args: str, data: str | None = None) -> tuple[int, str, str]:
        return self.module.run_command([*self.command, *args], data=data)

    def check(self, *args: str) -> str:
        rc, out, err = self.run(*args)
        if rc != 0:
            raise KubectlError(f"kubectl {' '.join(args)}: {(err or out).strip()}")
        return out

    def json(self, *args: str) -> dict:
        return json.loads(self.check(*args, "-o", "json"))

    def node(self, name: str) -> dict | None:
        rc, out, err = self.run("get", "node", name, "-o", "json")
        if rc != 0:
            if "NotFound" in err or "not found" in err:
                return None
            raise KubectlError(f"kubectl get node {name}: {(err or out).strip()}")
        return json.loads(out)

    def nodes(self) -> list[dict]:
        return self.json("get", "nodes")["items"]

    def pods(self, node: str | None = None) -> list[dict]:
        selector = ["--field-selector", f"spec.nodeName={node}"] if node else []
        return self.json("get", "pods", "--all-namespaces", *selector)["items"]


def name_of(item: dict) -> str:
    meta = item["metadata"]
    return f"{meta['namespace']}/{meta['name']}" if meta.get("namespace") else meta["name"]


def controller_of(pod: dict) -> dict | None:
    for owner in pod["metadata"].get("ownerReferences") or []:
        if owner.get("controller"):
            return owner
    return None


def is_daemon_pod(pod: dict) -> bool:
    """A DaemonSet's pod, or a static pod's mirror: both belong to the node and never move."""
    owner = controller_of(pod)
    mirror = "kubernetes.io/config.mirror" in (pod["metadata"].get("annotations") or {})
    return mirror or (owner is not None and owner.get("kind") == "DaemonSet")


def is_finished(pod: dict) -> bool:
    return pod.get("status", {}).get("phase") in ("Succeeded", "Failed")


def workload_pods(pods: list[dict]) -> list[dict]:
    """The pods a drain moves off a node: everything but DaemonSet and static pods and finished pods."""
    return [pod for pod in pods if not is_daemon_pod(pod) and not is_finished(pod)]


def tolerates(pod: dict, taint: dict) -> bool:
    """Whether POD stays on a node with TAINT for good (a toleration with tolerationSeconds leaves later)."""
    for toleration in pod.get("spec", {}).get("tolerations") or []:
        if toleration.get("effect") not in (None, "", taint["effect"]):
            continue
        if toleration.get("tolerationSeconds") is not None:
            continue
        operator = toleration.get("operator", "Equal")
        key = toleration.get("key")
        if operator == "Exists" and key in (None, "", taint["key"]):
            return True
        if operator == "Equal" and key == taint["key"] and toleration.get("value", "") == taint["value"]:
            return True
    return False


def ready(node: dict) -> str:
    """The Ready condition's status: True, False or Unknown (the node stopped reporting)."""
    for condition in node.get("status", {}).get("conditions") or []:
        if condition.get("type") == "Ready":
            return condition.get("status", "Unknown")
    return "Unknown"


def roles(node: dict) -> list[str]:
    labels = node["metadata"].get("labels") or {}
    return sorted(
        key[len(ROLE_PREFIX) :]
        for key, value in labels.items()
        if key.startswith(ROLE_PREFIX) and value != "false"
    )


def has_taint(node: dict, taint: dict) -> bool:
    return any(
        t.get("key") == taint["key"]
        and t.get("effect") == taint["effect"]
        and (t.get("value") or "") == taint["value"]
        for t in node.get("spec", {}).get("taints") or []
    )


def in_service(node: dict) -> bool:
    """Ready, schedulable and not drained: a node that can take over another's work."""
    return (
        ready(node) == "True" and not node["spec"].get("unschedulable") and not has_taint(node, DRAIN_TAINT)
    )


def last_of_its_kind(node: dict, nodes: list[dict]) -> list[str]:
    """The kinds (control plane, Run:ai system) for which NODE is the last node in service; [] if none."""
    name = node["metadata"]["name"]
    others = [n for n in nodes if n["metadata"]["name"] != name and in_service(n)]
    last = []
    if set(roles(node)) & set(CONTROL_PLANE_ROLES) and not any(
        set(roles(n)) & set(CONTROL_PLANE_ROLES) for n in others
    ):
        last.append("control-plane")
    if SYSTEM_ROLE in roles(node) and not any(SYSTEM_ROLE in roles(n) for n in others):
        last.append("Run:ai system")
    return last
