"""The decisions of the GPU health loop, as pure functions: the controller's plan (circuit breaker, dry
run input), re-admission's QA, the agent's file source and metrics, the status table, kubeconfig reading.

The API calls themselves run against a real cluster in tests/lab/test_gpu_health.py. nvidia-smi's
answers here are recorded text: there are no GPUs on this machine.
"""

from __future__ import annotations

import base64
import os
import threading
import time
import uuid
from pathlib import Path

import pytest

from appliance.health import node as nodeapi
from appliance.health.agent import AgentConfig, Metrics, follow_file, follow_kmsg
from appliance.health.controller import ControllerConfig, plan
from appliance.health.kube import KubeError, read_kubeconfig
from appliance.health.operations import qa, status_table
from appliance.health.smi import GPU_QUERY, TIMED_OUT, Finding, Reading

NOW = 1_800_000_000.0


def iso(seconds_ago: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(NOW - seconds_ago))


def gpu_node(
    name: str,
    fault: tuple[str, str] | None = None,
    since: float = 10,
    taint: str | None = None,
    isolated_ago: float | None = None,
) -> dict:
    """A Node as the API returns it; fault = (reason, action) puts GPUHealthy=False."""
    conditions = [{"type": "Ready", "status": "True"}]
    if fault:
        reason, action = fault
        conditions.append(
            {
                "type": "GPUHealthy",
                "status": "False",
                "reason": reason,
                "message": f"{action}: NVRM: Xid (PCI:0000:4e:00): 79, GPU has fallen off the bus.",
                "lastTransitionTime": iso(since),
            }
        )
    else:
        conditions.append({"type": "GPUHealthy", "status": "True", "reason": "NoGPUFault"})
    annotations = {} if isolated_ago is None else {nodeapi.ISOLATED_AT: iso(isolated_ago)}
    taints = [{"key": "appliance.io/gpu-fault", "value": taint, "effect": "NoSchedule"}] if taint else []
    return {
        "metadata": {"name": name, "resourceVersion": "1", "annotations": annotations},
        "spec": {"taints": taints},
        "status": {"conditions": conditions},
    }


def names(pairs) -> list[str]:
    return [name for name, _ in pairs]


CONFIG = ControllerConfig(max_isolated_share=0.2, window_seconds=3600)


def test_a_fatal_fault_isolates_its_node_with_the_action_of_the_fault():
    nodes = [gpu_node("gpu-1", ("Xid79", "reboot")), gpu_node("gpu-2")]
    result = plan(nodes, CONFIG, NOW)
    assert names(result.isolate) == ["gpu-1"]
    assert result.isolate[0][1].action == "reboot"
    assert result.deferred == () and result.budget == 1


def test_healthy_and_already_isolated_nodes_need_nothing():
    nodes = [gpu_node("gpu-1", ("Xid79", "reboot"), taint="reboot"), gpu_node("gpu-2")]
    result = plan(nodes, CONFIG, NOW)
    assert result.isolate == () and result.retaint == () and result.deferred == ()
    assert result.counted == ("gpu-1",)


def test_a_graver_fault_on_an_isolated_node_changes_its_taint_without_counting_again():
    nodes = [gpu_node("gpu-1", ("Xid79", "reboot"), taint="reset-gpu"), gpu_node("gpu-2")]
    result = plan(nodes, CONFIG, NOW)
    assert names(result.retaint) == ["gpu-1"] and result.isolate == ()


def test_the_breaker_isolates_at_most_its_share_and_defers_the_rest_oldest_fault_first():
    nodes = [gpu_node(f"gpu-{i}") for i in range(10)]
    for i, since in ((3, 5), (7, 50), (1, 20)):
        nodes[i] = gpu_node(f"gpu-{i}", ("Xid79", "reboot"), since=since)
    result = plan(nodes, CONFIG, NOW)  # 20 % of 10 nodes: 2
    assert result.budget == 2
    assert names(result.isolate) == ["gpu-7", "gpu-1"]
    assert names(result.deferred) == ["gpu-3"]


