"""The controller carrying out GPU remediation (appliance.health.remediation decides; this acts).

A thread of the controller, apart from isolation (which must stay within seconds while a drain takes
minutes): every `interval` seconds it lists the GPU nodes, asks plan() what is next, and does it:

- drain: the node's first remediation step. It records the start (history), drains the node with node
  maintenance's own code (module_utils appliance_maintenance, shipped beside the package: the Run:ai taint,
  workload pods moved, DaemonSet pods left, the state before the drain remembered), for a GPU reset pauses
  the GPU operator's operands on the node (the `nvidia.com/gpu.deploy.*` labels, as NVIDIA's driver
  manager does) until their pods are gone, then writes the instruction the node's agent carries out;
- confirm, readmit, fail, forget: the record moved on; on re-admission GPUHealthy True (reason Remediated),
  the fault taint and the drain removed (a cordon an admin set before the drain stays), the operands back;
- await, wait, hold, skip: the record written and an Event, once.
Every step is an Event on the node and a log line; `appliance health status` shows each node's step.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance.health import node as nodeapi
from appliance.health.kube import Client, KubeError
from appliance.health.remediation import (
    APPROVED,
    HISTORY,
    INSTRUCTION,
    RECORD,
    Record,
    RemediationConfig,
    Transition,
    plan,
    view,
)

log = logging.getLogger("appliance.health.remediator")

# The GPU operator's operands on a node, each deployed while its label is "true" (NVIDIA's driver manager
# pauses the same ones for a driver upgrade).
OPERAND_LABELS = (
    "nvidia.com/gpu.deploy.device-plugin",
    "nvidia.com/gpu.deploy.gpu-feature-discovery",
    "nvidia.com/gpu.deploy.dcgm-exporter",
    "nvidia.com/gpu.deploy.dcgm",
)
PAUSED = "paused-for-gpu-reset"
OPERAND_APPS = (
    "nvidia-device-plugin-daemonset",
    "gpu-feature-discovery",
    "nvidia-dcgm-exporter",
    "nvidia-dcgm",
)


class KubectlOnNode:
    """What appliance_nodes.Kubectl needs of an Ansible module (get_bin_path, run_command), on this node."""

    def get_bin_path(self, name: str, required: bool = False) -> str:
        found = shutil.which(name) or shutil.which(name, path="/usr/bin:/usr/local/bin")
        if found is None and required:
            raise FileNotFoundError(f"{name} is not installed on this node")
        return found or name

    def run_command(self, args: list[str], data: str | None = None) -> tuple[int, str, str]:
        try:
            result = subprocess.run(
                args, input=data, capture_output=True, text=True, timeout=120, check=False
            )
        except subprocess.TimeoutExpired:
            return 124, "", f"{' '.join(args[:4])}... did not answer within 120 s"
        return result.returncode, result.stdout, result.stderr


@dataclass
class Settings:
    kubeconfig: Path
    selector: str
    config: RemediationConfig
    drain_timeout: int = 600
    operands_timeout: float = 300.0
    operator_namespace: str = "gpu-operator"
    interval: float = 2.0


class Remediator:
    def __init__(
        self,
        client: Client,
        settings: Settings,
        event: Callable[[dict[str, Any] | str, str, str, bool], None],
        maintenance: Callable[[str], Any] | None = None,
    ) -> None:
        self.client = client
        self.settings = settings
        self.event = event
        self.maintenance = maintenance or self._maintenance
        self.reported: set[tuple[str, str, str]] = set()
        self.counters = {"started": 0, "remediated": 0, "failed": 0, "held": 0}
        self.last: dict[str, str] = {}  # node -> its step, for the status

    # -- the loop ------------------------------------------------------------------------------------
    def run_forever(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                self.once()
            except KubeError as error:
                log.error("remediation: %s", error)
            stop.wait(self.settings.interval)

    def once(self) -> list[Transition]:
        nodes = self.gpu_nodes()
        transitions = plan(list(nodes.values()), self.settings.config, time.time())
        for transition in transitions:
            try:
                getattr(self, f"do_{transition.kind}")(nodes[transition.node], transition)
            except KubeError as error:
                log.error("remediation of %s (%s): %s", transition.node, transition.kind, error)
        if transitions:
            nodes = self.gpu_nodes()
        self.last = {
            name: (v.record.step + (f" ({v.record.reason})" if v.record.reason else ""))
            for name, v in ((name, view(node)) for name, node in nodes.items())
            if v.record is not None
        }
        return transitions

    def gpu_nodes(self) -> dict[str, dict[str, Any]]:
        query = urllib.parse.urlencode({"labelSelector": self.settings.selector})
        return {nodeapi.name_of(n): n for n in self.client.get(f"/api/v1/nodes?{query}").get("items", [])}

    # -- writing -------------------------------------------------------------------------------------
    def annotate(self, name: str, annotations: dict[str, str | None]) -> None:
        self.client.patch(f"/api/v1/nodes/{name}", {"metadata": {"annotations": annotations}}, "merge")

    def tell(self, node: dict[str, Any], transition: Transition, warning: bool = False) -> None:
        log.warning("%s: %s: %s", transition.node, transition.reason, transition.message)
        self.event(node, transition.reason, transition.message, warning)

    def _maintenance(self, name: str) -> Any:
        from appliance_maintenance import Maintenance  # shipped beside the package (lookup health_package)
        from appliance_nodes import Kubectl

        kubectl = Kubectl(KubectlOnNode(), str(self.settings.kubeconfig))
        return Maintenance(kubectl, name, timeout=self.settings.drain_timeout)

    def set_operands(self, name: str, pause: bool) -> list[str]:
        """Pause (or put back) the GPU operator's operands on NAME; the labels it changed."""
        node = nodeapi.get_node(self.client, name)
        labels = node["metadata"].get("labels") or {}
        old, new = ("true", PAUSED) if pause else (PAUSED, "true")
        changed = [label for label in OPERAND_LABELS if labels.get(label) == old]
        if changed:
            patch = {"metadata": {"labels": dict.fromkeys(changed, new)}}
            self.client.patch(f"/api/v1/nodes/{name}", patch, "merge")
        return changed

    def operand_pods(self, name: str) -> list[str]:
        query = urllib.parse.urlencode({"fieldSelector": f"spec.nodeName={name}"})
        namespace = self.settings.operator_namespace
        pods = self.client.get(f"/api/v1/namespaces/{namespace}/pods?{query}").get("items", [])
        return [
            nodeapi.name_of(p) for p in pods if (p["metadata"].get("labels") or {}).get("app") in OPERAND_APPS
        ]

    # -- the transitions -----------------------------------------------------------------------------
    def do_await(self, node: dict[str, Any], t: Transition) -> None:
        self.annotate(t.node, {RECORD: t.record.to_json()})
        self.tell(node, t)

    do_wait = do_await

    def do_hold(self, node: dict[str, Any], t: Transition) -> None:
        fault = nodeapi.fault_of(node)
        self.annotate(t.node, {RECORD: t.record.to_json()})
        if fault is not None:
            message = (
                f"{fault.action}: MultipleRemediations: {t.message}; last fault: {fault.reason}: {fault.line}"
            )
            nodeapi.set_condition(self.client, t.node, False, "MultipleRemediations", message)
        self.counters["held"] += 1
        self.tell(node, t, warning=True)

    def do_skip(self, node: dict[str, Any], t: Transition) -> None:
        fault = nodeapi.fault_of(node)
        key = (t.node, fault.since if fault else "", "skip")
        if key not in self.reported:
            self.reported.add(key)
            self.tell(node, t)

    def do_drain(self, node: dict[str, Any], t: Transition) -> None:
        record = t.record
        current = view(node).record
        if current is None or current.step != "draining":
            history = list(json.loads((node["metadata"].get("annotations") or {}).get(HISTORY, "[]")))
            window = self.settings.config.window_seconds
            history = [s for s in history if (nodeapi.parse_time(s) or 0) > time.time() - window]
            record = Record(**{**record.__dict__, "drained": True})
            self.annotate(
                t.node, {RECORD: record.to_json(), HISTORY: json.dumps([*history, nodeapi.now_iso()])}
            )
            self.counters["started"] += 1
            self.tell(node, t)
        from appliance_maintenance import Refusal, Unfinished

        try:
            self.maintenance(t.node).drained()
        except Refusal as refusal:
            return self.failed(node, record, "DrainRefused", str(refusal))
        except Unfinished as unfinished:
            return self.failed(node, record, "DrainTimedOut", str(unfinished))
        if record.action == "reset-gpu":
            self.set_operands(t.node, pause=True)
            deadline = time.monotonic() + self.settings.operands_timeout
            while self.operand_pods(t.node):
                if time.monotonic() > deadline:
                    left = ", ".join(self.operand_pods(t.node))
                    return self.failed(
                        node, record, "OperandsStayed", f"GPU operator pods still there: {left}"
                    )
                time.sleep(2)
        instruction = {"id": record.id, "action": record.action, "gpus": list(record.gpus)}
        remediating = Record(**{**record.__dict__, "step": "remediating", "updated": time.time()})
        self.annotate(t.node, {RECORD: remediating.to_json(), INSTRUCTION: json.dumps(instruction)})
        what = (
            "rebooting the node"
            if record.action == "reboot"
            else f"resetting GPU {', '.join(record.gpus) or 'all'}"
        )
        self.tell(node, Transition(t.node, "drain", remediating, "GPURemediating", f"drained; {what}"))

    def do_confirm(self, node: dict[str, Any], t: Transition) -> None:
        self.annotate(t.node, {RECORD: t.record.to_json()})
        if t.record.action == "reset-gpu":
            self.set_operands(t.node, pause=False)
        self.tell(node, t)

    def do_readmit(self, node: dict[str, Any], t: Transition) -> None:
        record = view(node).record
        nodeapi.set_condition(self.client, t.node, True, "Remediated", f"remediated: {t.message}")
        self.end(node, record)
        self.counters["remediated"] += 1
        self.tell(node, t)

    def do_fail(self, node: dict[str, Any], t: Transition) -> None:
        self.failed(node, t.record, t.reason, t.message)

    def do_forget(self, node: dict[str, Any], t: Transition) -> None:
        self.end(node, view(node).record, keep_fault_taint=True)
        self.tell(node, t)

    # -- shared ends ---------------------------------------------------------------------------------
    def failed(self, node: dict[str, Any], record: Record, reason: str, message: str) -> None:
        failed = Record(**{**record.__dict__, "step": "failed", "reason": reason, "updated": time.time()})
        self.annotate(nodeapi.name_of(node), {RECORD: failed.to_json(), INSTRUCTION: None})
        self.set_operands(nodeapi.name_of(node), pause=False)
        fault = nodeapi.fault_of(node)
        if fault is not None:
            text = f"{fault.action}: {reason}: {message}"
            nodeapi.set_condition(self.client, nodeapi.name_of(node), False, reason, text)
        self.counters["failed"] += 1
        self.tell(node, Transition(nodeapi.name_of(node), "fail", failed, reason, message), warning=True)

    def end(self, node: dict[str, Any], record: Record | None, keep_fault_taint: bool = False) -> None:
        """The remediation's marks off the node: the fault taint (on re-admission), the drain it set (the
        state before the drain back), the operands, the instruction and the record."""
        name = nodeapi.name_of(node)
        if not keep_fault_taint:
            for _attempt in range(5):
                item = nodeapi.get_node(self.client, name)
                taints = [t for t in item["spec"].get("taints") or [] if t.get("key") != nodeapi.TAINT_KEY]
                try:
                    nodeapi.set_taints(self.client, item, taints, {})
                    break
                except KubeError as error:
                    if error.status != 409:
                        raise
        if record is not None and record.drained:
            self.maintenance(name).restored()
        self.set_operands(name, pause=False)
        self.annotate(name, {RECORD: None, INSTRUCTION: None, APPROVED: None})
