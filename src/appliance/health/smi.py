"""What nvidia-smi says about a node's GPUs, judged: the agent's periodic check and re-admission's QA.

Two queries, both in CSV without header or units:

    nvidia-smi --query-gpu=index,pci.bus_id,uuid,ecc.errors.uncorrected.volatile.total,
               retired_pages.pending,clocks_throttle_reasons.active --format=csv,noheader,nounits
    nvidia-smi --query-remapped-rows=gpu_bus_id,remapped_rows.pending,remapped_rows.failure
               --format=csv,noheader

(`clocks_throttle_reasons.*` is the name every driver since R450 answers; R530 renamed it
`clocks_event_reasons.*` and R535 took the old name back as well.) A value a GPU does not support prints as
`[N/A]` or `[Not Supported]`: that is no data, never zero. Row remapping exists from Ampere on; where the
second query fails (an older GPU or driver) the rows are simply not judged.

Findings, gravest first (the order the agent reports them in):

    DriverUnresponsive   reboot     nvidia-smi did not answer within the timeout (a hung driver)
    GPUMissing           reboot     nvidia-smi failed, or lists fewer GPUs than expected
    RowRemapFailure      reboot     a row remapping failed: NVIDIA's RMA criterion, the GPU may need replacing
    RowRemapPending      reset-gpu  rows wait for remapping, which the next GPU reset applies
    ECCUncorrected       reset-gpu  uncorrected ECC errors since the driver loaded (volatile)
    RetiredPagesPending  reset-gpu  pages wait for retirement (before Ampere), at the next GPU reset
    ClocksThrottled      ignore     HW slowdown, SW or HW thermal slowdown, an external power brake
                                    (reported, never isolating)

SW power capping (bit 0x4) is not a finding: a GPU at full load runs at its power cap by design.

Standard library only: this runs on appliance nodes with Debian's python3.
"""

from __future__ import annotations

import dataclasses
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = [
    "GPU_QUERY",
    "REMAPPED_ROWS_QUERY",
    "Finding",
    "Gpu",
    "Reading",
    "read",
    "run_command",
]

GPU_FIELDS = (
    "index",
    "pci.bus_id",
    "uuid",
    "ecc.errors.uncorrected.volatile.total",
    "retired_pages.pending",
    "clocks_throttle_reasons.active",
)
GPU_QUERY = ("--query-gpu=" + ",".join(GPU_FIELDS), "--format=csv,noheader,nounits")
REMAPPED_ROWS_QUERY = (
    "--query-remapped-rows=gpu_bus_id,remapped_rows.pending,remapped_rows.failure",
    "--format=csv,noheader",
)
TIMED_OUT = 124  # run_command's exit status for a command that did not answer in time (as timeout(1))

# clocks_throttle_reasons.active bits (NVML's nvmlClocksThrottleReason*) that are a finding.
THROTTLE_REASONS = {
    0x8: "HW slowdown",
    0x20: "SW thermal slowdown",
    0x40: "HW thermal slowdown",
    0x80: "HW power brake slowdown",
}
_NO_DATA = {"", "n/a", "[n/a]", "not supported", "[not supported]", "unknown error", "[unknown error]"}
_YES = {"yes", "1", "active", "true"}
_NO = {"no", "0", "not active", "false"}

Run = Callable[[list[str], float], tuple[int, str]]


@dataclass(frozen=True)
class Gpu:
    index: str
    pci: str  # as nvidia-smi prints it: 00000000:4E:00.0
    uuid: str | None
    ecc_uncorrected: int | None
    retired_pages_pending: bool | None
    throttle: int | None  # the clocks_throttle_reasons.active bitmask
    remap_pending: bool | None = None
    remap_failure: bool | None = None

    @property
    def name(self) -> str:
        return f"GPU {self.index} ({self.pci})"


@dataclass(frozen=True)
class Finding:
    reason: str
    action: str  # the catalog's actions: reboot, reset-gpu, ignore
    message: str  # "<action>: <what>", as the node's condition shows it
    gpu: str | None = None  # the PCI bus id of the GPU it is about; None: the node

    @property
    def fatal(self) -> bool:
        return self.action != "ignore"


@dataclass(frozen=True)
class Reading:
    answered: bool  # nvidia-smi answered (successfully or not) within the timeout
    succeeded: bool  # and its GPU query succeeded: `up` in the metrics
    gpus: tuple[Gpu, ...]
    findings: tuple[Finding, ...]  # gravest first
    seconds: float  # how long the queries took


def _value(cell: str) -> str | None:
    cell = cell.strip()
    return None if cell.lower() in _NO_DATA else cell


def _number(cell: str) -> int | None:
    value = _value(cell)
    return int(value) if value is not None and value.isdigit() else None


def _flag(cell: str) -> bool | None:
    value = _value(cell)
    if value is None:
        return None
    lowered = value.lower()
    return True if lowered in _YES else False if lowered in _NO else None


def _bitmask(cell: str) -> int | None:
    value = _value(cell)
    if value is None:
        return None
    try:
        return int(value, 16) if value.lower().startswith("0x") else int(value)
    except ValueError:
        return None


