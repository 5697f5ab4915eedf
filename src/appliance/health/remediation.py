"""GPU remediation, the loop after isolation: what the controller does next for each isolated GPU node.

Issue 22 closes the loop the controller opened: isolated -> drained (the Run:ai drain taint, as `appliance
node drain` sets it) -> remediated (the node's agent resets the GPU(s) the fault names, or reboots the node,
on the controller's instruction) -> confirmed (a new boot; a reset nvidia-smi reports done) -> QA (the
agent runs re-admission's check) -> re-admitted (GPUHealthy True, reason Remediated; the taints the loop
set removed, an admin's cordon kept). Only the controller decides; the agent never remediates on its own.

This module is the decision, a pure function of the GPU nodes (plan()); the controller carries it out. Its
state lives on each Node, so a restarted controller goes on where it stopped:

- annotation `appliance.io/gpu-remediation`: the controller's record (JSON): step, action, GPUs, the fault
  it is for (the condition's transition time), the instruction id, when it started and last moved;
- annotation `appliance.io/gpu-remediation-history`: when this node's last remediations started (JSON list,
  the last `window_seconds`), for the limit of `max_remediations`;
- annotation `appliance.io/gpu-remediation-approved`: `appliance health approve NODE` sets it to the fault's
  transition time (policy `manual`);
- annotation `appliance.io/gpu-remediate`: the instruction to the agent (JSON: id, action, GPUs);
- condition `GPURemediation`, written by the agent: reason Rebooting, Rebooted, Resetting, ResetDone,
  RebootFailed, ResetFailed, QAPassed or QAFailed, message "id=<instruction id>: <detail>".

Safety, in plan():
- policy `off` remediates nothing, `manual` waits for an approval per fault, `auto` goes on by itself;
- at most `max_concurrent` nodes are in the active steps (draining, remediating, confirmed) at a time;
- a node under maintenance (the drain taint on it while no remediation of ours set it) is never remediated;
- the `max_remediations`-th remediation within `window_seconds` does not start: the node stays isolated with
  reason MultipleRemediations for a person;
- a step that does not move within `step_timeout_seconds` fails (RemediationTimedOut), never retried;
- a QA or a reset that fails leaves the node isolated with the agent's reason;
- only faults whose action is `reboot` or `reset-gpu` are remediated (`workflow` and unknown ones never).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from appliance.health import node as nodeapi
from appliance.health.xid import pci_id

RECORD = "appliance.io/gpu-remediation"
HISTORY = "appliance.io/gpu-remediation-history"
APPROVED = "appliance.io/gpu-remediation-approved"
INSTRUCTION = "appliance.io/gpu-remediate"
AGENT_CONDITION = "GPURemediation"
DRAIN_TAINT = {"key": "runai", "value": "drain", "effect": "NoExecute"}  # appliance node drain's taint

POLICIES = ("off", "manual", "auto")
REMEDIABLE = ("reboot", "reset-gpu")
ACTIVE_STEPS = ("draining", "remediating", "confirmed")
# The agent's reasons: what each means for the step the record is in.
AGENT_DONE = {"reboot": "Rebooted", "reset-gpu": "ResetDone"}
AGENT_FAILED = ("RebootFailed", "ResetFailed", "QAFailed")


@dataclass(frozen=True)
class RemediationConfig:
    policy: str = "manual"
    max_concurrent: int = 1
    max_remediations: int = 2
    window_seconds: float = 86400.0
    step_timeout_seconds: float = 900.0

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise ValueError(f"remediation {self.policy!r}: expected one of {', '.join(POLICIES)}")
        if self.max_concurrent < 1:
            raise ValueError(f"max_concurrent_remediations {self.max_concurrent!r}: expected 1 or more")
        if self.max_remediations < 1:
            raise ValueError(f"max_remediations {self.max_remediations!r}: expected 1 or more")
        if self.step_timeout_seconds <= 0 or self.window_seconds <= 0:
            raise ValueError("remediation step timeout and window: expected positive numbers of seconds")


@dataclass(frozen=True)
class Record:
    """The controller's record of one node's remediation (annotation RECORD)."""

    step: str  # awaiting-approval, draining, remediating, confirmed, failed
    action: str  # reboot or reset-gpu
    fault: str  # the GPUHealthy=False transition time it is for
    id: str  # the instruction's id: "<node>-<fault time>-<attempt>", stable across controller restarts
    started: float
    updated: float
    gpus: tuple[str, ...] = ()
    drained: bool = False  # the drain taint is ours to remove
    reason: str = ""  # why it failed, for a step "failed"
    detail: str = ""

    def to_json(self) -> str:
        data = {**self.__dict__, "gpus": list(self.gpus)}
        return json.dumps(data, sort_keys=True)

    @classmethod
    def from_json(cls, text: str | None) -> Record | None:
        if not text:
            return None
        try:
            data = json.loads(text)
            return cls(**{**data, "gpus": tuple(data.get("gpus") or ())})
        except (TypeError, ValueError):
            return None  # a record damaged by hand: treated as none (the node stays isolated meanwhile)


@dataclass(frozen=True)
class Transition:
    """One thing plan() says to do to one node."""

    node: str
    # await (manual: wait for approval), wait (no free slot), drain (then instruct the agent), confirm,
    # readmit, fail, hold (MultipleRemediations), skip (under maintenance), forget (the fault is gone)
    kind: str
    record: Record | None = None  # the record as it should be afterwards (None: removed)
    reason: str = ""  # the Event reason
    message: str = ""


@dataclass(frozen=True)
class NodeView:
    """What plan() reads of one node."""

    name: str
    fault: nodeapi.NodeFault | None
    isolated: bool
    record: Record | None
    history: tuple[float, ...]
    approved: str
    drain_tainted: bool
    agent: dict[str, Any] = field(default_factory=dict)  # the agent's GPURemediation condition


def agent_condition(node: dict[str, Any]) -> dict[str, Any]:
    for item in node.get("status", {}).get("conditions") or []:
        if item.get("type") == AGENT_CONDITION:
            return item
    return {}


def view(node: dict[str, Any]) -> NodeView:
    annotations = node.get("metadata", {}).get("annotations") or {}
    try:
        history = tuple(
            t for t in (nodeapi.parse_time(s) for s in json.loads(annotations.get(HISTORY, "[]"))) if t
        )
    except (TypeError, ValueError):
        history = ()
    taints = node.get("spec", {}).get("taints") or []
    return NodeView(
        name=nodeapi.name_of(node),
        fault=nodeapi.fault_of(node),
        isolated=nodeapi.fault_taint(node) is not None,
        record=Record.from_json(annotations.get(RECORD)),
        history=history,
        approved=annotations.get(APPROVED, ""),
        drain_tainted=any(
            t.get("key") == DRAIN_TAINT["key"] and t.get("effect") == DRAIN_TAINT["effect"] for t in taints
        ),
        agent=agent_condition(node),
    )


def instruction_id(name: str, fault: str, attempt: int) -> str:
    return f"{name}-{fault.replace(':', '').replace('-', '')}-{attempt}"


def reported(agent: dict[str, Any], record: Record) -> str | None:
    """The agent's reason for RECORD's instruction, or None when it has reported nothing for it yet."""
    message = agent.get("message", "")
    if not message.startswith(f"id={record.id}:") and message != f"id={record.id}":
        return None
    return agent.get("reason") or None


def gpus_of(fault: nodeapi.NodeFault) -> tuple[str, ...]:
    """The GPU the fault's line names, as nvidia-smi names it (00000000:4E:00.0): an Xid's "(PCI:0000:4e:00)",
    a finding's "GPU 2 (00000000:47:00.0)". None named: () (a reset then resets every GPU of the node)."""
    gpu = pci_id(fault.line)
    return (gpu,) if gpu else ()


