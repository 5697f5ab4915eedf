"""What the GPU health loop reads and writes on a Node: the GPUHealthy condition, the fault taint.

The contract between the agent (writes the condition), the controller (reads it, writes the taint) and
re-admission (clears both):
- condition `GPUHealthy`: True while no fatal fault was seen; False with the reason (Xid79, GPUMissing,
  ECCUncorrected...) and the message "<action>: <the log line or finding>"; only re-admission sets it
  True again, since a GPU that faulted is not trusted until it passed a QA check;
- taint `appliance.io/gpu-fault=<action>:NoSchedule` (or NoExecute, by policy);
- annotation `appliance.io/gpu-fault-isolated-at`: when the controller last isolated the node; the
  circuit breaker counts these, so its window survives a restart of the controller.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Any

from appliance.health.kube import Client, KubeError

CONDITION = "GPUHealthy"
TAINT_KEY = "appliance.io/gpu-fault"
ISOLATED_AT = "appliance.io/gpu-fault-isolated-at"
HEALTHY_REASON = "NoGPUFault"
COMPONENT = "appliance-gpu-health"

# The order of severity, for a node with several faults: the condition shows the gravest.
SEVERITY = {"reboot": 3, "reset-gpu": 2, "workflow": 1}


def now_iso() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str | None) -> float | None:
    if not text:
        return None
    try:
        return datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.UTC).timestamp()
    except ValueError:
        return None


@dataclass(frozen=True)
class NodeFault:
    """A node's GPUHealthy=False condition, read back."""

    reason: str
    action: str
    message: str
    since: str

    @property
    def line(self) -> str:
        return self.message.partition(": ")[2] or self.message


def condition(node: dict[str, Any]) -> dict[str, Any] | None:
    for item in node.get("status", {}).get("conditions") or []:
        if item.get("type") == CONDITION:
            return item
    return None


def fault_of(node: dict[str, Any]) -> NodeFault | None:
    """The node's fatal fault, or None while GPUHealthy is True or absent."""
    item = condition(node)
    if not item or item.get("status") != "False":
        return None
    message = item.get("message", "")
    action = message.partition(": ")[0]
    if action not in SEVERITY:
        action = "reboot"  # an unknown action is handled as the gravest
    return NodeFault(item.get("reason", ""), action, message, item.get("lastTransitionTime", ""))


def fault_taint(node: dict[str, Any]) -> dict[str, Any] | None:
    for taint in node.get("spec", {}).get("taints") or []:
        if taint.get("key") == TAINT_KEY:
            return taint
    return None


def name_of(node: dict[str, Any]) -> str:
    return node["metadata"]["name"]


def set_condition(client: Client, node: str, healthy: bool, reason: str, message: str) -> None:
    """Write GPUHealthy; the transition time is the time of this change (callers write on change only)."""
    write_condition(client, node, CONDITION, "True" if healthy else "False", reason, message)


def write_condition(client: Client, node: str, kind: str, status: str, reason: str, message: str) -> None:
    """Write the node condition KIND (a strategic merge keyed by type leaves the others alone)."""
    stamp = now_iso()
    patch = {
        "status": {
            "conditions": [
                {
                    "type": kind,
                    "status": status,
                    "reason": reason,
                    "message": message[:1024],
                    "lastHeartbeatTime": stamp,
                    "lastTransitionTime": stamp,
                }
            ]
        }
    }
    client.patch(f"/api/v1/nodes/{node}/status", patch)


def heartbeat(client: Client, node: str, item: dict[str, Any]) -> None:
    """Refresh the condition's heartbeat, keeping its status, reason, message and transition time."""
    client.patch(
        f"/api/v1/nodes/{node}/status",
        {"status": {"conditions": [{**item, "lastHeartbeatTime": now_iso()}]}},
    )


def set_taints(
    client: Client, node: dict[str, Any], taints: list[dict[str, Any]], annotations: dict[str, Any]
) -> None:
    """Replace the node's taints (a list strategic merge cannot key) as of the version we read: a
    concurrent change of the node (kubectl cordon, a maintenance drain) makes this fail with 409, and the
    caller reads the node again."""
    metadata: dict[str, Any] = {"resourceVersion": node["metadata"]["resourceVersion"]}
    if annotations:
        metadata["annotations"] = annotations
    client.patch(
        f"/api/v1/nodes/{name_of(node)}", {"metadata": metadata, "spec": {"taints": taints}}, "merge"
    )


def record_event(
    client: Client, node: dict[str, Any] | str, reason: str, message: str, warning: bool = True
) -> None:
    """A Kubernetes Event on the node (kubectl describe node shows it); failures are the caller's to log."""
    name = node if isinstance(node, str) else name_of(node)
    uid = "" if isinstance(node, str) else node["metadata"].get("uid", "")
    stamp = now_iso()
    event = {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"{name}.gpu-health.", "namespace": "default"},
        "involvedObject": {"apiVersion": "v1", "kind": "Node", "name": name, "uid": uid or name},
        "reason": reason,
        "message": message[:1024],
        "type": "Warning" if warning else "Normal",
        "source": {"component": COMPONENT, "host": name},
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "count": 1,
    }
    client.post("/api/v1/namespaces/default/events", event)


def get_node(client: Client, name: str) -> dict[str, Any]:
    try:
        return client.get(f"/api/v1/nodes/{name}")
    except KubeError as error:
        if error.status == 404:
            raise KubeError(f"node {name} is not in the cluster", 404, "NotFound") from error
        raise
