"""appliance.health.remediation.plan: what the controller does next for each isolated GPU node (issue 22),
a pure function of Node objects shaped as the API server returns them. The controller carrying the plan
out, and the agent's side, run on the lab (tests/lab/test_gpu_health.py)."""

from __future__ import annotations

import json
import time

import pytest

from appliance.health import node as nodeapi
from appliance.health.remediation import (
    AGENT_CONDITION,
    APPROVED,
    HISTORY,
    RECORD,
    Record,
    RemediationConfig,
    gpus_of,
    plan,
)

NOW = 1_800_000_000.0
XID79 = "reboot: NVRM: Xid (PCI:0000:4e:00): 79, pid='<unknown>', name=<unknown>, GPU has fallen off the bus."
XID95 = "reset-gpu: NVRM: Xid (PCI:0000:1a:00): 95, pid=7, name=python, Uncontained ECC error"


def iso(seconds_ago: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(NOW - seconds_ago))


def gpu_node(
    name: str,
    message: str | None = XID79,
    since: float = 60,
    isolated: bool = True,
    record: Record | None = None,
    history: list[float] = (),
    approved: str = "",
    drained: bool = False,
    agent: tuple[str, str] | None = None,
) -> dict:
    conditions = [{"type": "Ready", "status": "True"}]
    if message is not None:
        conditions.append(
            {
                "type": nodeapi.CONDITION,
                "status": "False",
                "reason": "Xid" + message.split("): ")[1].split(",")[0],
                "message": message,
                "lastTransitionTime": iso(since),
            }
        )
    if agent is not None:
        conditions.append(
            {"type": AGENT_CONDITION, "status": "True", "reason": agent[0], "message": agent[1]}
        )
    taints = []
    if isolated:
        taints.append({"key": nodeapi.TAINT_KEY, "value": message.partition(":")[0], "effect": "NoSchedule"})
    if drained:
        taints.append({"key": "runai", "value": "drain", "effect": "NoExecute"})
    annotations = {}
    if record is not None:
        annotations[RECORD] = record.to_json()
    if history:
        annotations[HISTORY] = json.dumps([iso(ago) for ago in history])
    if approved:
        annotations[APPROVED] = approved
    return {
        "metadata": {"name": name, "annotations": annotations, "resourceVersion": "1"},
        "spec": {"taints": taints},
        "status": {"conditions": conditions},
    }


def kinds(transitions) -> list[tuple[str, str]]:
    return [(t.node, t.kind) for t in transitions]


AUTO = RemediationConfig(policy="auto")
MANUAL = RemediationConfig(policy="manual")


def record(
    step: str, action: str = "reboot", fault_ago: float = 60, updated_ago: float = 10, **more
) -> Record:
    fault = iso(fault_ago)
    return Record(
        step=step,
        action=action,
        fault=fault,
        id=f"worker-1-{fault}-1",
        started=NOW - 100,
        updated=NOW - updated_ago,
        **more,
    )


def test_auto_drains_an_isolated_node_at_once():
    (transition,) = plan([gpu_node("worker-1")], AUTO, NOW)
    assert (transition.kind, transition.reason) == ("drain", "GPURemediationDraining")
    assert transition.record.step == "draining" and transition.record.action == "reboot"
    assert transition.record.fault == iso(60) and transition.record.gpus == ()


def test_off_and_unisolated_and_workflow_faults_are_never_remediated():
    assert plan([gpu_node("worker-1")], RemediationConfig(policy="off"), NOW) == []
    assert plan([gpu_node("worker-1", isolated=False)], AUTO, NOW) == []  # deferred by the breaker
    workflow = "workflow: NVRM: Xid (PCI:0000:4e:00): 48, pid=1, name=x, DBE"
    assert plan([gpu_node("worker-1", workflow)], AUTO, NOW) == []
    assert plan([gpu_node("worker-1", None, isolated=False)], AUTO, NOW) == []