@pytest.mark.parametrize(
    ("gpu_nodes", "share", "budget"),
    [(2, 0.2, 1), (4, 0.2, 1), (5, 0.2, 1), (10, 0.2, 2), (11, 0.2, 2), (4, 0.5, 2), (3, 1.0, 3)],
)
def test_the_budget_is_the_share_of_gpu_nodes_rounded_down_and_at_least_one(gpu_nodes, share, budget):
    nodes = [gpu_node(f"gpu-{i}", ("Xid79", "reboot")) for i in range(gpu_nodes)]
    result = plan(nodes, ControllerConfig(max_isolated_share=share), NOW)
    assert result.budget == budget and len(result.isolate) == budget
    assert len(result.deferred) == gpu_nodes - budget


def test_a_node_readmitted_within_the_window_still_counts_so_a_storm_cannot_cycle_through_the_fleet():
    nodes = [gpu_node("gpu-1", isolated_ago=600), gpu_node("gpu-2", ("Xid79", "reboot"))] + [
        gpu_node(f"gpu-{i}") for i in range(3, 6)
    ]
    result = plan(nodes, CONFIG, NOW)
    assert result.counted == ("gpu-1",)
    assert result.isolate == () and names(result.deferred) == ["gpu-2"]
    # Once the window has passed, the isolation no longer counts.
    later = plan(nodes, CONFIG, NOW + 3600)
    assert names(later.isolate) == ["gpu-2"]


def test_the_same_node_faulting_again_within_the_window_is_isolated_again():
    nodes = [gpu_node("gpu-1", ("Xid13", "reset-gpu"), isolated_ago=60), gpu_node("gpu-2")]
    result = plan(nodes, CONFIG, NOW)
    assert names(result.isolate) == ["gpu-1"]


