"""Planned maintenance and unplanned downtime of a node, through kubectl: drain it (the Run:ai taint, its
workload pods moved, DaemonSet and static pods left), mark it down, restore it.

The one implementation of `appliance node drain|down|restore` (module node_maintenance) and of the drain
the GPU health controller starts a remediation with (appliance.health.controller, which finds this file
and appliance_nodes.py beside its package on the node: appliance.health_package ships them). Failures
are exceptions here; the module turns them into its failure, the controller into an Event.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import socket
import time

try:
    from ansible_collections.appliance.runai.plugins.module_utils.appliance_nodes import (
        BEFORE_DRAIN_ANNOTATION,
        DRAIN_TAINT,
        controller_of,
        has_taint,
        last_of_its_kind,
        name_of,
        ready,
        tolerates,
        workload_pods,
    )
except ImportError:  # in the GPU health package on a node: a module beside the package
    from appliance_nodes import (  # type: ignore[no-redef]
        BEFORE_DRAIN_ANNOTATION,
        DRAIN_TAINT,
        controller_of,
        has_taint,
        last_of_its_kind,
        name_of,
        ready,
        tolerates,
        workload_pods,
    )

KUBELET_PORT = 10250
KUBELET_TIMEOUT = 3  # seconds; the control plane and the node share a network
TAINT_ARGUMENT = f"{DRAIN_TAINT['key']}={DRAIN_TAINT['value']}:{DRAIN_TAINT['effect']}"


class Refusal(Exception):
    """A reason not to touch the node at all, found before any change."""


class Unfinished(Exception):
    """A drain that did not end in time: the node stays tainted (and cordoned, when evicting)."""

    def __init__(self, message: str, remaining: list[str], blocked_by: list[str] | None = None) -> None:
        super().__init__(message)
        self.remaining = remaining
        self.blocked_by = blocked_by or []


def selector_matches(selector: dict | None, labels: dict) -> bool:
    """A Kubernetes label selector (matchLabels and matchExpressions) against a pod's labels."""
    if selector is None:
        return False  # no selector selects nothing; an empty one ({}) selects every pod (policy/v1)
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expression in selector.get("matchExpressions") or []:
        key, operator, values = expression["key"], expression["operator"], expression.get("values") or []
        if operator == "In" and labels.get(key) not in values:
            return False
        if operator == "NotIn" and key in labels and labels[key] in values:
            return False
        if operator == "Exists" and key not in labels:
            return False
        if operator == "DoesNotExist" and key in labels:
            return False
    return True


def blocking_budgets(pods: list[dict], budgets: list[dict]) -> list[str]:
    """The PodDisruptionBudgets that allow no disruption and cover one of PODS, with what they cover."""
    found = []
    for budget in budgets:
        allowed = budget.get("status", {}).get("disruptionsAllowed", 0)
        namespace = budget["metadata"]["namespace"]
        covered = [
            name_of(pod)
            for pod in pods
            if pod["metadata"]["namespace"] == namespace
            and selector_matches(budget["spec"].get("selector"), pod["metadata"].get("labels") or {})
        ]
        if covered and allowed == 0:
            found.append(
                f"PodDisruptionBudget {name_of(budget)} allows 0 disruptions now "
                f"(it covers {', '.join(covered)})"
            )
    return found


def why_still_there(pod: dict) -> str:
    if pod["metadata"].get("deletionTimestamp"):
        grace = pod["metadata"].get("deletionGracePeriodSeconds")
        return f"{name_of(pod)}: still terminating (grace period {grace} s)"
    if tolerates(pod, DRAIN_TAINT):
        return f"{name_of(pod)}: tolerates {TAINT_ARGUMENT}, so the taint does not move it (use evict)"
    return f"{name_of(pod)}: not moved yet"


def controller_key(pod: dict) -> tuple[str, str, str] | None:
    owner = controller_of(pod)
    return (pod["metadata"]["namespace"], owner["kind"], owner["name"]) if owner else None


def where_they_went(node: str, left: list[dict], everywhere: list[dict]) -> tuple[list[dict], list[str]]:
    """For each controller whose pods left NODE: how many left, and where its pods are now."""
    now: dict[tuple[str, str, str], list[dict]] = {}
    for pod in everywhere:
        key = controller_key(pod)
        if key is not None:
            now.setdefault(key, []).append(pod)
    moved, lines = [], []
    groups: dict[tuple[str, str, str] | None, list[dict]] = {}
    for pod in left:
        groups.setdefault(controller_key(pod), []).append(pod)
    for key, pods in groups.items():
        if key is None:
            for pod in pods:
                moved.append({"pod": name_of(pod), "controller": None, "now_on": []})
                lines.append(f"{name_of(pod)}: deleted; no controller recreates it")
            continue
        namespace, kind, name = key
        current = [pod for pod in now.get(key, []) if not pod["metadata"].get("deletionTimestamp")]
        placed = sorted({pod["spec"].get("nodeName") or "" for pod in current} - {""})
        pending = sum(1 for pod in current if not pod["spec"].get("nodeName"))
        for pod in pods:
            moved.append({"pod": name_of(pod), "controller": f"{kind} {namespace}/{name}", "now_on": placed})
        where = ", ".join(placed) if placed else "no node yet"
        lines.append(
            f"{kind} {namespace}/{name}: {len(pods)} pod(s) left {node}; its pods now run on {where}"
            + (f"; {pending} waiting for a node" if pending else "")
        )
    return moved, lines


