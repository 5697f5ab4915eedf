"""appliance.health.smi: nvidia-smi's answers judged (the agent's periodic check, re-admission's QA), on
nvidia-smi output in its exact CSV format (tests/unit/fixtures/nvidia-smi/README.md says where it comes
from: no GPU here)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from appliance.health.smi import GPU_QUERY, REMAPPED_ROWS_QUERY, TIMED_OUT, read, run_command

FIXTURES = Path(__file__).parent / "fixtures" / "nvidia-smi"


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text()


def answers(gpus: tuple[int, str], remapped: tuple[int, str] = (0, "")):
    """A stand-in for run_command that answers each of the two queries as recorded, and notes the calls."""
    calls = []

    def run(command: list[str], timeout: float) -> tuple[int, str]:
        calls.append((tuple(command[1:]), timeout))
        return gpus if tuple(command[1:]) == GPU_QUERY else remapped

    run.calls = calls  # type: ignore[attr-defined]
    return run


def reasons(reading) -> list[tuple[str, str, str | None]]:
    return [(f.reason, f.action, f.gpu) for f in reading.findings]


def test_eight_healthy_gpus_one_power_capped_at_full_load_are_no_finding():
    run = answers((0, fixture("health-dgx-a100-ok.csv")), (0, fixture("remapped-rows-ok.csv")))
    reading = read("nvidia-smi", 8, run, timeout=7)
    assert reading.answered and reading.succeeded and len(reading.gpus) == 8 and reading.findings == ()
    assert reading.gpus[0].uuid == "GPU-4b9f2c1e-8d3a-4f6b-9e21-7c5d0a3b8e14"
    assert reading.gpus[0].throttle == 0x4 and reading.gpus[0].retired_pages_pending is None  # [N/A]
    assert [timeout for _, timeout in run.calls] == [7, 7]
    assert [command for command, _ in run.calls] == [GPU_QUERY, REMAPPED_ROWS_QUERY]


def test_uncorrected_ecc_resets_the_gpu_and_thermal_or_power_brake_throttling_is_only_reported():
    run = answers((0, fixture("health-dgx-a100-faults.csv")), (0, fixture("remapped-rows-ok.csv")))
    reading = read("nvidia-smi", 8, run)
    assert reasons(reading) == [
        ("ECCUncorrected", "reset-gpu", "00000000:47:00.0"),
        ("ClocksThrottled", "ignore", "00000000:90:00.0"),
        ("ClocksThrottled", "ignore", "00000000:B7:00.0"),
    ]
    ecc, thermal, brake = reading.findings
    assert ecc.fatal and not thermal.fatal and not brake.fatal
    assert ecc.message == "reset-gpu: GPU 2 (00000000:47:00.0) has 3 uncorrected ECC errors (volatile)"
    assert thermal.message.endswith("clocks throttled: HW thermal slowdown (0x40)")
    assert brake.message.endswith("clocks throttled: HW power brake slowdown (0x80)")


def test_rows_pending_remapping_reset_the_gpu_that_has_them():
    run = answers((0, fixture("health-dgx-a100-ok.csv")), (0, fixture("remapped-rows-pending.csv")))
    reading = read("nvidia-smi", 8, run)
    assert reasons(reading) == [("RowRemapPending", "reset-gpu", "00000000:4E:00.0")]
    assert reading.gpus[3].remap_pending is True and reading.gpus[3].remap_failure is False


def test_a_failed_remapping_reboots_and_says_the_gpu_may_need_replacing_before_anything_else():
    run = answers((0, fixture("health-dgx-a100-faults.csv")), (0, fixture("remapped-rows-failure.csv")))
    reading = read("nvidia-smi", 8, run)
    assert reasons(reading)[:3] == [
        ("RowRemapFailure", "reboot", "00000000:87:00.0"),
        ("RowRemapPending", "reset-gpu", "00000000:87:00.0"),
        ("ECCUncorrected", "reset-gpu", "00000000:47:00.0"),
    ]
    assert "may need replacing (NVIDIA's RMA criterion)" in reading.findings[0].message


def test_pages_pending_retirement_reset_the_gpu_where_rows_are_not_remapped():
    # Turing: the remapped-rows query is not supported (nvidia-smi fails it); retired pages are.
    run = answers((0, fixture("health-t4.csv")), (2, "Field 'remapped_rows.pending' is not a valid field"))
    reading = read("nvidia-smi", 2, run)
    assert reasons(reading) == [("RetiredPagesPending", "reset-gpu", "00000000:AF:00.0")]
    assert reading.gpus[0].remap_pending is None


def test_a_gpu_missing_from_the_list_reboots_naming_the_ones_seen():
    seven = "".join(fixture("health-dgx-a100-ok.csv").splitlines(keepends=True)[:7])
    reading = read("nvidia-smi", 8, answers((0, seven), (0, fixture("remapped-rows-ok.csv"))))
    (finding,) = reading.findings
    assert (finding.reason, finding.action, finding.gpu) == ("GPUMissing", "reboot", None)
    assert finding.message.startswith("reboot: nvidia-smi sees 7 of 8 GPUs (00000000:07:00.0, ")


@pytest.mark.parametrize("name", ["driver-failure.txt", "no-devices.txt"])
def test_a_failing_nvidia_smi_is_gpu_missing_with_its_first_line(name):
    reading = read("nvidia-smi", 8, answers((9 if name == "driver-failure.txt" else 6, fixture(name))))
    (finding,) = reading.findings
    assert reading.answered and not reading.succeeded
    assert (finding.reason, finding.action) == ("GPUMissing", "reboot")
    assert finding.message == "reboot: nvidia-smi failed: " + fixture(name).splitlines()[0]


def test_an_nvidia_smi_that_does_not_answer_in_time_is_an_unresponsive_driver():
    reading = read("nvidia-smi", 8, answers((TIMED_OUT, "nvidia-smi did not answer within 30 s")), timeout=30)
    (finding,) = reading.findings
    assert not reading.answered and not reading.succeeded
    assert (finding.reason, finding.action) == ("DriverUnresponsive", "reboot")
    assert finding.message == "reboot: nvidia-smi did not answer within 30 s (the driver hangs)"


def test_values_a_gpu_does_not_support_are_no_data_never_zero_or_a_fault():
    output = (
        "0, 00000000:3B:00.0, [N/A], [N/A], [Not Supported], [N/A]\n"
        "1, 00000000:AF:00.0, GPU-e8f1a4c6-7b3d-0925-d6a8-3f2b7e1c9d54, [Unknown Error], N/A, \n"
    )
    reading = read("nvidia-smi", 2, answers((0, output), (0, "00000000:3B:00.0, [N/A], [N/A]\n")))
    assert reading.findings == ()
    gpu = reading.gpus[0]
    assert (gpu.uuid, gpu.ecc_uncorrected, gpu.retired_pages_pending, gpu.throttle) == (
        None,
        None,
        None,
        None,
    )
    assert (gpu.remap_pending, gpu.remap_failure) == (None, None)


def test_run_command_reports_a_timeout_as_124_and_a_missing_program_as_127(tmp_path):
    code, output = run_command([sys.executable, "-c", "import time; time.sleep(5)"], timeout=0.5)
    assert code == TIMED_OUT and "did not answer within 0.5 s" in output
    assert run_command([str(tmp_path / "absent")], timeout=5)[0] == 127
    assert run_command([sys.executable, "-c", "print('ok')"], timeout=5) == (0, "ok\n")