def test_an_unknown_action_in_the_condition_is_handled_as_the_gravest():
    item = gpu_node("gpu-1", ("Xid999", "frobnicate"))
    assert nodeapi.fault_of(item).action == "reboot"


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"effect": "NoRun"}, "effect 'NoRun': expected NoSchedule or NoExecute"),
        ({"max_isolated_share": 0}, "max_isolated_share 0: expected a share in (0, 1]"),
        ({"max_isolated_share": 1.5}, "max_isolated_share 1.5"),
        ({"window_seconds": 0}, "window_seconds 0"),
    ],
)
def test_bad_controller_settings_are_refused_with_the_value(settings, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        ControllerConfig(**settings)


def test_unknown_settings_in_a_config_file_are_named(tmp_path):
    config = tmp_path / "agent.yml"
    config.write_text("source: kmsg\nexpected_gpu: 8\n")
    with pytest.raises(ValueError, match="unknown settings expected_gpu"):
        AgentConfig.from_file(config)


def test_settings_files_as_the_role_writes_them_are_read_with_their_paths(tmp_path):
    agent = tmp_path / "agent.yml"
    agent.write_text(
        'node_name: "worker-1"\nkubeconfig: /etc/kubernetes/kubelet.conf\nsource: "file:/var/log/feed"\n'
        'expected_gpus: 8\ncheck_interval: 60\nevent_interval: 30\nmetrics_address: ":9465"\n'
        "catalog_override: /etc/appliance/gpu-health/xid-overrides.yml\n"
    )
    config = AgentConfig.from_file(agent)
    assert config.kubeconfig == Path("/etc/kubernetes/kubelet.conf") and config.expected_gpus == 8
    assert config.catalog_override == Path("/etc/appliance/gpu-health/xid-overrides.yml")
    controller = tmp_path / "controller.yml"
    controller.write_text(
        "kubeconfig: /etc/c.conf\neffect: NoExecute\nmax_isolated_share: 0.5\ndry_run: true\n"
    )
    read = ControllerConfig.from_file(controller)
    assert (read.kubeconfig, read.effect, read.max_isolated_share, read.dry_run) == (
        Path("/etc/c.conf"),
        "NoExecute",
        0.5,
        True,
    )
    controller.write_text("effect: [NoExecute\n")
    with pytest.raises(ValueError, match=f"{controller}: while parsing"):
        ControllerConfig.from_file(controller)


# ------------------------------------------------------------------------------------------ nvidia-smi

DGX = "\n".join(
    f"{i}, 00000000:{bus}:00.0, GPU-{i}, 0, [N/A], 0x0000000000000001"
    for i, bus in enumerate(["07", "0F", "47", "4E", "87", "90", "B7", "BD"])
)


def answering(smi: tuple[int, str], dcgm: tuple[int, str] | None = None):
    """run_command's stand-in: nvidia-smi's GPU query answers SMI, its remapped-rows query fails as on a GPU
    without row remapping, dcgmi answers DCGM."""

    def run(command: list[str], timeout: float) -> tuple[int, str]:
        if command[0].endswith("dcgmi"):
            assert dcgm is not None and timeout >= 300  # level 1 takes seconds, the timeout is generous
            return dcgm
        return smi if tuple(command[1:]) == GPU_QUERY else (2, "not supported")

    return run


def tools(*installed: str):
    return lambda name: f"/usr/bin/{name}" if name in installed else None


def test_qa_passes_with_the_gpus_expected_and_runs_dcgm_where_installed():
    run = answering((0, DGX), (0, "| Deployment | Pass |\n"))
    verdict = qa(8, run, tools("nvidia-smi", "dcgmi"))
    assert verdict == {
        "passed": True,
        "summary": "nvidia-smi lists 8 GPUs, none with a fault; dcgmi diag -r 1 passed",
    }


def test_qa_passes_a_gpu_whose_clocks_are_throttled_and_fails_one_that_hangs():
    hot = "0, 00000000:07:00.0, GPU-1, 0, [N/A], 0x0000000000000040"
    assert qa(1, answering((0, hot)), tools("nvidia-smi"))["passed"] is True
    hung = qa(1, answering((TIMED_OUT, "")), tools("nvidia-smi"))
    assert hung == {"passed": False, "problem": "nvidia-smi did not answer within 30 s (the driver hangs)"}


@pytest.mark.parametrize(
    ("installed", "smi", "dcgm", "problem"),
    [
        ((), (0, DGX), None, "nvidia-smi is not installed"),
        (("nvidia-smi",), (0, ""), None, "nvidia-smi sees 0 of 1 GPUs (none)"),
        (
            ("nvidia-smi",),
            (0, "0, 00000000:07:00.0, GPU-0, 2, [N/A], 0x0000000000000001"),
            None,
            "GPU 0 (00000000:07:00.0) has 2 uncorrected ECC errors (volatile)",
        ),
        (
            ("nvidia-smi", "dcgmi"),
            (0, DGX),
            (226, "| Memory | Fail - GPU 3 |\n"),
            "dcgmi diag -r 1 exited 226: | Memory | Fail - GPU 3 |",
        ),
    ],
)
def test_qa_fails_naming_the_problem(installed, smi, dcgm, problem):
    verdict = qa(0, answering(smi, dcgm), tools(*installed))
    assert verdict == {"passed": False, "problem": problem}


# ---------------------------------------------------------------------------------------- file source


def test_the_file_source_follows_appends_truncation_and_replacement(tmp_path):
    path = tmp_path / "kern.log"
    path.write_text("old line, before the agent started\n")
    stop = threading.Event()
    seen: list[str] = []
    reader = threading.Thread(target=lambda: seen.extend(follow_file(path, stop, poll=0.01)), daemon=True)
    reader.start()
    time.sleep(0.2)
    with path.open("a") as handle:
        handle.write("first\nsecond, half")
        handle.flush()
        time.sleep(0.1)
        handle.write(" and whole\n")
    time.sleep(0.2)
    path.write_text("after truncation\n")
    time.sleep(0.2)
    replacement = tmp_path / "kern.log.new"
    replacement.write_text("after rotation\n")
    replacement.rename(path)
    time.sleep(0.3)
    stop.set()
    reader.join(2)
    assert seen == ["first", "second, half and whole", "after truncation", "after rotation"]


def test_a_file_that_appears_after_the_start_is_read_from_its_beginning(tmp_path):
    path = tmp_path / "kern.log"
    stop = threading.Event()
    seen: list[str] = []
    reader = threading.Thread(target=lambda: seen.extend(follow_file(path, stop, poll=0.01)), daemon=True)
    reader.start()
    time.sleep(0.1)
    path.write_text("the first line of a new file\n")
    time.sleep(0.2)
    stop.set()
    reader.join(2)
    assert seen == ["the first line of a new file"]


@pytest.mark.skipif(not os.access("/dev/kmsg", os.W_OK), reason="needs root and /dev/kmsg")
def test_the_kmsg_source_reads_the_kernel_log_from_now_on():
    """Writes one line (not an Xid) to this machine's kernel log and reads it back through /dev/kmsg."""
    marker = f"appliance test of the kmsg source {uuid.uuid4()}"
    stop = threading.Event()
    seen: list[str] = []

    def read() -> None:
        for line in follow_kmsg(stop):
            seen.append(line)
            if marker in line:
                return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    time.sleep(0.3)
    with open("/dev/kmsg", "w") as kmsg:
        kmsg.write(marker + "\n")
    reader.join(5)
    stop.set()
    assert seen and seen[-1] == marker  # the record's "prio,seq,usec,flags;" prefix is stripped


def test_metrics_are_prometheus_text():
    metrics = Metrics()
    metrics.lines = 12
    metrics.count_fault("xid", "79", "reboot", True)
    metrics.count_fault("xid", "79", "reboot", True)
    text = metrics.render("gpu-1")
    assert (
        'appliance_gpu_faults_total{node="gpu-1",kind="xid",code="79",action="reboot",fatal="true"} 2' in text
    )
    assert 'appliance_gpu_health_lines_total{node="gpu-1"} 12' in text
    assert "# TYPE appliance_gpu_healthy gauge" in text and text.endswith("\n")
    # No nvidia-smi on the node: no nvidia-smi series at all, rather than a sentinel value.
    assert "appliance_gpu_nvidia_smi_up" not in text and "appliance_gpu_visible" not in text


def test_metrics_show_the_last_nvidia_smi_check_and_each_finding():
    metrics = Metrics()
    hot = Finding("ClocksThrottled", "ignore", "ignore: GPU 5 ...", "00000000:90:00.0")
    metrics.smi = Reading(True, True, (), (hot,), 0.25)
    text = metrics.render("gpu-1")
    assert 'appliance_gpu_nvidia_smi_up{node="gpu-1"} 1' in text
    assert 'appliance_gpu_nvidia_smi_duration_seconds{node="gpu-1"} 0.250' in text
    assert 'appliance_gpu_visible{node="gpu-1"} 0' in text
    finding = 'gpu="00000000:90:00.0",reason="ClocksThrottled",action="ignore"} 1'
    assert f'appliance_gpu_finding{{node="gpu-1",{finding}' in text
    metrics.smi = Reading(False, False, (), (), 30.0)
    text = metrics.render("gpu-1")
    assert 'appliance_gpu_nvidia_smi_up{node="gpu-1"} 0' in text and "appliance_gpu_visible" not in text


# ------------------------------------------------------------------------------------------------ status


def test_the_status_table_shows_each_node_its_fault_line_and_the_breaker():
    result = {
        "nodes": [
            {
                "node": "gpu-1",
                "gpu_healthy": "False",
                "reason": "Xid79",
                "message": "reboot: NVRM: Xid ... 79",
                "since": "2026-11-24T10:00:00Z",
                "taint": "appliance.io/gpu-fault=reboot:NoSchedule",
                "cordoned": True,
                "deferred": False,
                "remediation": "remediating",
            },
            {
                "node": "gpu-2",
                "gpu_healthy": "False",
                "reason": "Xid48",
                "message": "workflow: NVRM: Xid ... 48",
                "since": "2026-11-24T10:00:01Z",
                "taint": "",
                "cordoned": False,
                "deferred": True,
            },
            {
                "node": "gpu-3",
                "gpu_healthy": "True",
                "reason": "NoGPUFault",
                "message": "",
                "since": "2026-11-24T09:00:00Z",
                "taint": "",
                "cordoned": False,
                "deferred": False,
            },
        ],
        "controller": {
            "dry_run": False,
            "effect": "NoSchedule",
            "budget": 1,
            "counted": ["gpu-1"],
            "max_isolated_share": 0.2,
            "gpu_nodes": ["gpu-1", "gpu-2", "gpu-3"],
            "window_seconds": 3600,
            "remediation": "auto",
        },
    }
    lines = status_table(result)
    assert lines[0].split() == ["NODE", "GPUHEALTHY", "REASON", "SINCE", "TAINT", "CORDONED", "REMEDIATION"]
    assert lines[1].split()[:3] == ["gpu-1", "False", "Xid79"]
    assert lines[1].split()[-2:] == ["yes", "remediating"]
    assert lines[2].strip() == "reboot: NVRM: Xid ... 79"
    assert "False (isolation deferred)" in lines[3]
    assert lines[5].split()[:2] == ["gpu-3", "True"]
    assert lines[-1] == (
        "controller: effect NoSchedule; circuit breaker 1 of 1 isolations used (limit 20% of 3 GPU nodes "
        "per 3600 s); remediation auto"
    )


# -------------------------------------------------------------------------------------------- kubeconfig


def test_a_kubeconfig_with_inline_data_or_files_gives_the_server_and_credentials(tmp_path):
    (tmp_path / "pki").mkdir()
    (tmp_path / "pki/ca.crt").write_bytes(b"CA")
    inline = base64.b64encode(b"CERT").decode()
    (tmp_path / "kubelet.conf").write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: c\n"
        "clusters: [{name: k, cluster: {server: 'https://10.0.0.3:6443/',"
        " certificate-authority: pki/ca.crt}}]\n"
        f"users: [{{name: u, user: {{client-certificate-data: {inline}, client-key: pki/ca.crt}}}}]\n"
        "contexts: [{name: c, context: {cluster: k, user: u}}]\n"
    )
    credentials = read_kubeconfig(tmp_path / "kubelet.conf")
    assert credentials.server == "https://10.0.0.3:6443"
    assert (credentials.ca_pem, credentials.cert_pem, credentials.key_pem) == (b"CA", b"CERT", b"CA")


