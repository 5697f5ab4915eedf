"""The node agent's side of GPU remediation: it carries out the controller's instruction on its own node,
once, and reports each step as the node condition GPURemediation (appliance.health.remediation has the
controller's side and the whole contract).

The instruction is the annotation `appliance.io/gpu-remediate` on the node: {"id", "action", "gpus"}.
- reboot: the agent writes Rebooting with the node's boot identity, then reboots the node. When it starts
  again and finds Rebooting for that instruction with another identity, the reboot is confirmed: Rebooted.
  With the same identity the reboot did not happen; the agent never reboots twice for one instruction (the
  controller's step timeout reports it).
- reset-gpu: Resetting, `nvidia-smi -r -i <GPUs>` (every GPU where the fault named none), then ResetDone
  or ResetFailed with nvidia-smi's words.
- then re-admission's QA check on the node (operations.qa): QAPassed or QAFailed. The controller re-admits.

Boot identity: the kernel's boot ID and PID 1's start time (in clock ticks since boot): a real reboot
changes the first; on the lab, whose nodes share this machine's kernel, a node's reboot restarts its
container and changes the second.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from appliance.health import node as nodeapi
from appliance.health.kube import Client, KubeError
from appliance.health.remediation import AGENT_CONDITION, INSTRUCTION, agent_condition
from appliance.health.smi import Run, run_command

log = logging.getLogger("appliance.health.remedy")


def boot_identity(proc: Path = Path("/proc")) -> str:
    boot_id = (proc / "sys/kernel/random/boot_id").read_text().strip()
    # /proc/1/stat: "1 (systemd) S 0 ..."; field 22, counted after the command's closing parenthesis.
    fields = (proc / "1/stat").read_text().rpartition(")")[2].split()
    return f"{boot_id}/{fields[19]}"


def instruction_of(node: dict[str, Any]) -> dict[str, Any] | None:
    text = (node.get("metadata", {}).get("annotations") or {}).get(INSTRUCTION)
    try:
        instruction = json.loads(text) if text else None
    except ValueError:
        return None
    if not isinstance(instruction, dict) or not instruction.get("id"):
        return None
    if instruction.get("action") not in ("reboot", "reset-gpu"):
        return None
    return instruction


class Remedy:
    def __init__(
        self,
        client: Client,
        node: str,
        qa: Callable[[], dict[str, Any]],
        run: Run = run_command,
        identity: Callable[[], str] = boot_identity,
        reboot: tuple[str, ...] = ("systemctl", "reboot"),
        nvidia_smi: str = "nvidia-smi",
        reset_done: Callable[[tuple[str, ...]], None] = lambda gpus: None,
    ) -> None:
        self.client = client
        self.node = node
        self.qa = qa
        self.run = run
        self.identity = identity
        self.reboot = reboot
        self.nvidia_smi = nvidia_smi
        self.reset_done = reset_done  # the agent forgets the reset GPUs' repeat windows

    def report(self, instruction: dict[str, Any], reason: str, detail: str, status: str = "Unknown") -> None:
        """The condition (the controller reads it) and an Event (the story an operator reads)."""
        message = f"id={instruction['id']}: {detail}"
        nodeapi.write_condition(self.client, self.node, AGENT_CONDITION, status, reason, message)
        log.warning("remediation %s on %s: %s %s", instruction["id"], self.node, reason, detail)
        try:
            nodeapi.record_event(self.client, self.node, f"GPU{reason}", message, warning=status == "False")
        except KubeError as error:  # the condition is what counts; the Event is for people
            log.error("event %s on %s: %s", reason, self.node, error)

    def step(self) -> str | None:
        """One look at the node: carry the instruction one step on. Returns the reason it reported, if any."""
        item = nodeapi.get_node(self.client, self.node)
        instruction = instruction_of(item)
        if instruction is None:
            return None
        condition = agent_condition(item)
        message = condition.get("message", "")
        mine = message.startswith(f"id={instruction['id']}:")
        reason = condition.get("reason") if mine else None
        if reason is None:
            return self.begin(instruction)
        if reason == "Rebooting":
            before = message.partition("boot=")[2].split(" ")[0]
            now = self.identity()
            if now == before:
                return None  # not rebooted (yet): never a second reboot for one instruction
            self.report(instruction, "Rebooted", f"booted again: boot {now} (was {before})", "True")
            return self.check(instruction)
        if reason in ("Rebooted", "ResetDone"):
            return self.check(instruction)  # the agent stopped between the remediation and its QA
        return None  # Resetting (a reset that ended with the agent), failed, or done

    def begin(self, instruction: dict[str, Any]) -> str:
        if instruction["action"] == "reboot":
            self.report(instruction, "Rebooting", f"boot={self.identity()} rebooting the node")
            code, output = self.run(list(self.reboot), 60)
            if code != 0:
                self.report(
                    instruction, "RebootFailed", f"{' '.join(self.reboot)}: {output.strip()}", "False"
                )
                return "RebootFailed"
            return "Rebooting"
        gpus = tuple(instruction.get("gpus") or ())
        command = [self.nvidia_smi, "-r", *(["-i", ",".join(gpus)] if gpus else [])]
        self.report(instruction, "Resetting", " ".join(command))
        code, output = self.run(command, 300)
        words = " ".join(output.split())[:600]
        if code != 0:
            self.report(instruction, "ResetFailed", f"{' '.join(command)} exited {code}: {words}", "False")
            return "ResetFailed"
        self.reset_done(gpus)
        self.report(instruction, "ResetDone", f"{' '.join(command)}: {words}", "True")
        return self.check(instruction)

    def check(self, instruction: dict[str, Any]) -> str:
        verdict = self.qa()
        if verdict.get("passed"):
            self.report(instruction, "QAPassed", verdict.get("summary", "QA passed"), "True")
            return "QAPassed"
        self.report(instruction, "QAFailed", verdict.get("problem", "QA failed"), "False")
        return "QAFailed"