def test_manual_waits_for_an_approval_of_this_very_fault():
    (transition,) = plan([gpu_node("worker-1")], MANUAL, NOW)
    assert (transition.kind, transition.record.step) == ("await", "awaiting-approval")
    assert "appliance health approve worker-1" in transition.message
    waiting = transition.record
    assert plan([gpu_node("worker-1", record=waiting)], MANUAL, NOW) == []  # nothing until approved
    stale = gpu_node("worker-1", record=waiting, approved=iso(3600))  # an approval of an older fault
    assert plan([stale], MANUAL, NOW) == []
    (transition,) = plan([gpu_node("worker-1", record=waiting, approved=iso(60))], MANUAL, NOW)
    assert (transition.kind, transition.record.step) == ("drain", "draining")


def test_a_node_drained_for_maintenance_is_isolated_but_never_remediated():
    (transition,) = plan([gpu_node("worker-1", drained=True)], AUTO, NOW)
    assert (transition.kind, transition.reason, transition.record) == ("skip", "GPURemediationSkipped", None)


def test_our_own_drain_taint_does_not_count_as_maintenance():
    draining = record("draining", drained=True)
    (transition,) = plan([gpu_node("worker-1", record=draining, drained=True)], AUTO, NOW)
    assert transition.kind == "drain"  # goes on draining (a restarted controller), not skipped


def test_the_next_fault_within_the_window_after_max_remediations_is_held_for_a_person():
    node = gpu_node("worker-1", history=[3600 * 20, 3600 * 2])
    (transition,) = plan([node], AUTO, NOW)
    assert (transition.kind, transition.reason) == ("hold", "MultipleRemediations")
    assert transition.record.step == "failed" and transition.record.reason == "MultipleRemediations"
    assert "2 remediations within 86400 s" in transition.message
    # Older remediations than the window do not count.
    (transition,) = plan([gpu_node("worker-1", history=[3600 * 30, 3600 * 2])], AUTO, NOW)
    assert transition.kind == "drain" and transition.record.id.endswith("-3")


def test_one_remediation_at_a_time_the_oldest_fault_first_the_other_waits_once():
    nodes = [gpu_node("worker-3", since=30), gpu_node("worker-1", since=90)]
    transitions = plan(nodes, AUTO, NOW)
    assert kinds(transitions) == [("worker-1", "drain"), ("worker-3", "wait")]
    waiting = transitions[1].record
    assert waiting.step == "awaiting-approval" and waiting.detail == "waiting"
    busy = gpu_node("worker-1", since=90, record=record("remediating", fault_ago=90))
    # The waiting node says so once (its record remembers it), then waits quietly for its turn.
    assert plan([busy, gpu_node("worker-3", since=30, record=waiting)], AUTO, NOW) == []
    done = gpu_node("worker-1", None, isolated=False, record=record("confirmed", fault_ago=90))
    assert kinds(plan([done, gpu_node("worker-3", since=30, record=waiting)], AUTO, NOW)) == [
        ("worker-1", "forget"),
        ("worker-3", "drain"),
    ]


def test_two_slots_let_two_nodes_go():
    nodes = [gpu_node("worker-3", since=30), gpu_node("worker-1", since=90)]
    two = RemediationConfig(policy="auto", max_concurrent=2)
    assert kinds(plan(nodes, two, NOW)) == [("worker-1", "drain"), ("worker-3", "drain")]