def test_a_kubeconfig_without_a_context_is_one_clear_error(tmp_path):
    path = tmp_path / "empty.conf"
    path.write_text("apiVersion: v1\nkind: Config\n")
    with pytest.raises(KubeError, match=f"kubeconfig {path}: no usable current context"):
        read_kubeconfig(path)


def test_controller_metrics_show_isolated_nodes_remediation_steps_and_the_isolation_latency():
    from appliance.health.controller import Controller

    controller = Controller(ControllerConfig(), client=object())  # type: ignore[arg-type]
    controller.isolation_latency.observe(0.7)
    controller.isolation_latency.observe(3.0)
    taint = {"key": nodeapi.TAINT_KEY, "value": "reboot", "effect": "NoSchedule"}
    controller.nodes = {
        "gpu-1": {"metadata": {"name": "gpu-1"}, "spec": {"taints": [taint]}},
        "gpu-2": {"metadata": {"name": "gpu-2"}, "spec": {}},
    }
    controller.remediator.last = {"gpu-1": "failed (QAFailed)"}
    text = controller.metrics()
    assert 'appliance_gpu_controller_isolated{node="gpu-1"} 1' in text and 'node="gpu-2"' not in text
    assert 'appliance_gpu_controller_remediation{node="gpu-1",step="failed",reason="QAFailed"} 1' in text
    assert 'appliance_gpu_controller_isolation_seconds_bucket{le="1"} 1' in text
    assert 'appliance_gpu_controller_isolation_seconds_bucket{le="5"} 2' in text
    assert "appliance_gpu_controller_isolation_seconds_count 2" in text
    assert "appliance_gpu_controller_remediations_failed_total 0" in text
