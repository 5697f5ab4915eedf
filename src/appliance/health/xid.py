"""NVIDIA Xid and NVSwitch SXid lines of the kernel log, parsed into faults.

The driver logs each GPU fault as one kernel message (the forms the tests hold):

    NVRM: Xid (PCI:0000:4e:00): 79, pid='<unknown>', name=<unknown>, GPU has fallen off the bus.
    NVRM: Xid (PCI:0000:01:00): 45, pid=12542, name=VLLM::Worker, channel 0x00000002
    NVRM: Xid (0000:03:00): 14, Channel 00000001                      (older drivers)
    NVRM: GPU at 0000:01:00.0 has fallen off the bus.                  (no Xid at all)
    nvidia-nvswitch3: SXid (PCI:0000:4e:00.0): 12028, Non-fatal, Link 32 egress non-posted PRIV error (First)

The message is found whatever precedes it: a raw /dev/kmsg record ("4,1234,5678901,-;"), dmesg
("[1235733.431527] "), `journalctl -k` ("Nov 24 16:20:05 host kernel: ") or nothing. Most kernel lines
are not NVIDIA's, so two substring tests reject them before any regular expression runs.

Standard library only: this runs on appliance nodes with Debian's python3.
"""

from __future__ import annotations

import calendar
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime

__all__ = ["Fault", "parse_line", "parse_lines", "pci_id", "timestamp"]


@dataclass(frozen=True, slots=True)
class Fault:
    """One fault line. `code` is None only for a fallen-off-the-bus line that carries no Xid."""

    kind: str  # "xid", "sxid" or "fallen_off_bus"
    code: int | None
    pci: str | None  # as printed: "0000:4e:00" (Xid) or "0000:4e:00.0" (SXid, GPU at ...)
    pid: str | None  # without the quotes some drivers print: "1896", "<unknown>"
    process: str | None  # name=...
    severity: str | None  # SXid lines: "Fatal" or "Non-fatal" as printed
    detail: str  # the text after the code (after the severity for SXid lines)
    line: str  # the line as given, without its line break


_new = object.__new__
_kind, _code, _pci, _pid, _process, _severity, _detail, _line = (
    Fault.__dict__[field].__set__ for field in Fault.__slots__
)


def _fault(
    kind: str,
    code: int | None,
    pci: str | None,
    pid: str | None,
    process: str | None,
    severity: str | None,
    detail: str,
    line: str,
) -> Fault:
    """Fault(...) at twice the speed: a frozen dataclass's __init__ sets each field through
    object.__setattr__, the slots' own descriptors set them directly (Xid-only logs parse ~20 % faster)."""
    fault = _new(Fault)
    _kind(fault, kind)
    _code(fault, code)
    _pci(fault, pci)
    _pid(fault, pid)
    _process(fault, process)
    _severity(fault, severity)
    _detail(fault, detail)
    _line(fault, line)
    return fault


# "NVRM: Xid (PCI:0000:01:00): 45, pid=12542, name=VLLM::Worker, channel 0x00000002". The process name
# runs to the next comma (a name may hold "::" or spaces); pid may be quoted: pid='<unknown>'.
_XID = re.compile(
    r"NVRM: Xid \((?:PCI:)?([^)\s]+)\): ?(\d+)"  # pci, code
    r"(?:, pid=(?:'([^']*)'|([^,\s]+)))?"  # quoted pid, pid
    r"(?:, name=([^,]*))?"  # process
    r"(?:, ?(.*))?\s*$"  # detail
)
# "nvidia-nvswitch3: SXid (PCI:0000:4e:00.0): 12028, Non-fatal, Link 32 ...". The driver logs one
# event as several lines of one code; only the first names the severity ("..., Data {0x...}" follows).
_SXID = re.compile(
    r"SXid \((?:PCI:)?([^)\s]+)\): ?(\d+)"  # pci, code
    r"(?:, (Fatal|Non-fatal)(?=,|\s*$))?"  # severity
    r"(?:, ?(.*))?\s*$"  # detail
)
_PCI = r"(?:PCI:)?([0-9A-Fa-f]{4}:[0-9A-Fa-f]{2}:[0-9A-Fa-f]{2}(?:\.[0-7])?)"
# A GPU lost without an Xid, in the shapes drivers print it:
#   NVRM: GPU at 0000:01:00.0 has fallen off the bus.
#   NVRM: GPU 0000:01:00.0: GPU has fallen off the bus.
#   NVRM: The NVIDIA GPU 0000:b3:00.0 / (PCI ID: 10de:26b5) installed in this system has / fallen off
#         the bus and is not responding to commands.   (one message of three lines)
_FALLEN_PCI = re.compile(r"NVRM: (?:GPU at |GPU |The NVIDIA GPU )" + _PCI)
_NVIDIA_GPU = re.compile(r"NVRM: The NVIDIA GPU " + _PCI)


