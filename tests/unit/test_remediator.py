"""The controller's remediator and the agent's remedy together, against an in-memory Node API that merges
patches as the API server does (labels and annotations merged, null deletes, taints replaced, status
conditions merged by type). The drain is node maintenance's (recorded here: it runs kubectl on the lab);
the reboot and nvidia-smi are recorded commands. The lab runs the real thing (tests/lab/test_gpu_health.py).
"""

from __future__ import annotations

import copy
import json
import sys
import time
import urllib.parse
from pathlib import Path

from appliance.health import node as nodeapi
from appliance.health.remediation import HISTORY, INSTRUCTION, RECORD, RemediationConfig, view
from appliance.health.remediator import PAUSED, Remediator, Settings
from appliance.health.remedy import Remedy
from tests.conftest import PROJECT

# On a node, node maintenance's modules sit beside the package (appliance.health_package ships them there).
sys.path.insert(0, str(PROJECT / "plugins" / "module_utils"))

SELECTOR = "node-role.kubernetes.io/runai-gpu-worker"


class FakeAPI:
    def __init__(self, *nodes: dict) -> None:
        self.nodes = {n["metadata"]["name"]: n for n in nodes}
        self.pods: list[dict] = []
        self.events: list[str] = []  # the agent's

    def get(self, path: str) -> dict:
        route, _, query = path.partition("?")
        if route == "/api/v1/nodes":
            assert urllib.parse.parse_qs(query)["labelSelector"] == [SELECTOR]
            return {"items": copy.deepcopy(list(self.nodes.values()))}
        if route.startswith("/api/v1/nodes/"):
            return copy.deepcopy(self.nodes[route.rsplit("/", 1)[1]])
        if route.endswith("/pods"):
            node = urllib.parse.parse_qs(query)["fieldSelector"][0].split("=")[1]
            return {"items": [p for p in self.pods if p["spec"]["nodeName"] == node]}
        raise AssertionError(path)

    def post(self, path: str, body: dict) -> dict:
        assert path == "/api/v1/namespaces/default/events"
        self.events.append(body["reason"])
        return body

    def patch(self, path: str, body: dict, patch_type: str = "strategic") -> dict:
        name = path.split("/")[4]
        node = self.nodes[name]
        if path.endswith("/status"):
            conditions = node["status"]["conditions"]
            for new in body["status"]["conditions"]:
                conditions[:] = [c for c in conditions if c["type"] != new["type"]] + [new]
            return node
        for key in ("labels", "annotations"):
            for k, v in (body.get("metadata", {}).get(key) or {}).items():
                target = node["metadata"].setdefault(key, {})
                if v is None:
                    target.pop(k, None)
                else:
                    target[k] = v
        if "spec" in body:
            node["spec"].update(body["spec"])
        return node


class FakeMaintenance:
    """node maintenance's drain as the lab runs it: the Run:ai taint on, then off with the state before."""

    def __init__(self, api: FakeAPI, calls: list[str]) -> None:
        self.api, self.calls = api, calls

    def __call__(self, name: str) -> FakeMaintenance:
        self.name = name
        return self

    def drained(self) -> dict:
        self.calls.append(f"drain {self.name}")
        node = self.api.nodes[self.name]
        node["spec"]["taints"] = [
            *node["spec"]["taints"],
            {"key": "runai", "value": "drain", "effect": "NoExecute"},
        ]
        return {"changed": True}

    def restored(self) -> dict:
        self.calls.append(f"restore {self.name}")
        node = self.api.nodes[self.name]
        node["spec"]["taints"] = [t for t in node["spec"]["taints"] if t["key"] != "runai"]
        return {"changed": True}


def isolated_node(name: str, message: str, cordoned: bool = False) -> dict:
    return {
        "metadata": {
            "name": name,
            "resourceVersion": "7",
            "labels": {SELECTOR: "", "nvidia.com/gpu.deploy.device-plugin": "true"},
            "annotations": {},
        },
        "spec": {
            "unschedulable": cordoned,
            "taints": [
                {"key": nodeapi.TAINT_KEY, "value": message.partition(":")[0], "effect": "NoSchedule"}
            ],
        },
        "status": {
            "conditions": [
                {
                    "type": nodeapi.CONDITION,
                    "status": "False",
                    "reason": "Xid79",
                    "message": message,
                    "lastTransitionTime": nodeapi.now_iso(),
                }
            ]
        },
    }


def setup(message: str, policy: str = "auto"):
    api, calls, events = FakeAPI(isolated_node("worker-1", message, cordoned=True)), [], []
    settings = Settings(Path("/etc/x.kubeconfig"), SELECTOR, RemediationConfig(policy=policy), interval=0)
    remediator = Remediator(
        api,  # type: ignore[arg-type]
        settings,
        event=lambda node, reason, message, warning: events.append(reason),
        maintenance=FakeMaintenance(api, calls),
    )
    return api, remediator, calls, events


