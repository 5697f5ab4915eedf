"""The GPU health controller: isolates GPU nodes whose GPUHealthy condition is False, within a budget.

Runs on the first control-plane node as the systemd service appliance-gpu-health-controller (role
gpu_health). It watches the GPU nodes (label selector), and for each node with a fatal fault that is not
isolated yet it adds the taint `appliance.io/gpu-fault=<action>:<effect>` (NoSchedule, or NoExecute by
policy) and an Event. Guards an operator can trust unattended:

- circuit breaker: at most `max_isolated_share` of the GPU nodes (default 20 %, at least one node) are
  isolated by it or were within `window_seconds`; a fault beyond that is reported (Event
  GPUIsolationDeferred, metric, the status ConfigMap) and the node is left in service: a fault on many
  nodes at once is more likely a driver, firmware or fabric problem than many bad GPUs;
- dry run: with `dry_run: true` it records what it would do (Event GPUIsolationDryRun) and taints nothing;
- it never removes a taint while a fault stands: re-admission does, after a QA check; by a person
  (`appliance health readmit`), or by its remediation thread (appliance.health.remediator: drain, reboot
  or GPU reset through the node's agent, QA, re-admission; policy `remediation`: off, manual, auto).
Its state for `appliance health status` is the ConfigMap kube-system/appliance-gpu-health.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import threading
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance.health import node as nodeapi
from appliance.health.agent import read_settings, serve_metrics
from appliance.health.kube import Client, KubeError
from appliance.health.remediation import RemediationConfig
from appliance.health.remediator import Remediator, Settings

log = logging.getLogger("appliance.health.controller")
STATUS_CONFIGMAP = ("kube-system", "appliance-gpu-health")


ISOLATION_BUCKETS = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0)


class Histogram:
    """A Prometheus histogram without labels (cumulative buckets, sum, count)."""

    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.buckets = buckets
        self.counts = [0] * len(buckets)
        self.total = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        for position, bound in enumerate(self.buckets):
            if value <= bound:
                self.counts[position] += 1
        self.total += value
        self.count += 1

    def render(self, name: str, help_text: str) -> list[str]:
        lines = [f"# HELP {name} {help_text}", f"# TYPE {name} histogram"]
        lines += [
            f'{name}_bucket{{le="{bound:g}"}} {n}' for bound, n in zip(self.buckets, self.counts, strict=True)
        ]
        lines += [
            f'{name}_bucket{{le="+Inf"}} {self.count}',
            f"{name}_sum {self.total:.3f}",
            f"{name}_count {self.count}",
        ]
        return lines


@dataclass
class ControllerConfig:
    kubeconfig: Path = Path("/etc/kubernetes/admin.conf")
    gpu_node_selector: str = "node-role.kubernetes.io/runai-gpu-worker"
    effect: str = "NoSchedule"
    max_isolated_share: float = 0.2
    window_seconds: float = 3600.0
    dry_run: bool = False
    resync_seconds: int = 30
    metrics_address: str = ":9466"
    # Remediation (appliance.health.remediation): off, manual (each fault waits for `appliance health
    # approve NODE`) or auto.
    remediation: str = "manual"
    max_concurrent_remediations: int = 1
    max_remediations: int = 2
    remediation_window_seconds: float = 86400.0
    remediation_step_timeout_seconds: float = 900.0
    drain_timeout_seconds: int = 600
    gpu_operator_namespace: str = "gpu-operator"

    def __post_init__(self) -> None:
        if self.effect not in ("NoSchedule", "NoExecute"):
            raise ValueError(f"effect {self.effect!r}: expected NoSchedule or NoExecute")
        if not 0 < self.max_isolated_share <= 1:
            raise ValueError(f"max_isolated_share {self.max_isolated_share!r}: expected a share in (0, 1]")
        if self.window_seconds <= 0:
            raise ValueError(f"window_seconds {self.window_seconds!r}: expected a positive number")
        self.remediation_config()  # its own checks

    def remediation_config(self) -> RemediationConfig:
        return RemediationConfig(
            policy=self.remediation,
            max_concurrent=self.max_concurrent_remediations,
            max_remediations=self.max_remediations,
            window_seconds=self.remediation_window_seconds,
            step_timeout_seconds=self.remediation_step_timeout_seconds,
        )

    @classmethod
    def from_file(cls, path: Path) -> ControllerConfig:
        return read_settings(cls, path)


@dataclass(frozen=True)
class Plan:
    """What one reconciliation decides, from the nodes alone (a pure function: see plan())."""

    budget: int
    counted: tuple[str, ...]  # nodes isolated now or within the window
    isolate: tuple[tuple[str, nodeapi.NodeFault], ...]
    retaint: tuple[tuple[str, nodeapi.NodeFault], ...]  # isolated, but a graver fault came since
    deferred: tuple[tuple[str, nodeapi.NodeFault], ...]


def plan(nodes: list[dict[str, Any]], config: ControllerConfig, now: float) -> Plan:
    budget = max(1, math.floor(config.max_isolated_share * len(nodes) + 1e-9))
    counted: set[str] = set()
    candidates: list[tuple[str, str, nodeapi.NodeFault]] = []
    retaint = []
    for item in nodes:
        name = nodeapi.name_of(item)
        taint = nodeapi.fault_taint(item)
        isolated_at = nodeapi.parse_time(item["metadata"].get("annotations", {}).get(nodeapi.ISOLATED_AT))
        if taint is not None or (isolated_at is not None and now - isolated_at < config.window_seconds):
            counted.add(name)
        fault = nodeapi.fault_of(item)
        if fault is None:
            continue
        if taint is None:
            candidates.append((fault.since, name, fault))
        elif taint.get("value") != fault.action or taint.get("effect") != config.effect:
            retaint.append((name, fault))
    isolate, deferred = [], []
    for _order, name, fault in sorted(candidates):
        if name in counted or len(counted) < budget:
            counted.add(name)
            isolate.append((name, fault))
        else:
            deferred.append((name, fault))
    return Plan(budget, tuple(sorted(counted)), tuple(isolate), tuple(retaint), tuple(deferred))


class Controller:
    def __init__(self, config: ControllerConfig, client: Client | None = None) -> None:
        self.config = config
        self.client = client or Client(config.kubeconfig)
        self.stop = threading.Event()
        self.nodes: dict[str, dict[str, Any]] = {}
        self.reported: set[tuple[str, str, str]] = set()  # (node, fault since, what): one Event each
        self.counters = {"isolations": 0, "deferred": 0, "dry_run": 0, "api_errors": 0}
        self.last_plan: Plan | None = None
        self.last_status = ""
        self.isolation_latency = Histogram(ISOLATION_BUCKETS)
        self.remediator = Remediator(
            self.client,
            Settings(
                kubeconfig=config.kubeconfig,
                selector=config.gpu_node_selector,
                config=config.remediation_config(),
                drain_timeout=config.drain_timeout_seconds,
                operator_namespace=config.gpu_operator_namespace,
            ),
            # Late-bound: the method in effect when the step runs.
            event=lambda node, reason, message, warning: self.event(node, reason, message, warning),  # pylint: disable=unnecessary-lambda
        )

    def selector_query(self) -> str:
        return urllib.parse.urlencode({"labelSelector": self.config.gpu_node_selector})

    def reconcile(self) -> bool:
        """Act on the current nodes; False when a node changed under us (read them again)."""
        result = plan(list(self.nodes.values()), self.config, time.time())
        self.last_plan = result
        fresh = True
        for name, fault in result.isolate + result.retaint:
            fresh &= self.isolate(self.nodes[name], fault)
        for name, fault in result.deferred:
            self.report_once(
                name,
                fault,
                "deferred",
                "GPUIsolationDeferred",
                f"not isolating {name} ({fault.reason}): circuit breaker: {len(result.counted)} of "
                f"{len(self.nodes)} GPU nodes isolated now or in the last {self.config.window_seconds:.0f} s "
                f"({', '.join(result.counted)}), "
                f"limit {self.config.max_isolated_share:.0%} = {result.budget}",
            )
        self.write_status(result)
        return fresh

    def isolate(self, item: dict[str, Any], fault: nodeapi.NodeFault) -> bool:
        name = nodeapi.name_of(item)
        taint = {"key": nodeapi.TAINT_KEY, "value": fault.action, "effect": self.config.effect}
        if self.config.dry_run:
            self.report_once(
                name,
                fault,
                "dry-run",
                "GPUIsolationDryRun",
                f"dry run: would taint {name} {nodeapi.TAINT_KEY}={fault.action}:{self.config.effect} "
                f"({fault.reason}: {fault.line})",
            )
            return True
        others = [t for t in item.get("spec", {}).get("taints") or [] if t.get("key") != nodeapi.TAINT_KEY]
        try:
            nodeapi.set_taints(self.client, item, [*others, taint], {nodeapi.ISOLATED_AT: nodeapi.now_iso()})
        except KubeError as error:
            if error.status == 409:
                return False
            self.counters["api_errors"] += 1
            log.error("tainting %s: %s", name, error)
            return True
        self.counters["isolations"] += 1
        since = nodeapi.parse_time(fault.since)
        if since is not None:
            self.isolation_latency.observe(max(0.0, time.time() - since))
        log.warning(
            "isolated %s: %s=%s:%s (%s)",
            name,
            nodeapi.TAINT_KEY,
            fault.action,
            self.config.effect,
            fault.reason,
        )
        self.event(
            name,
            "GPUIsolated",
            f"tainted {nodeapi.TAINT_KEY}={fault.action}:{self.config.effect}: {fault.reason}: {fault.line}",
        )
        return True

    def report_once(self, name: str, fault: nodeapi.NodeFault, what: str, reason: str, message: str) -> None:
        key = (name, fault.since, what)
        if key in self.reported:
            return
        self.reported.add(key)
        self.counters["deferred" if what == "deferred" else "dry_run"] += 1
        log.warning("%s", message)
        self.event(name, reason, message)

    def event(self, name: str | dict[str, Any], reason: str, message: str, warning: bool = True) -> None:
        if isinstance(name, dict):
            name = nodeapi.name_of(name)
        try:
            nodeapi.record_event(self.client, self.nodes.get(name) or name, reason, message, warning)
        except KubeError as error:
            self.counters["api_errors"] += 1
            log.error("event on %s: %s", name, error)

    def write_status(self, result: Plan) -> None:
        status = json.dumps(
            {
                "dry_run": self.config.dry_run,
                "effect": self.config.effect,
                "max_isolated_share": self.config.max_isolated_share,
                "window_seconds": self.config.window_seconds,
                "budget": result.budget,
                "counted": list(result.counted),
                "deferred": [name for name, _why in result.deferred],
                "gpu_nodes": sorted(self.nodes),
                "remediation": self.config.remediation,
                "remediating": self.remediator.last,
            },
            sort_keys=True,
        )
        if status == self.last_status:
            return
        namespace, name = STATUS_CONFIGMAP
        body = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": namespace},
            "data": {"controller.json": status},
        }
        try:
            try:
                self.client.patch(f"/api/v1/namespaces/{namespace}/configmaps/{name}", body, "merge")
            except KubeError as error:
                if error.status != 404:
                    raise
                self.client.post(f"/api/v1/namespaces/{namespace}/configmaps", body)
            self.last_status = status
        except KubeError as error:
            self.counters["api_errors"] += 1
            log.error("status ConfigMap: %s", error)

    def metrics(self) -> str:
        result = self.last_plan
        lines = []
        counters = self.remediator.counters
        for name, value, help_text in (
            ("isolations", self.counters["isolations"], "GPU nodes the controller tainted."),
            ("deferred", self.counters["deferred"], "Isolations the circuit breaker deferred."),
            ("dry_run", self.counters["dry_run"], "Isolations a dry run recorded instead of doing."),
            ("api_errors", self.counters["api_errors"], "Failed calls to the Kubernetes API."),
            (
                "remediations_started",
                counters["started"],
                "Remediations started (a node drained for a reboot or a GPU reset).",
            ),
            (
                "remediations_remediated",
                counters["remediated"],
                "Remediations that ended with the node re-admitted.",
            ),
            (
                "remediations_failed",
                counters["failed"],
                "Remediations that failed (drain, reset, QA or a step timed out): the node stays.",
            ),
            (
                "remediations_held",
                counters["held"],
                "Faults left for a person after too many remediations (MultipleRemediations).",
            ),
        ):
            lines += [
                f"# HELP appliance_gpu_controller_{name}_total {help_text}",
                f"# TYPE appliance_gpu_controller_{name}_total counter",
                f"appliance_gpu_controller_{name}_total {value}",
            ]
        lines += self.isolation_latency.render(
            "appliance_gpu_controller_isolation_seconds",
            "Seconds from a node's GPUHealthy=False (its transition time, whole seconds) to its taint.",
        )
        isolated = sorted(name for name, item in self.nodes.items() if nodeapi.fault_taint(item) is not None)
        lines += [
            "# HELP appliance_gpu_controller_isolated 1 for each GPU node the fault taint isolates now.",
            "# TYPE appliance_gpu_controller_isolated gauge",
            *(f'appliance_gpu_controller_isolated{{node="{name}"}} 1' for name in isolated),
            "# HELP appliance_gpu_controller_remediation 1 for each GPU node's remediation step now.",
            "# TYPE appliance_gpu_controller_remediation gauge",
        ]
        for name, step in sorted(self.remediator.last.items()):
            step, _sep, reason = step.partition(" (")
            labels = f'node="{name}",step="{step}",reason="{reason.rstrip(")")}"'
            lines.append(f"appliance_gpu_controller_remediation{{{labels}}} 1")
        if result:
            lines += [
                "# HELP appliance_gpu_controller_budget GPU nodes the circuit breaker lets be isolated.",
                "# TYPE appliance_gpu_controller_budget gauge",
                f"appliance_gpu_controller_budget {result.budget}",
                "# HELP appliance_gpu_controller_counted GPU nodes isolated now or within the window.",
                "# TYPE appliance_gpu_controller_counted gauge",
                f"appliance_gpu_controller_counted {len(result.counted)}",
            ]
        return "\n".join(lines) + "\n"

    def run_forever(self) -> None:
        if self.config.metrics_address:
            serve_metrics(self.config.metrics_address, self.metrics)
        log.info(
            "watching nodes %s (dry run: %s, remediation: %s)",
            self.config.gpu_node_selector,
            self.config.dry_run,
            self.config.remediation,
        )
        threading.Thread(
            target=self.remediator.run_forever, args=(self.stop,), name="remediation", daemon=True
        ).start()
        while not self.stop.is_set():
            try:
                self.sync()
            except KubeError as error:
                self.counters["api_errors"] += 1
                log.error("%s", error)
                self.stop.wait(2)

    def sync(self) -> None:
        """List, reconcile, then follow the watch until it ends (resync_seconds) or a write conflicts."""
        listing = self.client.get(f"/api/v1/nodes?{self.selector_query()}")
        self.nodes = {nodeapi.name_of(item): item for item in listing.get("items", [])}
        if not self.reconcile():
            return
        version = listing["metadata"]["resourceVersion"]
        for event in self.client.watch(
            f"/api/v1/nodes?{self.selector_query()}", version, self.config.resync_seconds
        ):
            kind, item = event.get("type"), event.get("object", {})
            if kind == "ERROR":  # 410 Gone and the like: list again
                return
            if kind == "DELETED":
                self.nodes.pop(nodeapi.name_of(item), None)
            else:
                self.nodes[nodeapi.name_of(item)] = item
            if not self.reconcile() or self.stop.is_set():
                return


def main(config_path: Path | None, overrides: dict[str, Any]) -> int:
    config = ControllerConfig.from_file(config_path) if config_path else ControllerConfig()
    config = dataclasses.replace(config, **{k: v for k, v in overrides.items() if v is not None})
    Controller(config).run_forever()
    return 0


__all__ = ["Controller", "ControllerConfig", "Plan", "plan"]
