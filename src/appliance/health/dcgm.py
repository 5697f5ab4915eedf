"""What DCGM's background health watches say about a node's GPUs, judged: the agent's third signal.

Where `dcgmi` is installed (DCGM on the host, or the GPU operator's nv-hostengine reached with `--host`), the
agent sets the watches once (`dcgmi health --set a`: PCIe, memory, InfoROM, thermal, power, NVLink, driver,
NVSwitch) and checks them every check interval:

    dcgmi health --check --json

The output's shape is DCGM's (dcgmi/Health.cpp and DcgmiOutput.h): `body` holds "Overall Health" and one
section per entity group ("GPU", ...), each entity (its DCGM id, which is NVML's index, as nvidia-smi's) with
its health and, under "Errors", one child per system ("Memory system", "PCIe system", "NVLINK system",
"Driver", ...) whose value is Warning or Failure and whose `overflow` holds the incidents' messages, cut
into pieces of about 54 characters.

Judged by this table (a Warning is always reported, never isolating):

    system      on Failure   why
    Memory      reset-gpu    volatile double-bit ECC, rows pending remapping, pages pending retirement: a
                             GPU reset clears or applies them. "row remapping failed" is RowRemapFailure:
                             reboot and replace (NVIDIA's RMA criterion), as nvidia-smi's finding
    SM          reset-gpu    as the SM's own Xids
    NVLink      workflow     as Xid 74: reset the GPU, then NVIDIA's NVLink investigation (never automatic)
    PCIe        reboot       a link that fails does not come back with a GPU reset
    Driver      reboot       as a hung or failed driver
    NVSwitch    reboot       fatal (as a Fatal SXid); non-fatal is reported
    InfoROM     workflow     a corrupt InfoROM needs a person (reflash or RMA)
    Thermal     ignore       reported, never isolating (as throttled clocks)
    Power       ignore       reported, never isolating
    other       ignore       ConnectX and systems a newer DCGM adds: reported

DCGM's own severities (dcgm_errors.c: ISOLATE for volatile DBE, row-remap failure, NVLink down, NVSwitch
fatal; MONITOR for thermal, power, InfoROM) agree, except InfoROM, which isolates here so that no job lands
on a GPU whose error records are lost.

A dcgmi that fails (no host engine, watches not set) makes `appliance_gpu_dcgm_up` 0 and no finding: DCGM
being away is not a GPU fault, nvidia-smi and the kernel log still watch the node.

Standard library only: this runs on appliance nodes with Debian's python3.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

from appliance.health.smi import TIMED_OUT, Finding, Gpu, Run

__all__ = ["CHECK", "Incident", "Reading", "judge", "parse_health", "read", "set_watches"]

CHECK = ("health", "--check", "--json")

# System (the start of dcgmi's name for it, lower case) -> (reason's middle part, action on Failure).
SYSTEMS: tuple[tuple[str, str, str], ...] = (
    ("memory", "Memory", "reset-gpu"),
    ("sm", "SM", "reset-gpu"),
    ("nvlink", "NVLink", "workflow"),
    ("pcie", "PCIe", "reboot"),
    ("driver", "Driver", "reboot"),
    ("nvswitch f", "NVSwitch", "reboot"),
    ("nvswitch nf", "NVSwitchNonFatal", "ignore"),
    ("nvswitch", "NVSwitch", "reboot"),
    ("inforom", "InfoROM", "workflow"),
    ("thermal", "Thermal", "ignore"),
    ("power", "Power", "ignore"),
    ("connectx", "ConnectX", "ignore"),
)
ROW_REMAP_FAILED = "row remapping failed"


@dataclass(frozen=True)
class Incident:
    group: str  # the entity group: GPU, Switch, ...
    entity: str  # its DCGM id
    system: str  # as dcgmi names it: "Memory system", "Driver", ...
    health: str  # Warning or Failure
    message: str


@dataclass(frozen=True)
class Reading:
    up: bool  # dcgmi answered the check: `appliance_gpu_dcgm_up`
    overall: str | None  # Healthy, Warning, Failure
    findings: tuple[Finding, ...]  # gravest first
    seconds: float
    problem: str = ""  # why not up


def parse_health(output: str) -> tuple[str | None, list[Incident]]:
    """(overall health, incidents) from `dcgmi health --check --json`; ValueError when it is not that."""
    try:
        data = json.loads(output)
        body = data["body"]
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(f"not dcgmi's health report: {error}") from error
    overall = (body.get("Overall Health") or {}).get("value")
    incidents = []
    for group, section in body.items():
        if group == "Overall Health" or not isinstance(section, dict):
            continue
        for entity, node in (section.get("children") or {}).items():
            errors = ((node.get("children") or {}).get("Errors") or {}).get("children") or {}
            for system, report in errors.items():
                pieces = report.get("overflow") or []
                message = " ".join(piece.strip() for piece in pieces if piece.strip())
                incidents.append(Incident(group, str(entity), system, report.get("value", ""), message))
    return overall, incidents


def _system(name: str) -> tuple[str, str]:
    lowered = name.lower()
    for prefix, reason, action in SYSTEMS:
        if lowered.startswith(prefix):
            return reason, action
    return "".join(word.capitalize() for word in name.replace("system", "").split()) or "Unknown", "ignore"


def judge(incidents: list[Incident], gpus: tuple[Gpu, ...] = ()) -> list[Finding]:
    """Findings, gravest first, from DCGM's incidents; GPUS (nvidia-smi's) name each GPU by its PCI bus id."""
    by_index = {gpu.index: gpu for gpu in gpus}
    findings = []
    for incident in incidents:
        reason, action = _system(incident.system)
        gpu = by_index.get(incident.entity) if incident.group == "GPU" else None
        if incident.group == "GPU":
            name = gpu.name if gpu else f"GPU {incident.entity}"
        else:
            name = f"{incident.group} {incident.entity}"
        failure = incident.health.lower() == "failure"
        what = f"DCGM {incident.system.lower()} {incident.health.lower()}: {incident.message or 'no message'}"
        if not failure:
            reason, action = f"DCGM{reason}Warning", "ignore"
        elif reason == "Memory" and ROW_REMAP_FAILED in incident.message.lower():
            reason, action = "RowRemapFailure", "reboot"
            what += "; the GPU may need replacing (NVIDIA's RMA criterion)"
        else:
            reason = f"DCGM{reason}Failure"
        findings.append(Finding(reason, action, f"{action}: {name}: {what}", gpu.pci if gpu else None))
    gravity = {"reboot": 0, "reset-gpu": 1, "workflow": 2}
    return sorted(findings, key=lambda finding: gravity.get(finding.action, 3))


def _command(dcgmi: str, host: str, *args: str) -> list[str]:
    return [dcgmi, *args, *(("--host", host) if host else ())]


def set_watches(dcgmi: str, systems: str, host: str, run: Run, timeout: float = 30.0) -> str | None:
    """Turn on the health watches of SYSTEMS (dcgmi's letters, "a" for all) for every GPU; None when done,
    else what went wrong."""
    code, output = run(_command(dcgmi, host, "health", "--set", systems), timeout)
    if code == 0:
        return None
    return output.strip().splitlines()[0] if output.strip() else f"dcgmi exited {code}"


def read(dcgmi: str, host: str, run: Run, gpus: tuple[Gpu, ...] = (), timeout: float = 30.0) -> Reading:
    """Check DCGM's health watches (within TIMEOUT seconds) and judge what they say."""
    started = time.monotonic()
    code, output = run(_command(dcgmi, host, *CHECK), timeout)
    seconds = time.monotonic() - started
    if code == TIMED_OUT:
        return Reading(False, None, (), seconds, f"dcgmi did not answer within {timeout:g} s")
    if code != 0:
        detail = output.strip().splitlines()[0] if output.strip() else f"exit {code}"
        return Reading(False, None, (), seconds, f"dcgmi health --check failed: {detail}")
    try:
        overall, incidents = parse_health(output)
    except ValueError as error:
        return Reading(False, None, (), seconds, str(error))
    return Reading(True, overall, tuple(judge(incidents, gpus)), seconds)