def agent(api: FakeAPI, identity: str, commands: list[list[str]]) -> Remedy:
    def run(command: list[str], timeout: float) -> tuple[int, str]:
        commands.append(command)
        return 0, ""

    qa = {"passed": True, "summary": "nvidia-smi lists 1 GPUs, none with a fault; no DCGM installed"}
    return Remedy(api, "worker-1", qa=lambda: qa, run=run, identity=lambda: identity)  # type: ignore[arg-type]


XID79 = "reboot: NVRM: Xid (PCI:0000:4e:00): 79, pid='<unknown>', name=<unknown>, GPU has fallen off the bus."
XID95 = "reset-gpu: NVRM: Xid (PCI:0000:1a:00): 95, pid=7, name=python, Uncontained ECC error"


def test_a_reboot_fault_goes_round_the_whole_loop_and_keeps_the_admins_cordon():
    api, remediator, calls, events = setup(XID79)
    commands: list[list[str]] = []
    assert [t.kind for t in remediator.once()] == ["drain"]
    node = api.nodes["worker-1"]
    assert calls == ["drain worker-1"] and view(node).record.step == "remediating"
    assert json.loads(node["metadata"]["annotations"][INSTRUCTION])["action"] == "reboot"
    assert len(json.loads(node["metadata"]["annotations"][HISTORY])) == 1
    assert agent(api, "boot-a/1", commands).step() == "Rebooting"
    assert commands == [["systemctl", "reboot"]]
    assert remediator.once() == []  # waiting for the node to come back
    assert agent(api, "boot-a/2", commands).step() == "QAPassed"  # the agent after the reboot
    assert [t.kind for t in remediator.once()] == ["confirm"]
    assert [t.kind for t in remediator.once()] == ["readmit"]
    condition = nodeapi.condition(node)
    assert (condition["status"], condition["reason"]) == ("True", "Remediated")
    assert node["spec"]["taints"] == [] and node["spec"]["unschedulable"] is True  # the admin's cordon
    assert (
        RECORD not in node["metadata"]["annotations"] and INSTRUCTION not in node["metadata"]["annotations"]
    )
    assert calls == ["drain worker-1", "restore worker-1"]
    assert events == ["GPURemediationDraining", "GPURemediating", "QAPassed", "GPURemediated"]
    # The agent's own Events between them: the whole story, in order.
    assert api.events == ["GPURebooting", "GPURebooted", "GPUQAPassed"]
    assert remediator.once() == []


def test_a_reset_pauses_the_gpu_operators_operands_and_resets_the_named_gpu():
    api, remediator, _, events = setup(XID95)
    commands: list[list[str]] = []
    remediator.once()
    node = api.nodes["worker-1"]
    assert node["metadata"]["labels"]["nvidia.com/gpu.deploy.device-plugin"] == PAUSED
    assert agent(api, "boot-a/1", commands).step() == "QAPassed"
    assert commands == [["nvidia-smi", "-r", "-i", "00000000:1A:00.0"]]
    assert [t.kind for t in remediator.once()] == ["confirm"]
    assert node["metadata"]["labels"]["nvidia.com/gpu.deploy.device-plugin"] == "true"
    assert [t.kind for t in remediator.once()] == ["readmit"]
    assert events[-2:] == ["QAPassed", "GPURemediated"]
    assert api.events == ["GPUResetting", "GPUResetDone", "GPUQAPassed"]


def test_manual_waits_for_the_approval_and_the_third_fault_is_held():
    api, remediator, calls, events = setup(XID79, policy="manual")
    assert [t.kind for t in remediator.once()] == ["await"]
    assert remediator.once() == [] and calls == []
    node = api.nodes["worker-1"]
    stamps = [nodeapi.now_iso(), nodeapi.now_iso()]
    node["metadata"]["annotations"] = {HISTORY: json.dumps(stamps)}  # two remediations today
    assert [t.kind for t in remediator.once()] == ["hold"]
    condition = nodeapi.condition(node)
    assert (condition["status"], condition["reason"]) == ("False", "MultipleRemediations")
    assert remediator.once() == [] and calls == []
    assert events == ["GPURemediationAwaitingApproval", "MultipleRemediations"]


def test_a_qa_that_fails_leaves_the_node_isolated_with_the_reason():
    api, remediator, _, events = setup(XID79)
    remediator.once()
    commands: list[list[str]] = []
    agent(api, "boot-a/1", commands).step()
    failing = agent(api, "boot-a/2", commands)
    failing.qa = lambda: {"passed": False, "problem": "nvidia-smi sees 0 of 1 GPUs (none)"}
    assert failing.step() == "QAFailed"
    assert [t.kind for t in remediator.once()] == ["fail"]
    node = api.nodes["worker-1"]
    assert nodeapi.condition(node)["reason"] == "QAFailed"
    assert nodeapi.fault_taint(node) is not None and INSTRUCTION not in node["metadata"]["annotations"]
    assert remediator.once() == [] and events[-1] == "QAFailed"


def test_the_statuses_of_the_steps_are_kept_for_health_status():
    api, remediator, _, _ = setup(XID79)
    remediator.once()
    assert remediator.last == {"worker-1": "remediating"}
    assert time.time() - view(api.nodes["worker-1"]).record.started < 60