def _rows(output: str) -> list[list[str]]:
    return [[cell.strip() for cell in line.split(",")] for line in output.splitlines() if line.strip()]


def parse_gpus(output: str) -> list[Gpu]:
    """The rows of GPU_QUERY's output (short rows, as an older stand-in prints, leave fields unknown)."""
    gpus = []
    for row in _rows(output):
        row += [""] * (len(GPU_FIELDS) - len(row))
        gpus.append(
            Gpu(
                index=row[0],
                pci=row[1],
                uuid=_value(row[2]),
                ecc_uncorrected=_number(row[3]),
                retired_pages_pending=_flag(row[4]),
                throttle=_bitmask(row[5]),
            )
        )
    return gpus


def parse_remapped_rows(output: str) -> dict[str, tuple[bool | None, bool | None]]:
    """PCI bus id (upper case) -> (pending, failure), from REMAPPED_ROWS_QUERY's output."""
    found = {}
    for row in _rows(output):
        if len(row) >= 3:
            found[row[0].upper()] = (_flag(row[1]), _flag(row[2]))
    return found


# The per-GPU findings, gravest first: (reason, action, what follows the GPU's name, or None).
_GPU_CHECKS: tuple[tuple[str, str, Callable[[Gpu], str | None]], ...] = (
    (
        "RowRemapFailure",
        "reboot",
        lambda g: (
            ": a row remapping failed; the GPU may need replacing (NVIDIA's RMA criterion)"
            if g.remap_failure
            else None
        ),
    ),
    (
        "RowRemapPending",
        "reset-gpu",
        lambda g: ": rows are pending remapping, which a GPU reset applies" if g.remap_pending else None,
    ),
    (
        "ECCUncorrected",
        "reset-gpu",
        lambda g: (
            f" has {g.ecc_uncorrected} uncorrected ECC errors (volatile)" if g.ecc_uncorrected else None
        ),
    ),
    (
        "RetiredPagesPending",
        "reset-gpu",
        lambda g: (
            ": pages are pending retirement, which a GPU reset applies" if g.retired_pages_pending else None
        ),
    ),
    (
        "ClocksThrottled",
        "ignore",
        lambda g: (
            f": clocks throttled: {', '.join(_throttled(g))} (0x{g.throttle:x})" if _throttled(g) else None
        ),
    ),
)


def _throttled(gpu: Gpu) -> list[str]:
    return [name for bit, name in THROTTLE_REASONS.items() if gpu.throttle and gpu.throttle & bit]


def judge(gpus: list[Gpu], expected: int) -> list[Finding]:
    findings = []
    if expected and len(gpus) < expected:
        seen = ", ".join(gpu.pci for gpu in gpus) or "none"
        message = f"reboot: nvidia-smi sees {len(gpus)} of {expected} GPUs ({seen})"
        findings.append(Finding("GPUMissing", "reboot", message))
    for reason, action, problem in _GPU_CHECKS:
        for gpu in gpus:
            what = problem(gpu)
            if what is not None:
                findings.append(Finding(reason, action, f"{action}: {gpu.name}{what}", gpu.pci))
    return findings


def read(nvidia_smi: str, expected: int, run: Run, timeout: float = 30.0) -> Reading:
    """Ask nvidia-smi (each query within TIMEOUT seconds) and judge what it says."""
    started = time.monotonic()

    def ended(answered: bool, gpus: list[Gpu], message: str, reason: str = "DriverUnresponsive") -> Reading:
        finding = Finding(reason, "reboot", f"reboot: {message}")
        return Reading(answered, False, tuple(gpus), (finding,), time.monotonic() - started)

    code, output = run([nvidia_smi, *GPU_QUERY], timeout)
    if code == TIMED_OUT:
        return ended(False, [], f"nvidia-smi did not answer within {timeout:g} s (the driver hangs)")
    if code != 0:
        detail = output.strip().splitlines()[0] if output.strip() else f"exit {code}"
        return ended(True, [], f"nvidia-smi failed: {detail}", "GPUMissing")
    gpus = parse_gpus(output)
    code, output = run([nvidia_smi, *REMAPPED_ROWS_QUERY], timeout)
    if code == TIMED_OUT:
        return ended(False, gpus, f"nvidia-smi did not answer the remapped-rows query within {timeout:g} s")
    if code == 0:
        rows = parse_remapped_rows(output)
        for position, gpu in enumerate(gpus):
            if gpu.pci.upper() in rows:
                pending, failure = rows[gpu.pci.upper()]
                gpus[position] = dataclasses.replace(gpu, remap_pending=pending, remap_failure=failure)
    return Reading(True, True, tuple(gpus), tuple(judge(gpus, expected)), time.monotonic() - started)


def run_command(command: list[str], timeout: float = 60.0) -> tuple[int, str]:
    """(exit status, output): stdout when it succeeded, stdout and stderr when not; TIMED_OUT (124) when the
    command did not end within TIMEOUT seconds, 127 when it cannot run."""
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return TIMED_OUT, f"{command[0]} did not answer within {timeout:g} s"
    except OSError as error:
        return 127, str(error)
    return result.returncode, result.stdout if result.returncode == 0 else (result.stdout + result.stderr)
