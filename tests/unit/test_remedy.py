"""appliance.health.remedy: the agent carrying out the controller's instruction on its node, against an
in-memory stand-in for the Node API (get the node, patch its status conditions by type, as the API server
merges them); the commands it runs (systemctl reboot, nvidia-smi -r) are recorded, not run. On the lab the
real agent reboots a real node (tests/lab/test_gpu_health.py)."""

from __future__ import annotations

import json
from pathlib import Path

from appliance.health import node as nodeapi
from appliance.health.remediation import AGENT_CONDITION, INSTRUCTION, Record, RemediationConfig, plan
from appliance.health.remedy import Remedy, boot_identity, instruction_of


class FakeNodes:
    """GET /api/v1/nodes/NAME and PATCH .../status with conditions merged by type, as the API server does."""

    def __init__(self, node: dict) -> None:
        self.node = node
        self.events: list[str] = []

    def get(self, path: str) -> dict:
        assert path == f"/api/v1/nodes/{self.node['metadata']['name']}"
        return json.loads(json.dumps(self.node))

    def post(self, path: str, body: dict) -> dict:
        assert path == "/api/v1/namespaces/default/events"
        self.events.append(body["reason"])
        return body

    def patch(self, path: str, body: dict, kind: str = "strategic") -> dict:
        assert path.endswith("/status")
        conditions = self.node["status"].setdefault("conditions", [])
        for new in body["status"]["conditions"]:
            conditions[:] = [c for c in conditions if c["type"] != new["type"]] + [new]
        return self.node

    def condition(self) -> dict:
        return next(c for c in self.node["status"]["conditions"] if c["type"] == AGENT_CONDITION)


def node_with(instruction: dict | None) -> dict:
    annotations = {INSTRUCTION: json.dumps(instruction)} if instruction else {}
    return {"metadata": {"name": "worker-1", "annotations": annotations}, "status": {"conditions": []}}


class Commands:
    def __init__(self, answers: dict[str, tuple[int, str]] | None = None) -> None:
        self.ran: list[list[str]] = []
        self.answers = answers or {}

    def __call__(self, command: list[str], timeout: float) -> tuple[int, str]:
        self.ran.append(command)
        return self.answers.get(command[0], (0, ""))


PASSED = {"passed": True, "summary": "nvidia-smi lists 8 GPUs, none with a fault; no DCGM installed"}
REBOOT = {"id": "worker-1-20270115T080000Z-1", "action": "reboot", "gpus": []}
RESET = {"id": "worker-1-20270115T080000Z-2", "action": "reset-gpu", "gpus": ["00000000:1A:00.0"]}


def remedy(api: FakeNodes, commands: Commands, identity: str = "boot-a/100", qa=PASSED, reset=None) -> Remedy:
    return Remedy(
        api,  # type: ignore[arg-type]
        "worker-1",
        qa=lambda: qa,
        run=commands,
        identity=lambda: identity,
        reset_done=reset or (lambda gpus: None),
    )


def test_no_instruction_no_action():
    commands = Commands()
    assert remedy(FakeNodes(node_with(None)), commands).step() is None
    assert commands.ran == []


def test_a_reboot_is_recorded_with_the_boot_identity_then_done_once():
    api, commands = FakeNodes(node_with(REBOOT)), Commands()
    assert remedy(api, commands).step() == "Rebooting"
    assert commands.ran == [["systemctl", "reboot"]]
    assert api.condition()["reason"] == "Rebooting"
    assert api.condition()["message"] == f"id={REBOOT['id']}: boot=boot-a/100 rebooting the node"
    # The same boot (the reboot did not happen, or not yet): never a second reboot for this instruction.
    assert remedy(api, commands).step() is None
    assert commands.ran == [["systemctl", "reboot"]]