class Maintenance:
    """KUBECTL is appliance_nodes.Kubectl (or anything with its run/check/json/node/nodes/pods)."""

    def __init__(
        self,
        kubectl,
        node: str,
        *,
        evict: bool = False,
        timeout: int = 300,
        force: bool = False,
        check_mode: bool = False,
    ) -> None:
        self.kubectl = kubectl
        self.name = node
        self.params = {"evict": evict, "timeout": timeout, "force": force}
        self.check_mode = check_mode
        self.report: list[str] = []

    # -- reading -------------------------------------------------------------------------------------
    def read_node(self) -> dict:
        node = self.kubectl.node(self.name)
        if node is None:
            names = ", ".join(n["metadata"]["name"] for n in self.kubectl.nodes())
            raise Refusal(f"no node {self.name} in the cluster (its nodes: {names})")
        return node

    def workload(self) -> list[dict]:
        return workload_pods(self.kubectl.pods(self.name))

    def kubelet_answers(self, node: dict) -> str | None:
        """The address where the node's kubelet accepts connections, or None when it does not."""
        for address in node.get("status", {}).get("addresses") or []:
            if address.get("type") != "InternalIP":
                continue
            try:
                with socket.create_connection((address["address"], KUBELET_PORT), timeout=KUBELET_TIMEOUT):
                    return address["address"]
            except OSError:
                continue
        return None

    def refuse_unsafe(self, node: dict, action: str) -> None:
        if self.params["force"] or ready(node) != "True":
            return  # a node that is not Ready is not the last of anything in service
        last = last_of_its_kind(node, self.kubectl.nodes())
        if last:
            raise Refusal(
                f"{self.name} is the last {' and last '.join(last)} node in service; {action} it would stop "
                "the cluster's own services. Add another such node first, or use --force if that is intended."
            )

    def refuse_orphans(self, pods: list[dict]) -> None:
        orphans = [name_of(pod) for pod in pods if controller_of(pod) is None]
        if orphans and not self.params["force"]:
            raise Refusal(
                f"pods on {self.name} that no controller recreates would be lost: {', '.join(orphans)}. "
                "Move or delete them first, or use --force to delete them."
            )

    # -- changing ------------------------------------------------------------------------------------
    def remember_state(self, node: dict) -> None:
        annotations = node["metadata"].get("annotations") or {}
        if BEFORE_DRAIN_ANNOTATION in annotations:
            return  # drained before and not restored since: the first drain saw the admin's state
        before = {
            "unschedulable": bool(node["spec"].get("unschedulable")),
            "at": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
        self.kubectl.check(
            "annotate", "node", self.name, "--overwrite", f"{BEFORE_DRAIN_ANNOTATION}={json.dumps(before)}"
        )

    def taint(self, node: dict) -> bool:
        if has_taint(node, DRAIN_TAINT):
            return False
        if not self.check_mode:
            self.kubectl.check("taint", "node", self.name, "--overwrite", TAINT_ARGUMENT)
        self.report.append(f"{self.name}: tainted {TAINT_ARGUMENT}")
        return True

    def evict(self, deadline: float) -> None:
        seconds = max(1, int(deadline - time.monotonic()))
        args = ["drain", self.name, "--ignore-daemonsets", "--delete-emptydir-data", f"--timeout={seconds}s"]
        if self.params["force"]:
            args.append("--force")
        rc, out, err = self.kubectl.run(*args)
        if rc == 0:
            self.report.append(f"{self.name}: cordoned; its pods were evicted (disruption budgets respected)")
            return
        remaining = self.workload()
        budgets = blocking_budgets(
            remaining, self.kubectl.json("get", "poddisruptionbudgets", "--all-namespaces")["items"]
        )
        reasons = budgets or [why_still_there(pod) for pod in remaining] or [(err or out).strip()[-800:]]
        raise Unfinished(
            f"draining {self.name} did not finish within {self.params['timeout']} s: "
            f"{'; '.join(reasons)}. "
            f"{self.name} stays cordoned (the pods evicted before that run elsewhere); "
            f"`appliance node restore {self.name}` returns it to service.",
            [name_of(pod) for pod in remaining],
            budgets,
        )

    def wait_until_empty(self, deadline: float) -> list[dict]:
        while True:
            remaining = self.workload()
            if not remaining:
                return []
            if time.monotonic() >= deadline:
                return remaining
            time.sleep(1)

    # -- the three states ----------------------------------------------------------------------------
    def drained(self) -> dict:
        deadline = time.monotonic() + self.params["timeout"]
        node = self.read_node()
        before = self.workload()
        evict = self.params["evict"]
        done = (
            has_taint(node, DRAIN_TAINT) and (not evict or node["spec"].get("unschedulable")) and not before
        )
        if done:
            self.report.append(f"{self.name}: already drained; only DaemonSet and static pods run there")
            return {"changed": False}
        self.refuse_unsafe(node, "draining")
        self.refuse_orphans(before)
        if self.check_mode:
            self.report.append(f"{self.name}: would be drained; {len(before)} pod(s) would move")
            return {"changed": True}
        self.remember_state(node)
        if evict:
            self.evict(deadline)
        self.taint(node)
        remaining = self.wait_until_empty(deadline)
        if remaining:
            raise Unfinished(
                f"draining {self.name}: pods still there after {self.params['timeout']} s: "
                f"{'; '.join(why_still_there(pod) for pod in remaining)}. The node stays tainted; "
                f"`appliance node restore {self.name}` returns it to service.",
                [name_of(pod) for pod in remaining],
            )
        moved, lines = where_they_went(self.name, before, self.kubectl.pods())
        self.report.extend(lines)
        self.report.append(f"{self.name}: drained; only DaemonSet and static pods run there")
        return {"changed": True, "moved": moved}

    def down(self) -> dict:
        node = self.read_node()
        before = self.workload()
        if has_taint(node, DRAIN_TAINT) and not before:
            self.report.append(f"{self.name}: already marked down; no workload pod is bound to it")
            return {"changed": False}
        status = ready(node)
        # Kubernetes marks a node not Ready 40 s after its last heartbeat only: a Ready node whose kubelet
        # does not accept connections any more is down already.
        answering = self.kubelet_answers(node) if status == "True" else None
        if answering and not self.params["force"]:
            raise Refusal(
                f"{self.name} is Ready and its kubelet answers at {answering}:{KUBELET_PORT}: "
                "it is not down. "
                f"For planned maintenance use `appliance node drain {self.name}`; use --force to mark a "
                "running node down."
            )
        if self.check_mode:
            self.report.append(f"{self.name}: would be marked down; {len(before)} pod(s) would move")
            return {"changed": True}
        self.remember_state(node)
        self.taint(node)
        # The kubelet that would confirm the end of these pods is gone: their controllers replace pods only
        # once the API no longer lists them, so they are deleted here instead of after a timeout.
        for pod in before:
            self.kubectl.check(
                "delete", "pod", "--namespace", pod["metadata"]["namespace"], pod["metadata"]["name"],
                "--grace-period=0", "--force", "--wait=false",
            )  # fmt: skip
        if before:
            self.report.append(
                f"{self.name}: its {len(before)} pod(s) deleted from the API (Ready: {status})"
            )
        self.wait_until_empty(time.monotonic() + 30)
        moved, lines = where_they_went(self.name, before, self.kubectl.pods())
        self.report.extend(lines)
        return {"changed": True, "moved": moved}

    def restored(self) -> dict:
        node = self.read_node()
        annotations = node["metadata"].get("annotations") or {}
        recorded = annotations.get(BEFORE_DRAIN_ANNOTATION)
        tainted = has_taint(node, DRAIN_TAINT)
        changes = []
        if tainted:
            changes.append(["taint", "node", self.name, f"{TAINT_ARGUMENT}-"])
        unschedulable = bool(node["spec"].get("unschedulable"))
        stays_cordoned = unschedulable
        if recorded is not None:
            with contextlib.suppress(ValueError, AttributeError):  # unreadable: the cordon stays as it is
                stays_cordoned = bool(json.loads(recorded).get("unschedulable"))
            if stays_cordoned != unschedulable:
                changes.append(["cordon" if stays_cordoned else "uncordon", self.name])
            changes.append(["annotate", "node", self.name, f"{BEFORE_DRAIN_ANNOTATION}-"])
        if not self.check_mode:
            for change in changes:
                self.kubectl.check(*change)
        if tainted:
            self.report.append(f"{self.name}: {TAINT_ARGUMENT} removed")
        if stays_cordoned:
            why = "as it was before the drain" if recorded is not None else "not by a drain of this toolkit"
            self.report.append(f"{self.name}: stays cordoned ({why}); `kubectl uncordon` when intended")
        else:
            self.report.append(f"{self.name}: in service" + ("" if changes else " already"))
        if ready(node) != "True":
            self.report.append(f"{self.name}: not Ready yet; pods start there once its kubelet reports again")
        return {"changed": bool(changes)}
