"""appliance.health.dcgm: DCGM's health watches judged (the agent's third signal), on `dcgmi health --check
--json` output in DCGM's own shape (tests/unit/fixtures/dcgmi/README.md says where it comes from: no GPU
here), with nvidia-smi's recorded GPU list naming each GPU by its PCI bus id."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.health.dcgm import CHECK, Incident, judge, parse_health, read, set_watches
from appliance.health.smi import TIMED_OUT, parse_gpus

FIXTURES = Path(__file__).parent / "fixtures"
SBES = "Volatile SBEs: 12"
DGX = tuple(parse_gpus((FIXTURES / "nvidia-smi" / "health-dgx-a100-ok.csv").read_text()))


def fixture(name: str) -> str:
    return (FIXTURES / "dcgmi" / name).read_text()


def answering(code: int, output: str):
    calls = []

    def run(command: list[str], timeout: float) -> tuple[int, str]:
        calls.append((command, timeout))
        return code, output

    run.calls = calls  # type: ignore[attr-defined]
    return run


def summary(findings) -> list[tuple[str, str, str | None]]:
    return [(f.reason, f.action, f.gpu) for f in findings]


def test_a_healthy_report_is_up_with_no_finding():
    run = answering(0, fixture("health-healthy.json"))
    reading = read("dcgmi", "", run, DGX, timeout=9)
    assert reading.up and reading.overall == "Healthy" and reading.findings == ()
    assert run.calls == [(["dcgmi", *CHECK], 9)]


def test_the_incidents_of_each_entity_and_system_with_their_cut_messages_joined():
    overall, incidents = parse_health(fixture("health-pcie-nvlink.json"))
    assert overall == "Failure"
    assert sorted(incidents, key=lambda i: (i.entity, i.system)) == [
        Incident(
            "GPU",
            "1",
            "NVLINK system",
            "Failure",
            "GPU 1's NvLink link 3 is currently down, GPU 1's NvLink link 4 is currently down",
        ),
        Incident(
            "GPU",
            "1",
            "PCIe system",
            "Warning",
            "Detected more than 8 PCIe replays per minute for GPU 1 : 12",
        ),
        Incident(
            "GPU",
            "6",
            "Memory system",
            "Warning",
            f"More than 10 single-bit ECC error(s) detected in GPU 6 {SBES}",
        ),
    ]


def test_double_bit_ecc_resets_the_gpu_it_names_and_a_thermal_warning_is_only_reported():
    reading = read("dcgmi", "", answering(0, fixture("health-dgx-faults.json")), DGX)
    assert summary(reading.findings) == [
        ("DCGMMemoryFailure", "reset-gpu", "00000000:47:00.0"),
        ("DCGMThermalWarning", "ignore", "00000000:90:00.0"),
    ]
    ecc, thermal = reading.findings
    assert ecc.fatal and not thermal.fatal
    assert ecc.message == (
        "reset-gpu: GPU 2 (00000000:47:00.0): DCGM memory system failure: "
        "Detected 3 volatile double-bit ECC error(s) in GPU 2."
    )


def test_a_failed_row_remapping_reboots_and_says_the_gpu_may_need_replacing_though_dcgmi_cut_the_words():
    (finding,) = read("dcgmi", "", answering(0, fixture("health-row-remap-failure.json")), DGX).findings
    assert (finding.reason, finding.action, finding.gpu) == ("RowRemapFailure", "reboot", "00000000:87:00.0")
    assert "row remapping failed" in finding.message and "may need replacing" in finding.message


def test_nvlink_down_needs_nvidias_workflow_and_warnings_never_isolate():
    findings = read("dcgmi", "", answering(0, fixture("health-pcie-nvlink.json")), DGX).findings
    assert summary(findings)[0] == ("DCGMNVLinkFailure", "workflow", "00000000:0F:00.0")
    assert sorted(summary(findings)[1:]) == [
        ("DCGMMemoryWarning", "ignore", "00000000:B7:00.0"),
        ("DCGMPCIeWarning", "ignore", "00000000:0F:00.0"),
    ]


@pytest.mark.parametrize(
    ("system", "reason", "action"),
    [
        ("PCIe system", "DCGMPCIeFailure", "reboot"),
        ("Driver", "DCGMDriverFailure", "reboot"),
        ("SM system", "DCGMSMFailure", "reset-gpu"),
        ("InfoROM system", "DCGMInfoROMFailure", "workflow"),
        ("Power system", "DCGMPowerFailure", "ignore"),
        ("Thermal system", "DCGMThermalFailure", "ignore"),
        ("NvSwitch F", "DCGMNVSwitchFailure", "reboot"),
        ("NvSwitch NF", "DCGMNVSwitchNonFatalFailure", "ignore"),
        ("Hypothetical system", "DCGMHypotheticalFailure", "ignore"),
    ],
)
def test_each_system_on_failure(system, reason, action):
    (finding,) = judge([Incident("GPU", "0", system, "Failure", "something")], DGX)
    assert (finding.reason, finding.action) == (reason, action)


def test_graver_first_and_a_gpu_nvidia_smi_does_not_list_or_another_entity_named_without_an_address():
    findings = judge(
        [
            Incident("GPU", "0", "Thermal system", "Failure", "hot"),
            Incident("Switch", "1", "NvSwitch F", "Failure", "fatal"),
            Incident("GPU", "9", "Memory system", "Failure", "ecc"),
        ],
        DGX,
    )
    assert summary(findings) == [
        ("DCGMNVSwitchFailure", "reboot", None),
        ("DCGMMemoryFailure", "reset-gpu", None),
        ("DCGMThermalFailure", "ignore", "00000000:07:00.0"),
    ]
    assert findings[0].message.startswith("reboot: Switch 1: ")
    assert findings[1].message.startswith("reset-gpu: GPU 9: ")


@pytest.mark.parametrize(
    ("code", "output", "problem"),
    [
        (255, "watches-not-enabled.txt", "dcgmi health --check failed: Error: Health watches not enabled."),
        (255, "no-hostengine.txt", "dcgmi health --check failed: Error: unable to establish a connection"),
        (TIMED_OUT, "", "dcgmi did not answer within 30 s"),
        (0, "", "not dcgmi's health report"),
    ],
)
def test_dcgm_away_is_down_and_no_finding(code, output, problem):
    reading = read("dcgmi", "", answering(code, fixture(output) if output else ""), DGX)
    assert not reading.up and reading.findings == ()
    assert reading.problem.startswith(problem)


def test_a_remote_host_engine_and_setting_the_watches():
    run = answering(0, "Health monitor systems set successfully.\n")
    assert set_watches("dcgmi", "a", "10.0.0.5:5555", run) is None
    read("/usr/bin/dcgmi", "10.0.0.5:5555", run)
    assert [command for command, _ in run.calls] == [
        ["dcgmi", "health", "--set", "a", "--host", "10.0.0.5:5555"],
        ["/usr/bin/dcgmi", *CHECK, "--host", "10.0.0.5:5555"],
    ]
    refused = answering(255, "Error: unable to establish a connection to the specified host: 10.0.0.5\n")
    assert set_watches("dcgmi", "a", "10.0.0.5:5555", refused) == (
        "Error: unable to establish a connection to the specified host: 10.0.0.5"
    )