def test_after_the_reboot_the_agent_confirms_it_and_runs_the_qa():
    api, commands = FakeNodes(node_with(REBOOT)), Commands()
    remedy(api, commands).step()
    assert remedy(api, commands, identity="boot-a/900").step() == "QAPassed"
    condition = api.condition()
    assert (condition["reason"], condition["status"]) == ("QAPassed", "True")
    assert condition["message"] == f"id={REBOOT['id']}: " + PASSED["summary"]
    # The controller's plan reads these reports: Rebooted confirmed the step, QAPassed re-admits.
    fault_time = "2027-01-15T08:00:00Z"
    record = Record("confirmed", "reboot", fault_time, REBOOT["id"], 0.0, 0.0)
    node = api.get("/api/v1/nodes/worker-1")
    node["metadata"]["annotations"]["appliance.io/gpu-remediation"] = record.to_json()
    node["status"]["conditions"].append(
        {
            "type": nodeapi.CONDITION,
            "status": "False",
            "message": "reboot: x",
            "lastTransitionTime": fault_time,
        }
    )
    node["spec"] = {"taints": [{"key": nodeapi.TAINT_KEY, "value": "reboot", "effect": "NoSchedule"}]}
    (transition,) = plan([node], RemediationConfig(policy="auto"), 10.0)
    assert transition.kind == "readmit"


def test_a_failing_qa_after_the_reboot_is_reported():
    api, commands = FakeNodes(node_with(REBOOT)), Commands()
    remedy(api, commands).step()
    failed = {"passed": False, "problem": "nvidia-smi sees 7 of 8 GPUs (...)"}
    assert remedy(api, commands, identity="boot-b/5", qa=failed).step() == "QAFailed"
    assert api.condition()["status"] == "False"
    assert api.condition()["message"].endswith("nvidia-smi sees 7 of 8 GPUs (...)")


def test_a_reset_resets_the_gpu_the_fault_named_then_runs_the_qa():
    api, forgotten = FakeNodes(node_with(RESET)), []
    commands = Commands({"nvidia-smi": (0, "GPU 00000000:1A:00.0 was successfully reset.\n")})
    assert remedy(api, commands, reset=forgotten.append).step() == "QAPassed"
    assert commands.ran == [["nvidia-smi", "-r", "-i", "00000000:1A:00.0"]]
    assert forgotten == [("00000000:1A:00.0",)]


def test_a_reset_that_fails_is_reported_with_nvidia_smis_words_and_no_qa():
    api = FakeNodes(node_with(RESET))
    refusal = "Unable to reset GPU 00000000:1A:00.0 because it's being used by some other process\n"
    commands = Commands({"nvidia-smi": (255, refusal)})
    assert remedy(api, commands, qa={"passed": True}).step() == "ResetFailed"
    condition = api.condition()
    assert (condition["reason"], condition["status"]) == ("ResetFailed", "False")
    assert "exited 255: Unable to reset GPU 00000000:1A:00.0 because" in condition["message"]
    assert remedy(api, commands).step() is None  # reported once, not retried


def test_a_reset_without_a_named_gpu_resets_them_all():
    api, commands = FakeNodes(node_with({**RESET, "gpus": []})), Commands()
    remedy(api, commands).step()
    assert commands.ran == [["nvidia-smi", "-r"]]


def test_an_agent_restarted_between_the_reset_and_its_qa_runs_the_qa():
    api, commands = FakeNodes(node_with(RESET)), Commands()
    nodeapi.write_condition(api, "worker-1", AGENT_CONDITION, "True", "ResetDone", f"id={RESET['id']}: done")  # type: ignore[arg-type]
    assert remedy(api, commands).step() == "QAPassed"
    assert commands.ran == []


def test_instructions_the_agent_does_not_know_are_ignored():
    assert instruction_of(node_with({"id": "x", "action": "rm -rf"})) is None
    assert instruction_of(node_with({"action": "reboot"})) is None
    broken = node_with(None)
    broken["metadata"]["annotations"][INSTRUCTION] = "{not json"
    assert instruction_of(broken) is None


def test_boot_identity_is_the_boot_id_and_pid_1s_start_time(tmp_path: Path):
    (tmp_path / "sys/kernel/random").mkdir(parents=True)
    (tmp_path / "sys/kernel/random/boot_id").write_text("71576e95-199f-4167-a7bc-3fe1ad70fcd9\n")
    (tmp_path / "1").mkdir()
    fields = ["S", "0", "1", "1"] + ["0"] * 15 + ["3021730", "170000000"]
    (tmp_path / "1/stat").write_text("1 (systemd (x)) " + " ".join(fields) + "\n")
    assert boot_identity(tmp_path) == "71576e95-199f-4167-a7bc-3fe1ad70fcd9/3021730"
    assert "/" in boot_identity()  # this machine's own
