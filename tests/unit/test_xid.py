"""The Xid parser (appliance.health.xid) and the Xid catalog (appliance.health.catalog) on real lines."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from appliance.health.catalog import (
    ACTIONS,
    BURST_SECONDS,
    FATAL_ACTIONS,
    Assessor,
    Catalog,
    CatalogError,
    Entry,
)
from appliance.health.xid import Fault, parse_line, parse_lines, pci_id, timestamp

# The prefixes a kernel message arrives with: /dev/kmsg, dmesg, journalctl -k, none.
PREFIXES = {
    "kmsg": "4,1234,5678901,-;",
    "dmesg": "[1235733.431527] ",
    "journal": "Nov 24 16:20:05 gpu-1 kernel: ",
    "bare": "",
}

# (message, kind, code, pci, pid, process, severity, detail)
FORMS = [
    (
        "NVRM: Xid (PCI:0000:4e:00): 79, pid='<unknown>', name=<unknown>, GPU has fallen off the bus.",
        "xid", 79, "0000:4e:00", "<unknown>", "<unknown>", None, "GPU has fallen off the bus.",
    ),
    (
        "NVRM: Xid (PCI:0000:10:1c): 63, pid=1896, "
        "Row Remapper: New row marked for remapping, reset gpu to activate.",
        "xid", 63, "0000:10:1c", "1896", None, None,
        "Row Remapper: New row marked for remapping, reset gpu to activate.",
    ),
    (
        "NVRM: Xid (PCI:0000:01:00): 45, pid=12542, name=VLLM::Worker, channel 0x00000002",
        "xid", 45, "0000:01:00", "12542", "VLLM::Worker", None, "channel 0x00000002",
    ),
    (
        "NVRM: Xid (0000:03:00): 14, Channel 00000001",
        "xid", 14, "0000:03:00", None, None, None, "Channel 00000001",
    ),
    (
        "NVRM: Xid (PCI:0000:3f:00): 46",
        "xid", 46, "0000:3f:00", None, None, None, "",
    ),
    (
        "NVRM: Xid (PCI:0000:cb:00): 109, pid=1797828, name=pt_main_thread, Ch 00000008, "
        "errorString CTX SWITCH TIMEOUT, Info 0x58005",
        "xid", 109, "0000:cb:00", "1797828", "pt_main_thread", None,
        "Ch 00000008, errorString CTX SWITCH TIMEOUT, Info 0x58005",
    ),
    (
        "NVRM: Xid (PCI:0000:cb:00): 13, pid='<unknown>', name=<unknown>, Graphics SM Warp Exception on "
        "(GPC 7, TPC 7, SM 0): Illegal Instruction Parameter",
        "xid", 13, "0000:cb:00", "<unknown>", "<unknown>", None,
        "Graphics SM Warp Exception on (GPC 7, TPC 7, SM 0): Illegal Instruction Parameter",
    ),
    (
        "NVRM: Xid (PCI:0000:9b:00): 94, pid=1234, name=python3, Contained ECC error",
        "xid", 94, "0000:9b:00", "1234", "python3", None, "Contained ECC error",
    ),
    (
        "NVRM: Xid (PCI:0018:01:00): 149, NETIR_LINK_EVT  Fatal   XC0 i0 Link 09 (0x025525c6 0x00000000 "
        "0x00000000 0x00000000 0x00000000 0x00000000)",
        "xid", 149, "0018:01:00", None, None, None,
        "NETIR_LINK_EVT  Fatal   XC0 i0 Link 09 (0x025525c6 0x00000000 0x00000000 0x00000000 0x00000000 "
        "0x00000000)",
    ),
    (
        "NVRM: Xid (PCI:0008:01:00): 154, "
        "GPU recovery action changed from 0x0 (None) to 0x1 (GPU Reset Required)",
        "xid", 154, "0008:01:00", None, None, None,
        "GPU recovery action changed from 0x0 (None) to 0x1 (GPU Reset Required)",
    ),
    (
        "NVRM: Xid (PCI:0000:b3:00.0): 79, pid=12345, GPU has fallen off the bus.",
        "xid", 79, "0000:b3:00.0", "12345", None, None, "GPU has fallen off the bus.",
    ),
    (
        "NVRM: GPU at 0000:01:00.0 has fallen off the bus.",
        "fallen_off_bus", None, "0000:01:00.0", None, None, None,
        "GPU at 0000:01:00.0 has fallen off the bus.",
    ),
    (
        "NVRM: GPU 0000:01:00.0: GPU has fallen off the bus.",
        "fallen_off_bus", None, "0000:01:00.0", None, None, None,
        "GPU 0000:01:00.0: GPU has fallen off the bus.",
    ),
    (  # one /dev/kmsg record of the three-line message: its line breaks escaped
        r"NVRM: The NVIDIA GPU 0000:b3:00.0\x0aNVRM: (PCI ID: 10de:26b5) installed in this system has\x0a"
        r"NVRM: fallen off the bus and is not responding to commands.",
        "fallen_off_bus", None, "0000:b3:00.0", None, None, None,
        r"The NVIDIA GPU 0000:b3:00.0\x0aNVRM: (PCI ID: 10de:26b5) installed in this system has\x0a"
        r"NVRM: fallen off the bus and is not responding to commands.",
    ),
    (
        "nvidia-nvswitch3: SXid (PCI:0000:4e:00.0): 12028, Non-fatal, "
        "Link 32 egress non-posted PRIV error (First)",
        "sxid", 12028, "0000:4e:00.0", None, None, "Non-fatal",
        "Link 32 egress non-posted PRIV error (First)",
    ),
    (
        "nvidia-nvswitch0: SXid (PCI:0000:c3:00.0): 24007, Fatal, Link 30 sourcetrack timeout error",
        "sxid", 24007, "0000:c3:00.0", None, None, "Fatal", "Link 30 sourcetrack timeout error",
    ),
    (
        "nvidia-nvswitch0: SXid (PCI:0000:00:00.0): 11001, Fatal, ingress invalid command",
        "sxid", 11001, "0000:00:00.0", None, None, "Fatal", "ingress invalid command",
    ),
    (  # a line of an SXid report after the first: no severity
        "nvidia-nvswitch1: SXid (PCI:0000:84:00.0): 12028, Data {0x000001c0, 0x00bd5c8a, 0x00000500}",
        "sxid", 12028, "0000:84:00.0", None, None, None, "Data {0x000001c0, 0x00bd5c8a, 0x00000500}",
    ),
]  # fmt: skip


@pytest.mark.parametrize("prefix", PREFIXES.values(), ids=PREFIXES.keys())
@pytest.mark.parametrize(
    ("message", "kind", "code", "pci", "pid", "process", "severity", "detail"),
    FORMS,
    ids=[f"{form[1]}-{form[2]}-{index}" for index, form in enumerate(FORMS)],
)
def test_each_form_parses_whatever_its_prefix(
    prefix, message, kind, code, pci, pid, process, severity, detail
):
    line = prefix + message
    assert parse_line(line + "\n") == Fault(kind, code, pci, pid, process, severity, detail, line)


@pytest.mark.parametrize(
    "line",
    [
        "",
        "\n",
        "4,1235,5678999,-;EXT4-fs (nvme0n1p2): mounted filesystem with ordered data mode. Quota mode: none.",
        "[    4.218000] usb 1-1: USB disconnect, device number 2; the device has fallen off the bus",
        "Nov 24 16:20:05 gpu-1 kernel: Xidian-raid (PCI:0000:01:00): 79, not NVIDIA's",
        "[   12.000000] oxidation-sensor (PCI:0000:01:00): 79, pid=1, name=x",
        'audit: type=1400 apparmor="DENIED" name="/var/log/Xid (PCI:0000:01:00): 79, GPU has fallen"',
        "NVRM: loading NVIDIA UNIX Open Kernel Module for x86_64  570.158.01  Release Build",
        "NVRM: GPU at PCI:0000:66:00: GPU-12345678-1234-5678-9abc-def012345678",
        "NVRM: GPU Board Serial Number: 1650123456789",
        "NVRM: Xid (PCI:0000:66:00): abc, pid=2280636",
        "NVRM: Xid : 32, pid=2280636",
        "NVRM: Xidx (PCI:0000:01:00): 79, GPU has fallen off the bus.",
        "NVRM: The NVIDIA GPU 0000:b3:00.0",
        "NVRM: nvGpuOpsReportFatalError: uvm encountered global fatal error 0x60, requiring os reboot",
        "nvidia-nvswitch3: SXid (PCI:0000:c1:00.0): garbled, Fatal",
        "nvidia-nvswitch3: SXid detected on link 3",
        "nvidia-modeset: Loading NVIDIA Kernel Mode Setting Driver for UNIX platforms  570.158.01",
    ],
)
def test_unrelated_lines_and_near_misses_are_not_faults(line):
    assert parse_line(line) is None
    assert list(parse_lines([line])) == []


def test_the_line_keeps_its_prefix_and_loses_its_line_break():
    fault = parse_line("[  1.5] NVRM: Xid (PCI:0000:3f:00): 46, Ch 1\r\n")
    assert fault is not None
    assert fault.line == "[  1.5] NVRM: Xid (PCI:0000:3f:00): 46, Ch 1"
    assert fault.detail == "Ch 1"


def test_trailing_blanks_are_no_part_of_the_message():
    fault = parse_line("NVRM: Xid (PCI:0000:3f:00): 46 \n")
    assert fault is not None and (fault.code, fault.detail) == (46, "")
    sxid_fault = parse_line("nvidia-nvswitch0: SXid (PCI:0000:c3:00.0): 24007, Fatal  \n")
    assert sxid_fault is not None and (sxid_fault.severity, sxid_fault.detail) == ("Fatal", "")


def test_a_fault_is_immutable():
    fault = parse_line("NVRM: Xid (PCI:0000:3f:00): 46")
    with pytest.raises(dataclasses.FrozenInstanceError):
        fault.code = 79  # type: ignore[misc, union-attr]


def test_parse_lines_yields_the_faults_in_order_and_as_they_arrive():
    consumed = []

    def stream():
        for line in [
            "[1.0] EXT4-fs (sda1): mounted",
            "[2.0] NVRM: Xid (PCI:0000:01:00): 13, pid=7, name=python, Graphics Exception",
            "[3.0] nvidia-nvswitch0: SXid (PCI:0000:c3:00.0): 24007, Fatal, Link 30 error",
        ]:
            consumed.append(line)
            yield line
        raise AssertionError("read past the faults")

    faults = parse_lines(stream())
    assert next(faults).code == 13
    assert len(consumed) == 2  # nothing read ahead: a stream is parsed as it comes
    assert next(faults).code == 24007


def test_dmesg_prints_the_three_line_fallen_off_the_bus_message_and_the_fault_gets_its_pci():
    lines = [
        "[ 1843.308145] NVRM: The NVIDIA GPU 0000:b3:00.0\n",
        "               NVRM: (PCI ID: 10de:26b5) installed in this system has\n",
        "               NVRM: fallen off the bus and is not responding to commands.\n",
        "[ 1843.439662] NVRM: The NVIDIA probe routine failed for 1 device(s).\n",
    ]
    (fault,) = parse_lines(lines)
    assert (fault.kind, fault.code, fault.pci) == ("fallen_off_bus", None, "0000:b3:00.0")
    # Alone, the last line is still the fault, of a GPU it cannot name.
    alone = parse_line(lines[2])
    assert alone is not None and (alone.kind, alone.pci) == ("fallen_off_bus", None)


def test_an_earlier_gpu_message_does_not_lend_its_pci_to_a_later_fault():
    lines = [
        "NVRM: The NVIDIA GPU 0000:b3:00.0 (PCI ID: 10de:26b5) installed in this system is not supported",
        "EXT4-fs (sda1): mounted",
        "systemd[1]: Started something.",
        "NVRM: fallen off the bus and is not responding to commands.",
    ]
    (fault,) = parse_lines(lines)
    assert fault.pci is None


def test_an_xid_between_the_lines_of_the_fallen_off_the_bus_message_does_not_take_its_pci():
    lines = [
        "[ 1843.308145] NVRM: The NVIDIA GPU 0000:b3:00.0",
        "[ 1843.308146] NVRM: Xid (PCI:0000:b3:00): 79, pid='<unknown>', name=<unknown>, GPU has fallen off",
        "               NVRM: (PCI ID: 10de:26b5) installed in this system has",
        "[ 1843.308147] NVRM: Xid (PCI:0000:1a:00): 13, pid=7, name=python, Graphics Exception",
        "               NVRM: fallen off the bus and is not responding to commands.",
    ]
    xid79, xid13, fallen = parse_lines(lines)
    assert (xid79.code, xid79.pci, xid13.code, xid13.pci) == (79, "0000:b3:00", 13, "0000:1a:00")
    assert (fallen.kind, fallen.pci) == ("fallen_off_bus", "0000:b3:00.0")


@pytest.mark.parametrize(
    ("line", "seconds"),
    [
        ("4,1234,5678901,-;NVRM: Xid ...", 5.678901),
        ("[1235733.431527] NVRM: Xid ...", 1235733.431527),
        ("[    0.500000] NVRM: Xid ...", 0.5),
        ("<4>[   12.250000] NVRM: Xid ...", 12.25),
        ("[Fri Aug 30 11:43:09 2024] NVRM: Xid ...", 1725018189.0),
        ("2025-01-25T10:34:54,859532+00:00 gpu-1 kernel: NVRM: Xid ...", 1737801294.859532),
        ("2025-01-25T10:34:54+0000 gpu-1 kernel: NVRM: Xid ...", 1737801294.0),
        ("kern  :err   : 2025-01-25T10:34:54,859532+00:00 nvidia-nvswitch1: SXid ...", 1737801294.859532),
        ("NVRM: Xid (PCI:0000:3f:00): 46", None),
    ],
)
def test_timestamp_reads_each_prefix(line, seconds):
    if seconds is None:
        assert timestamp(line) is None
    else:
        assert timestamp(line) == pytest.approx(seconds)


def test_timestamp_of_journal_lines_counts_within_a_year():
    first = timestamp("Nov 24 16:20:05 gpu-1 kernel: NVRM: Xid ...")
    later = timestamp("Nov 24 16:21:06.500000 gpu-1 kernel: NVRM: Xid ...")
    next_day = timestamp("Nov 25 16:20:05 gpu-1 kernel: NVRM: Xid ...")
    assert first is not None and later is not None and next_day is not None
    assert later - first == pytest.approx(61.5)
    assert next_day - first == pytest.approx(86400)


# ------------------------------------------------------------------------------------------ the catalog


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return Catalog.load()


def xid(code: int, detail: str = "", pci: str = "0000:01:00") -> Fault:
    return Fault("xid", code, pci, None, None, None, detail, f"NVRM: Xid (PCI:{pci}): {code}, {detail}")


def sxid(code: int, severity: str | None, pci: str = "0000:4e:00.0") -> Fault:
    return Fault("sxid", code, pci, None, None, severity, "Link 1", f"SXid (PCI:{pci}): {code}, ...")


FALLEN = Fault("fallen_off_bus", None, "0000:01:00.0", None, None, None, "", "NVRM: GPU at ...")


@pytest.mark.parametrize(
    ("codes", "action"),
    [
        ((46, 62, 64, 95, 109, 110, 119, 120, 136, 140, 143, 155, 156, 158), "reset-gpu"),
        ((79, 151), "reboot"),
        ((48, 74), "workflow"),
        ((63, 14, 92, 144, 149), "ignore"),
        ((13, 31, 43, 45, 68, 94), "restart-app"),
    ],
)
def test_catalog_actions_follow_nvidias_resolution_buckets(catalog, codes, action):
    assert {code: catalog.entry(xid(code)).action for code in codes} == dict.fromkeys(codes, action)


@pytest.mark.parametrize("code", [13, 31, 43, 68, 94, 8, 126])
def test_application_class_codes_escalate_to_a_gpu_reset_when_they_repeat(catalog, code):
    entry = catalog.entry(xid(code))
    assert (entry.action, entry.escalate) == ("restart-app", "reset-gpu")
    assert entry.repeat_count > 1 and entry.repeat_window > 0


def test_xid_45_has_no_repeat_rule_since_every_kill_logs_it(catalog):
    entry = catalog.entry(xid(45))
    assert (entry.action, entry.repeat_count) == ("restart-app", 1)


def test_every_packaged_entry_is_well_formed(catalog):
    entries = [*catalog.xid.values(), *catalog.sxid.values(), *catalog.sxid_severity.values()]
    for entry in [*entries, catalog.unknown, catalog.fallen_off_bus]:
        assert entry.action in ACTIONS
        assert entry.description and "\n" not in entry.description
        assert entry.repeat_count == 1 or entry.escalate in FATAL_ACTIONS
    assert list(catalog.xid) == sorted(catalog.xid)  # the file keeps the codes in order


def test_a_code_not_in_the_catalog_gets_the_unknown_entry_which_never_isolates(catalog):
    entry = catalog.entry(xid(9999))
    assert entry == catalog.unknown and entry.action == "ignore"
    verdict = Assessor(catalog).assess(xid(9999), 0.0)
    assert (verdict.fatal, verdict.reason) == (False, "Xid9999")


def test_a_gpu_fallen_off_the_bus_without_an_xid_means_a_reboot(catalog):
    verdict = Assessor(catalog).assess(FALLEN, 0.0)
    assert (verdict.action, verdict.fatal, verdict.reason) == ("reboot", True, "GPUFallenOffBus")


@pytest.mark.parametrize(
    ("severity", "action", "fatal"),
    [("Fatal", "reboot", True), ("Non-fatal", "ignore", False), (None, "ignore", False)],
)
def test_sxids_follow_their_severity(catalog, severity, action, fatal):
    verdict = Assessor(catalog).assess(sxid(12028, severity), 0.0)
    assert (verdict.action, verdict.fatal, verdict.reason) == (action, fatal, "SXid12028")


@pytest.mark.parametrize(
    ("detail", "action"),
    [
        ("GPU recovery action changed from 0x0 (None) to 0x1 (GPU Reset Required)", "reset-gpu"),
        ("GPU recovery action changed from 0x0 (None) to 0x1 (PF FLR)", "reset-gpu"),
        ("GPU recovery action changed from 0x0 (None) to 0x2 (Node Reboot Required)", "reboot"),
        ("GPU recovery action changed from 0x0 (None) to 0x2 (OS Reboot)", "reboot"),
        ("GPU recovery action changed from 0x0 (None) to 0x4 (Drain and Reset)", "reset-gpu"),
        ("GPU recovery action changed from 0x2 (Node Reboot Required) to 0x0 (None)", "ignore"),
    ],
)
def test_xid_154_takes_the_recovery_action_the_driver_names(catalog, detail, action):
    assert catalog.entry(xid(154, detail)).action == action


# NVLink5 lines as the driver prints them (the format of NVIDIA's Xid catalog: sub-unit, Fatal or Nonfatal,
# cross-containment, injected, link, then the intrInfo and errorStatus words).
NVLINK5 = [
    ("149, NETIR_LINK_EVT  Fatal   XC0 i0 Link 01 (0x021425c6 0x00000000 0x00000000 0x00000000)", True),
    ("149, NETIR Fatal XC0 i0 Link -1 (0x000fe406 0x00000000 0x00000000 0x00000000 0x00000000)", True),
    ("145, RLW_REMAP Fatal XC1 i0 Link 10 (0x00000082 0x00000040 0x00000000 0x00000000)", True),
    ("145, RLW_RXPIPE Nonfatal XC0 i0 Link 13 (0x0409a0c2 0x00000008 0x00000001 0x00000000)", False),
    ("144, SAW_MVB Nonfatal XC0 i0 Link 0 (0x00000001 0x00000008 0x00000000 0x00000000)", False),
    ("147, pid=1818990, name=python3, TREX Fatal XC0 i0 Link 3 (0x00000001 0x00000002)", True),
]


@pytest.mark.parametrize(("message", "fatal"), NVLINK5)
def test_an_nvlink5_xid_that_says_fatal_resets_the_gpu_without_its_xid_154(catalog, message, fatal):
    fault = parse_line(f"[171167.620236] NVRM: Xid (PCI:0009:01:00): {message}")
    assert fault is not None
    verdict = Assessor(catalog).assess(fault, 0.0)
    assert (verdict.action, verdict.fatal) == (("reset-gpu", True) if fatal else ("ignore", False))
    assert verdict.reason == f"Xid{message.split(',')[0]}"


@pytest.mark.parametrize(
    ("line", "action", "fatal"),
    [
        ("nvidia-nvswitch0: SXid (PCI:0004:00:00.0): 26006, SOE HALTED", "reboot", True),
        ("nvidia-nvswitch0: SXid (PCI:0004:00:00.0): 26007, SOE EXTERR", "reboot", True),
        ("nvidia-nvswitch0: SXid (PCI:0004:00:00.0): 26008, SOE Watchdog error", "ignore", False),
        ("nvidia-nvswitch0: SXid (PCI:0004:00:00.0): 26006, SOE HALT data[0] = 0x         0", "reboot", True),
    ],
)
def test_nvswitch_soe_sxids_which_print_no_severity_have_the_catalogs_decision(catalog, line, action, fatal):
    fault = parse_line(line)
    assert fault is not None and fault.severity is None
    verdict = Assessor(catalog).assess(fault, 0.0)
    assert (verdict.action, verdict.fatal) == (action, fatal)


# ----------------------------------------------------------------------------------- the repeat rule


def test_one_xid_13_is_reported_not_fatal(catalog):
    verdict = Assessor(catalog).assess(xid(13), 100.0)
    assert (verdict.action, verdict.fatal, verdict.count, verdict.reason) == (
        "restart-app",
        False,
        1,
        "Xid13",
    )


def test_the_nth_xid_13_within_the_window_is_fatal_with_the_escalate_action(catalog):
    entry = catalog.entry(xid(13))
    assessor = Assessor(catalog)
    gap = entry.repeat_window / entry.repeat_count
    verdicts = [assessor.assess(xid(13), 1000.0 + i * gap) for i in range(entry.repeat_count)]
    assert [v.fatal for v in verdicts] == [False] * (entry.repeat_count - 1) + [True]
    assert [v.count for v in verdicts] == list(range(1, entry.repeat_count + 1))
    assert verdicts[-1].action == entry.escalate == "reset-gpu"
    assert verdicts[-1].entry == entry


def test_xid_13s_spread_beyond_the_window_stay_reported(catalog):
    entry = catalog.entry(xid(13))
    assessor = Assessor(catalog)
    gap = entry.repeat_window / (entry.repeat_count - 1) + 1
    verdicts = [assessor.assess(xid(13), i * gap) for i in range(3 * entry.repeat_count)]
    assert not any(v.fatal for v in verdicts)
    assert max(v.count for v in verdicts) == entry.repeat_count - 1


def test_lines_of_one_burst_are_one_occurrence(catalog):
    entry = catalog.entry(xid(13))
    assessor = Assessor(catalog)
    # One crash: the driver logs the exception in several lines within milliseconds.
    verdicts = [assessor.assess(xid(13), 50.0 + i * 0.001) for i in range(3 * entry.repeat_count)]
    assert not any(v.fatal for v in verdicts) and {v.count for v in verdicts} == {1}
    assert assessor.assess(xid(13), 50.0 + BURST_SECONDS + 1).count == 2


def test_repeat_windows_are_per_gpu_and_code(catalog):
    entry = catalog.entry(xid(13))
    assessor = Assessor(catalog)
    for i in range(entry.repeat_count - 1):
        assessor.assess(xid(13, pci="0000:01:00"), i * 10.0)
        assessor.assess(xid(31, pci="0000:01:00"), i * 10.0)
    other_gpu = assessor.assess(xid(13, pci="0000:02:00"), 45.0)
    assert (other_gpu.count, other_gpu.fatal) == (1, False)
    assert assessor.assess(xid(13, pci="0000:01:00"), 50.0).fatal


def test_forget_drops_a_gpus_windows(catalog):
    assessor = Assessor(catalog)
    entry = catalog.entry(xid(13))
    for i in range(entry.repeat_count - 1):
        assessor.assess(xid(13), i * 10.0)
    assessor.forget("0000:01:00")
    assert assessor.assess(xid(13), 100.0).count == 1
    # After a reset nvidia-smi names the GPU its own way; the Xid's window is the same GPU's.
    for i in range(entry.repeat_count - 1):
        assessor.assess(xid(13, pci="0000:1a:00"), 200 + i * 10.0)
    assessor.forget("00000000:1A:00.0")
    assert assessor.assess(xid(13, pci="0000:1a:00"), 300.0).count == 1


@pytest.mark.parametrize(
    ("text", "gpu"),
    [
        ("NVRM: Xid (PCI:0000:4e:00): 79, pid=1", "00000000:4E:00.0"),
        ("SXid (PCI:0004:00:00.0): 26006, SOE HALTED", "00000004:00:00.0"),
        ("GPU 2 (00000000:47:00.0) has 3 uncorrected ECC errors", "00000000:47:00.0"),
        ("NVRM: GPU at 0000:b3:00.3 has fallen off the bus.", "00000000:B3:00.3"),
        ("nvidia-smi failed: exit 9", None),
        (None, None),
    ],
)
def test_pci_id_names_a_gpu_as_nvidia_smi_does(text, gpu):
    assert pci_id(text) == gpu


def test_fatal_codes_are_fatal_at_once(catalog):
    verdict = Assessor(catalog).assess(xid(79), 0.0)
    assert (verdict.action, verdict.fatal, verdict.count) == ("reboot", True, 1)


# --------------------------------------------------------------------------------------- the overrides


def test_an_override_changes_only_the_keys_it_names(catalog):
    packaged = catalog.entry(xid(13))
    merged = _with({"xid": {13: {"repeat": {"count": 10}}, 43: {"action": "ignore"}}})
    assert merged.entry(xid(13)) == dataclasses.replace(packaged, repeat_count=10)
    assert merged.entry(xid(43)).action == "ignore"
    assert merged.entry(xid(43)).description == catalog.entry(xid(43)).description
    assert merged.entry(xid(79)) == catalog.entry(xid(79))


def test_an_override_adds_codes_and_changes_sxids_and_the_defaults():
    merged = _with(
        {
            "xid": {"168": {"action": "reset-gpu"}},
            "sxid": {12028: {"action": "reboot", "description": "Egress PRIV error"}},
            "sxid_severity": {"Non-fatal": {"action": "reset-gpu"}},
            "unknown": {"action": "reset-gpu"},
            "fallen_off_bus": {"description": "Gone"},
        }
    )
    assert merged.entry(xid(168)) == Entry("reset-gpu", "Xid 168")
    assert merged.entry(sxid(12028, "Non-fatal")) == Entry("reboot", "Egress PRIV error")
    assert merged.entry(sxid(20009, "Non-fatal")).action == "reset-gpu"
    assert merged.entry(sxid(20009, "Fatal")).action == "reboot"
    assert merged.entry(xid(9999)).action == "reset-gpu"
    assert merged.entry(FALLEN) == Entry("reboot", "Gone")


def test_load_reads_the_operators_override_file(tmp_path: Path):
    override = tmp_path / "xid-overrides.yml"
    override.write_text(
        "---\nxid:\n  13: {repeat: {count: 2, window_seconds: 60}}\n  63: {action: reset-gpu}\n"
    )
    merged = Catalog.load(override)
    assert (merged.entry(xid(13)).repeat_count, merged.entry(xid(13)).repeat_window) == (2, 60.0)
    assert merged.entry(xid(63)).action == "reset-gpu"
    empty = tmp_path / "empty.yml"
    empty.write_text("---\n# nothing overridden\n")
    assert Catalog.load(empty).entry(xid(63)).action == "ignore"


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("xid:\n  13: {action: rebot}\n", "xid 13: action 'rebot' is not allowed; one of reboot, reset-gpu"),
        ("xid:\n  13: {repeat: {count: 0}}\n", "xid 13: repeat.count 0 is not allowed; a whole number >= 1"),
        (
            "xid:\n  13: {repeat: {window_seconds: -5}}\n",
            "xid 13: repeat.window_seconds -5 is not allowed; a number of seconds > 0",
        ),
        ("xid:\n  13: {repeat: {times: 3}}\n", "xid 13: repeat key 'times' is not allowed; one of count"),
        ("xid:\n  13: {acton: ignore}\n", "xid 13: key 'acton' is not allowed; one of action, description"),
        ("xid:\n  13: {escalate: ignore}\n", "xid 13: escalate 'ignore' is not allowed; one of reboot"),
        ("xid:\n  abc: {action: ignore}\n", "xid: code 'abc' is not allowed; a whole number such as 79"),
        (
            "xid:\n  13: ignore\n",
            "xid 13: entry 'ignore' is not allowed; a mapping with the keys action, description",
        ),
        ("xids:\n  13: {action: ignore}\n", "top level: section 'xids' is not allowed; one of unknown"),
        ("sxid_severity:\n  fatal: {action: ignore}\n", "sxid_severity: severity 'fatal' is not allowed"),
        ("xid:\n  200: {description: New}\n", "xid 200: action is missing; one of reboot"),
        ("xid:\n  79: {repeat: {count: 3}}\n", "xid 79: repeat.window_seconds is missing"),
        (
            "xid:\n  79: {repeat: {count: 3, window_seconds: 60}}\n",
            "xid 79: escalate is missing; one of reboot, reset-gpu, workflow for repeat count 3",
        ),
        (
            "xid:\n  154: {detail_actions: {'to 0x2': boot}}\n",
            "xid 154: detail_actions 'to 0x2': action 'boot'",
        ),
        ("- 13\n", "top level: list [13] is not allowed; a mapping of the sections unknown, fallen_off_bus"),
        ("xid: {13: [action: ignore\n", "not valid YAML"),
    ],
)
def test_a_bad_override_is_one_line_naming_file_code_key_value_and_what_is_allowed(
    tmp_path: Path, override, expected
):
    path = tmp_path / "xid-overrides.yml"
    path.write_text(override)
    with pytest.raises(CatalogError) as raised:
        Catalog.load(path)
    message = str(raised.value)
    assert message.startswith(f"{path}: ") and "\n" not in message
    assert expected in message
    assert isinstance(raised.value, ValueError)


def test_0x4f_is_read_by_yaml_as_the_number_and_allowed():
    # YAML 1.1 reads 0x4f as 79: an override of code 79, not an error.
    assert _with({"xid": {0x4F: {"action": "reset-gpu"}}}).entry(xid(79)).action == "reset-gpu"


def test_a_missing_override_file_is_a_catalog_error(tmp_path: Path):
    with pytest.raises(
        CatalogError, match=r"xid-overrides.yml: cannot read the Xid catalog override: No such"
    ):
        Catalog.load(tmp_path / "xid-overrides.yml")


def test_from_data_names_its_sources_in_errors():
    packaged = _packaged()
    with pytest.raises(CatalogError, match=r"^ops.yml: xid 13: action 'x'"):
        Catalog.from_data(packaged, {"xid": {13: {"action": "x"}}}, override_name="ops.yml")
    broken = {key: value for key, value in packaged.items() if key != "unknown"}
    with pytest.raises(CatalogError, match=r"^catalog: section 'unknown' is missing"):
        Catalog.from_data(broken)


def _packaged() -> dict:
    from importlib import resources

    import yaml

    return yaml.safe_load(resources.files("appliance.health").joinpath("catalog.yml").read_text())


def _with(override: dict) -> Catalog:
    return Catalog.from_data(_packaged(), override)