def plan(nodes: list[dict[str, Any]], config: RemediationConfig, now: float) -> list[Transition]:
    """What to do next on each GPU node, from the nodes alone (a pure function). The oldest fault goes first
    when remediation slots are few."""
    views = sorted((view(node) for node in nodes), key=lambda v: (v.fault.since if v.fault else "", v.name))
    slots = [config.max_concurrent - sum(1 for v in views if v.record and v.record.step in ACTIVE_STEPS)]
    transitions: list[Transition] = []
    for v in views:
        record = v.record
        if record is not None and _ended(v, record):
            transitions.append(Transition(v.name, "forget", None, "GPURemediationEnded", "the fault is gone"))
            if record.step in ACTIVE_STEPS:
                slots[0] += 1
            continue
        if record is None:
            record = _begin(v, config, now, transitions)
            if record is None:
                continue
        if record.step == "awaiting-approval":
            _start(v, record, config, now, slots, transitions)
        elif record.step in ACTIVE_STEPS:
            _follow(v, record, config, now, transitions)
    return transitions


def _ended(v: NodeView, record: Record) -> bool:
    """Re-admitted by a person (or, for a remediation under way, a graver fault replaced the one it was
    for): the record goes, with the instruction and the drain taint it set. A failed one stays for a
    person."""
    if v.fault is None:
        return True
    return v.fault.since != record.fault and record.step != "failed"