def test_the_agents_reports_move_the_steps_reboot_then_qa_then_readmission():
    remediating = record("remediating")
    node = gpu_node("worker-1", record=remediating, agent=("Rebooting", f"id={remediating.id}: boot a"))
    assert plan([node], AUTO, NOW) == []
    rebooted = ("Rebooted", f"id={remediating.id}: boot b (was a)")
    (transition,) = plan([gpu_node("worker-1", record=remediating, agent=rebooted)], AUTO, NOW)
    assert (transition.kind, transition.record.step, transition.reason) == (
        "confirm",
        "confirmed",
        "Rebooted",
    )
    confirmed = transition.record
    qa = ("QAPassed", f"id={remediating.id}: nvidia-smi lists 1 GPUs, none with a fault")
    (transition,) = plan([gpu_node("worker-1", record=confirmed, agent=qa)], AUTO, NOW)
    assert (transition.kind, transition.reason, transition.record) == ("readmit", "GPURemediated", None)


def test_a_report_for_another_instruction_is_not_this_ones():
    remediating = record("remediating")
    old = ("Rebooted", "id=worker-1-20260101T000000Z-1: boot b (was a)")
    assert plan([gpu_node("worker-1", record=remediating, agent=old)], AUTO, NOW) == []


@pytest.mark.parametrize("reason", ["QAFailed", "ResetFailed"])
def test_a_failed_qa_or_reset_leaves_the_node_isolated_with_the_reason(reason):
    confirmed = record("confirmed", action="reset-gpu")
    failed = (reason, f"id={confirmed.id}: nvidia-smi sees 0 of 1 GPUs")
    (transition,) = plan([gpu_node("worker-1", XID95, record=confirmed, agent=failed)], AUTO, NOW)
    assert (transition.kind, transition.reason, transition.record.step) == ("fail", reason, "failed")
    held = transition.record
    assert plan([gpu_node("worker-1", XID95, record=held, agent=failed)], AUTO, NOW) == []  # never retried


def test_a_step_that_does_not_move_times_out_once():
    stuck = record("remediating", updated_ago=901)
    (transition,) = plan([gpu_node("worker-1", record=stuck)], AUTO, NOW)
    assert (transition.kind, transition.reason) == ("fail", "RemediationTimedOut")
    assert plan([gpu_node("worker-1", record=transition.record)], AUTO, NOW) == []


def test_a_person_readmitting_the_node_ends_the_remediation():
    (transition,) = plan(
        [gpu_node("worker-1", None, isolated=False, record=record("remediating"))], AUTO, NOW
    )
    assert (transition.kind, transition.record) == ("forget", None)


def test_a_graver_fault_during_a_remediation_restarts_it_but_a_failed_one_stays():
    under_way = record("remediating", action="reset-gpu", fault_ago=600)
    (transition,) = plan([gpu_node("worker-1", since=5, record=under_way)], AUTO, NOW)
    assert transition.kind == "forget"
    failed = record("failed", fault_ago=600, reason="QAFailed")
    assert plan([gpu_node("worker-1", since=5, record=failed)], AUTO, NOW) == []


def test_a_reset_names_the_gpu_of_the_fault_as_nvidia_smi_names_it():
    (transition,) = plan([gpu_node("worker-1", XID95)], AUTO, NOW)
    assert transition.record.action == "reset-gpu" and transition.record.gpus == ("00000000:1A:00.0",)
    finding = nodeapi.NodeFault(
        "ECCUncorrected", "reset-gpu", "reset-gpu: GPU 2 (00000000:47:00.0) has 3", ""
    )
    assert gpus_of(finding) == ("00000000:47:00.0",)
    assert gpus_of(nodeapi.NodeFault("GPUMissing", "reboot", "reboot: nvidia-smi failed: exit 9", "")) == ()


def test_a_record_damaged_by_hand_is_treated_as_none():
    node = gpu_node("worker-1")
    node["metadata"]["annotations"][RECORD] = "{not json"
    assert kinds(plan([node], AUTO, NOW)) == [("worker-1", "drain")]


def test_bad_settings_are_refused_naming_them():
    with pytest.raises(ValueError, match="remediation 'sometimes'"):
        RemediationConfig(policy="sometimes")
    with pytest.raises(ValueError, match="max_concurrent_remediations 0"):
        RemediationConfig(max_concurrent=0)