def parse_line(line: str) -> Fault | None:
    """The fault LINE reports, or None for every other line (most of a kernel log)."""
    if "NVRM" in line:
        start = line.find("NVRM: Xid")
        if start >= 0:
            line = line.rstrip("\r\n")
            match = _XID.match(line, start)
            if match is None:
                return None
            pci, code, quoted_pid, pid, process, detail = match.groups()
            return _fault("xid", int(code), pci, pid or quoted_pid, process, None, detail or "", line)
        if "fallen off the bus" in line:
            return _fallen_off_bus(line.rstrip("\r\n"))
        return None
    start = line.find("SXid (")
    if start < 0:
        return None
    line = line.rstrip("\r\n")
    match = _SXID.match(line, start)
    if match is None:
        return None
    pci, code, severity, detail = match.groups()
    return _fault("sxid", int(code), pci, None, None, severity, detail or "", line)


def _fallen_off_bus(line: str) -> Fault | None:
    start = line.find("NVRM: ")
    if start < 0:
        return None
    located = _FALLEN_PCI.search(line, start)
    detail = line[start + len("NVRM: ") :]
    return _fault("fallen_off_bus", None, located[1] if located else None, None, None, None, detail, line)


def parse_lines(lines: Iterable[str]) -> Iterator[Fault]:
    """The faults of LINES, in order, as they arrive (a stream such as `journalctl -k -f` works).

    dmesg prints the driver's three-line "The NVIDIA GPU <pci> ... fallen off the bus" message as three
    lines: the fault of the last one gets the PCI address of the first, also when an Xid line arrives
    between them (it is a fault of its own).
    """
    pending_pci: str | None = None
    pending_lines = 0
    for line in lines:
        # The prefilter of parse_line, inlined: the loop runs once per kernel line.
        if "NVRM" not in line and "SXid (" not in line:
            if pending_lines:
                pending_lines -= 1
            continue
        fault = parse_line(line)
        if fault is None:
            gpu = _NVIDIA_GPU.search(line) if "The NVIDIA GPU" in line else None
            if gpu is not None:
                pending_pci, pending_lines = gpu[1], 2
            elif pending_lines:
                pending_lines -= 1
            continue
        if fault.kind == "fallen_off_bus":
            if fault.pci is None and pending_lines:
                fault = _fault(fault.kind, None, pending_pci, None, None, None, fault.detail, fault.line)
            pending_lines = 0
        # Any other fault between the message's lines (an Xid printed by another CPU meanwhile, the
        # driver's own Xid 79) is a fault of its own, and the message's last line still names its GPU.
        yield fault


_PCI_ID = re.compile(r"(?<![0-9A-Fa-f])([0-9A-Fa-f]{4,8}):([0-9A-Fa-f]{2}):([0-9A-Fa-f]{2})(?:\.([0-7]))?")


def pci_id(text: str | None) -> str | None:
    """The first PCI address in TEXT as nvidia-smi names a GPU (00000000:4E:00.0), whichever form it is in:
    an Xid's 0000:4e:00, an SXid's or the kernel's 0000:4e:00.0, nvidia-smi's own. None when there is none."""
    match = _PCI_ID.search(text or "")
    if match is None:
        return None
    domain, bus, device, function = match.groups()
    return f"{int(domain, 16):08X}:{bus.upper()}:{device.upper()}.{function or '0'}"


# Timestamps of the prefixes, for repeat windows over a log read after the fact.
_KMSG_TIME = re.compile(r"\d+,\d+,(\d+),[^;]*;")
_DMESG_TIME = re.compile(r"(?:<\d+>)?\[\s*(\d+\.\d+)\]")
_CTIME = re.compile(r"\[(\w{3} \w{3} +\d+ \d\d:\d\d:\d\d \d{4})\]")
_ISO_TIME = re.compile(
    r"(?:\w+ *:\w+ *: )?(\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d(?:[.,]\d+)?(?:Z|[+-]\d\d:?\d\d)?)"
)
_SYSLOG_TIME = re.compile(r"(\w{3}) +(\d{1,2}) (\d\d):(\d\d):(\d\d(?:\.\d+)?) ")
_MONTHS = {name: number for number, name in enumerate(calendar.month_abbr) if name}


def timestamp(line: str) -> float | None:
    """Seconds from LINE's prefix, or None when it has none it knows.

    Seconds since boot for /dev/kmsg records and dmesg; seconds since the epoch for `dmesg -T`, ISO
    8601 (`dmesg --time-format=iso`, `journalctl -o short-iso`) and the syslog form of `journalctl`,
    which has no year (it is counted in the year 2000: differences within a log hold, across New
    Year they do not).
    """
    if match := _KMSG_TIME.match(line):
        return int(match[1]) / 1_000_000
    if match := _DMESG_TIME.match(line):
        return float(match[1])
    if match := _ISO_TIME.match(line):
        moment = datetime.fromisoformat(match[1].replace(",", "."))
        if moment.tzinfo is None:
            return calendar.timegm(moment.timetuple()) + moment.microsecond / 1_000_000
        return moment.timestamp()
    if match := _SYSLOG_TIME.match(line):
        month = _MONTHS.get(match[1])
        if month is None:
            return None
        seconds = float(match[5])
        whole = calendar.timegm((2000, month, int(match[2]), int(match[3]), int(match[4]), 0))
        return whole + seconds
    if match := _CTIME.match(line):
        moment = datetime.strptime(match[1], "%a %b %d %H:%M:%S %Y")
        return float(calendar.timegm(moment.timetuple()))
    return None