def _begin(v: NodeView, config: RemediationConfig, now: float, out: list[Transition]) -> Record | None:
    """The record of an isolated node's first step, or None where no remediation starts."""
    fault = v.fault
    if fault is None or not v.isolated or config.policy == "off" or fault.action not in REMEDIABLE:
        return None
    if v.drain_tainted:
        out.append(
            Transition(
                v.name,
                "skip",
                None,
                "GPURemediationSkipped",
                "under maintenance (drained by an operator): not remediated",
            )
        )
        return None
    record = Record(
        step="awaiting-approval",
        action=fault.action,
        fault=fault.since,
        id=instruction_id(v.name, fault.since, len(v.history) + 1),
        started=now,
        updated=now,
        gpus=gpus_of(fault) if fault.action == "reset-gpu" else (),
    )
    recent = [t for t in v.history if now - t < config.window_seconds]
    if len(recent) >= config.max_remediations:
        message = (
            f"{len(recent)} remediations within {config.window_seconds:.0f} s: "
            f"left isolated for a person ({fault.reason})"
        )
        held = _with(record, step="failed", reason="MultipleRemediations")
        out.append(Transition(v.name, "hold", held, "MultipleRemediations", message))
        return None
    if config.policy == "manual" and v.approved != fault.since:
        message = f"{fault.action} for {fault.reason} waits for `appliance health approve {v.name}`"
        out.append(Transition(v.name, "await", record, "GPURemediationAwaitingApproval", message))
        return None
    return record


def _start(
    v: NodeView,
    record: Record,
    config: RemediationConfig,
    now: float,
    slots: list[int],
    out: list[Transition],
) -> None:
    """An approved (or automatic) remediation starts with the drain, when a slot is free."""
    if config.policy == "manual" and v.approved != record.fault:
        return
    if slots[0] < 1:
        if v.record is None or v.record.detail != "waiting":
            busy = config.max_concurrent
            message = f"{busy} of {busy} remediations under way: this one waits for its turn"
            out.append(
                Transition(v.name, "wait", _with(record, detail="waiting"), "GPURemediationWaiting", message)
            )
        return
    slots[0] -= 1
    reason = v.fault.reason if v.fault else "the fault"
    out.append(
        Transition(
            v.name,
            "drain",
            _with(record, step="draining", updated=now, detail=""),
            "GPURemediationDraining",
            f"{record.action} for {reason}: draining the node",
        )
    )


def _follow(
    v: NodeView, record: Record, config: RemediationConfig, now: float, out: list[Transition]
) -> None:
    """A remediation under way: on to the next step when the agent reports, failed when it does not."""
    if now - record.updated > config.step_timeout_seconds:
        failed = _with(record, step="failed", updated=now, reason="RemediationTimedOut")
        message = f"step {record.step} did not end within {config.step_timeout_seconds:.0f} s: left isolated"
        out.append(Transition(v.name, "fail", failed, "RemediationTimedOut", message))
        return
    if record.step == "draining":
        out.append(Transition(v.name, "drain", record))  # a controller restarted mid-drain drains again
        return
    answer, message = reported(v.agent, record), v.agent.get("message", "")
    if answer in AGENT_FAILED:
        failed = _with(record, step="failed", updated=now, reason=answer, detail=message)
        out.append(Transition(v.name, "fail", failed, answer, message))
    elif record.step == "remediating" and answer in (AGENT_DONE[record.action], "QAPassed"):
        # The agent may have gone on to its QA before this look: confirmed first, re-admitted next.
        out.append(
            Transition(v.name, "confirm", _with(record, step="confirmed", updated=now), answer, message)
        )
    elif record.step == "confirmed" and answer == "QAPassed":
        out.append(Transition(v.name, "readmit", None, "GPURemediated", message))


def _with(record: Record, **changes: Any) -> Record:
    return Record(**{**record.__dict__, **changes})


__all__ = [
    "AGENT_CONDITION",
    "APPROVED",
    "DRAIN_TAINT",
    "HISTORY",
    "INSTRUCTION",
    "RECORD",
    "NodeView",
    "Record",
    "RemediationConfig",
    "Transition",
    "plan",
    "view",
]
