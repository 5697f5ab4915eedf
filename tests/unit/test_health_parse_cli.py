"""`appliance health parse`: the installed CLI on a kernel log file and on a stream, as a user runs it."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import threading
from pathlib import Path

from tests.conftest import BIN, PROJECT, run_cli

FIELDS = [
    "kind",
    "code",
    "pci",
    "pid",
    "process",
    "severity",
    "action",
    "fatal",
    "reason",
    "count",
    "description",
    "line",
]

LOG = [
    "[    4.218000] EXT4-fs (nvme0n1p2): mounted filesystem with ordered data mode. Quota mode: none.",
    "[1000.0] NVRM: Xid (PCI:0000:4e:00): 79, pid='<unknown>', name=<unknown>, GPU has fallen off the bus.",
    "4,1234,1001000000,-;NVRM: Xid (PCI:0000:01:00): 45, pid=12542, name=VLLM::Worker, channel 0x00000002",
    "Nov 24 16:20:05 gpu-1 kernel: NVRM: Xid (0000:03:00): 14, Channel 00000001",
    "Nov 24 16:20:06 gpu-1 kernel: cni0: port 3(veth1c2d3e4f) entered forwarding state",
    "nvidia-nvswitch3: SXid (PCI:0000:4e:00.0): 12028, Non-fatal, Link 32 egress non-posted PRIV error",
    "nvidia-nvswitch0: SXid (PCI:0000:c3:00.0): 24007, Fatal, Link 30 sourcetrack timeout error",
    "NVRM: GPU at 0000:01:00.0 has fallen off the bus.",
    "[ 1002.000000] NVRM: Xid (PCI:0000:10:1c): 63, pid=1896, Row Remapper: New row marked for remapping.",
]


def parse(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "appliance"), "health", "parse", *args],
        cwd=PROJECT,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def records(output: str) -> list[dict]:
    return [json.loads(line) for line in output.splitlines()]


def test_a_log_file_gives_one_json_line_per_fault(tmp_path: Path):
    log = tmp_path / "kern.log"
    log.write_text("\n".join(LOG) + "\n")
    result = run_cli("health", "parse", str(log))
    assert result.returncode == 0, result.stderr
    found = records(result.stdout)
    assert all(list(record) == FIELDS for record in found)
    assert [(r["kind"], r["code"], r["action"], r["fatal"], r["reason"]) for r in found] == [
        ("xid", 79, "reboot", True, "Xid79"),
        ("xid", 45, "restart-app", False, "Xid45"),
        ("xid", 14, "ignore", False, "Xid14"),
        ("sxid", 12028, "ignore", False, "SXid12028"),
        ("sxid", 24007, "reboot", True, "SXid24007"),
        ("fallen_off_bus", None, "reboot", True, "GPUFallenOffBus"),
        ("xid", 63, "ignore", False, "Xid63"),
    ]
    assert found[0] == {
        "kind": "xid",
        "code": 79,
        "pci": "0000:4e:00",
        "pid": "<unknown>",
        "process": "<unknown>",
        "severity": None,
        "action": "reboot",
        "fatal": True,
        "reason": "Xid79",
        "count": 1,
        "description": "GPU has fallen off the bus",
        "line": LOG[1],
    }
    assert (found[1]["pid"], found[1]["process"]) == ("12542", "VLLM::Worker")
    assert (found[3]["severity"], found[4]["severity"]) == ("Non-fatal", "Fatal")
    assert found[5]["pci"] == "0000:01:00.0"


def test_stdin_is_read_with_dash_or_without_an_argument():
    text = "\n".join(LOG) + "\n"
    for args in ((), ("-",)):
        result = parse(*args, stdin=text)
        assert result.returncode == 0, result.stderr
        assert [r["reason"] for r in records(result.stdout)] == [
            "Xid79",
            "Xid45",
            "Xid14",
            "SXid12028",
            "SXid24007",
            "GPUFallenOffBus",
            "Xid63",
        ]


def test_no_fault_prints_nothing_and_exits_0():
    result = parse(stdin="[    1.0] Linux version 6.1.0-27-amd64\nnot a kernel line at all\n")
    assert (result.returncode, result.stdout) == (0, "")


def test_repeat_windows_count_in_the_logs_own_time():
    crash = "NVRM: Xid (PCI:0000:01:00): 13, pid=7, name=python, Graphics Exception: ESR 0x50df30=0x107000e"
    close = "".join(f"[{1000 + 10 * i}.000000] {crash}\n" for i in range(5))
    spread = "".join(f"[{1000 + 400 * i}.000000] {crash}\n" for i in range(5))
    found = records(parse(stdin=close).stdout)
    assert [(r["action"], r["fatal"], r["count"]) for r in found] == [
        ("restart-app", False, 1),
        ("restart-app", False, 2),
        ("restart-app", False, 3),
        ("restart-app", False, 4),
        ("reset-gpu", True, 5),
    ]
    assert not any(r["fatal"] for r in records(parse(stdin=spread).stdout))


def test_a_stream_is_printed_as_its_faults_arrive():
    process = subprocess.Popen(
        [str(BIN / "appliance"), "health", "parse"],
        cwd=PROJECT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdin is not None and process.stdout is not None
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in process.stdout], daemon=True).start()
    try:
        process.stdin.write("[   10.000000] EXT4-fs (sda1): mounted\n")
        process.stdin.write("[   11.000000] NVRM: Xid (PCI:0000:3f:00): 46, pid=1, name=a, Ch 1\n")
        process.stdin.flush()
        first = json.loads(lines.get(timeout=60))  # stdin stays open: the fault is out before the end
        assert (first["reason"], first["action"]) == ("Xid46", "reset-gpu")
        process.stdin.write("NVRM: Xid (PCI:0000:3f:00): 48, pid=1, name=a, DBE\n")
        process.stdin.flush()
        assert json.loads(lines.get(timeout=60))["action"] == "workflow"
    finally:
        process.stdin.close()
        assert process.wait(timeout=60) == 0


def test_a_missing_file_is_one_error_line_and_exit_2(tmp_path: Path):
    result = run_cli("health", "parse", str(tmp_path / "absent.log"))
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.strip().splitlines() == [
        f"appliance: error: cannot read {tmp_path / 'absent.log'}: No such file or directory"
    ]


def test_the_catalog_override_changes_the_action(tmp_path: Path):
    override = tmp_path / "xid-overrides.yml"
    override.write_text("---\nxid:\n  63: {action: reset-gpu}\n")
    line = "NVRM: Xid (PCI:0000:10:1c): 63, pid=1896, Row Remapper: New row marked for remapping.\n"
    result = parse("--catalog-override", str(override), stdin=line)
    assert result.returncode == 0, result.stderr
    assert [(r["action"], r["fatal"]) for r in records(result.stdout)] == [("reset-gpu", True)]


def test_a_bad_catalog_override_is_one_error_line_and_exit_2(tmp_path: Path):
    override = tmp_path / "xid-overrides.yml"
    override.write_text("---\nxid:\n  63: {action: reset}\n")
    result = parse("--catalog-override", str(override), stdin="")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"appliance: error: {override}: xid 63: action 'reset' is not allowed; "
        "one of reboot, reset-gpu, workflow, restart-app, ignore"
    ]


def test_bytes_that_are_not_utf8_do_not_stop_the_parse(tmp_path: Path):
    log = tmp_path / "kern.log"
    log.write_bytes(b"[1.0] usb 1-1: Product: \xff\xfe\n[2.0] NVRM: Xid (PCI:0000:3f:00): 46, Ch 1\n")
    result = run_cli("health", "parse", str(log))
    assert result.returncode == 0, result.stderr
    assert [r["code"] for r in records(result.stdout)] == [46]
    piped = subprocess.run(
        [str(BIN / "appliance"), "health", "parse"],
        input=log.read_bytes(),
        capture_output=True,
        timeout=120,
        check=False,
        env={**os.environ, "LC_ALL": "C"},
    )
    assert piped.returncode == 0, piped.stderr
    assert [json.loads(line)["code"] for line in piped.stdout.splitlines()] == [46]
