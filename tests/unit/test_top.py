"""`appliance top` (src/appliance/health/top.py): nvidia-smi over SSH, per node and per GPU, like rntop.

There are no GPUs here, so nvidia-smi's output is recorded: tests/unit/fixtures/nvidia-smi/ holds its
answers to `appliance top`'s query (--format=csv,noheader,nounits), written in nvidia-smi's exact format
for a DGX A100 at work, an idle 2 x T4 node, an A100 in MIG mode ([N/A] utilisation), a node whose driver
is not loaded and one with no GPU. They reach the code through the transport, which is a parameter. The
inventory is read by the real ansible-inventory, and the command itself runs for real against
unreachable hosts and, when this machine has no nvidia-smi, against a local host.
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import threading
from pathlib import Path

import pytest

from appliance.errors import UsageError
from appliance.health import top
from appliance.health.top import CommandResult, Gpu, Host, NodeReading
from tests.conftest import BIN, PROJECT

FIXTURES = Path(__file__).parent / "fixtures" / "nvidia-smi"


def recorded(name: str) -> str:
    return (FIXTURES / name).read_text()


def node(name: str, fixture: str) -> NodeReading:
    """A node as `appliance top` reads it when nvidia-smi answers with the recorded FIXTURE."""
    host = Host(name, f"10.0.0.{len(name)}")
    return top.reading_of(host, CommandResult(0, recorded(fixture), ""), 15)


# --- Parsing ---


@pytest.mark.parametrize(
    ("fixture", "count", "first", "last"),
    [
        (
            "dgx-a100-busy.csv",
            8,
            Gpu(
                0,
                "GPU-4b9f2c1e-8d3a-4f6b-9e21-7c5d0a3b8e14",
                "NVIDIA A100-SXM4-80GB",
                "535.129.03",
                100,
                78215,
                81920,
            ),
            Gpu(
                7,
                "GPU-2a6c0f94-7d3b-4e81-b5f9-8a1e6d4c3b05",
                "NVIDIA A100-SXM4-80GB",
                "535.129.03",
                91,
                40211,
                81920,
            ),
        ),
        (
            "t4-idle.csv",
            2,
            Gpu(0, "GPU-5d2e8b71-4a9c-3f06-e1b7-0c4f9a6d2e83", "Tesla T4", "470.223.02", 0, 0, 15109),
            Gpu(1, "GPU-e8f1a4c6-7b3d-0925-d6a8-3f2b7e1c9d54", "Tesla T4", "470.223.02", 0, 0, 15109),
        ),
        (
            "a100-mig-na.csv",
            2,
            Gpu(
                0,
                "GPU-3c9a7e15-b2d8-4f60-9a4e-6d1c8f0b2e37",
                "NVIDIA A100-SXM4-40GB",
                "525.147.05",
                None,
                13,
                40960,
            ),
            Gpu(
                1,
                "GPU-8f4d2b60-1e7a-4c93-b8f5-2a6e9d3c0f71",
                "NVIDIA A100-SXM4-40GB",
                "525.147.05",
                42,
                10240,
                40960,
            ),
        ),
    ],
)
def test_recorded_outputs_parse_into_one_gpu_per_line(fixture, count, first, last):
    gpus = top.parse_nvidia_smi(recorded(fixture))
    assert len(gpus) == count
    assert [gpu.index for gpu in gpus] == list(range(count))
    assert gpus[0] == first
    assert gpus[-1] == last


@pytest.mark.parametrize(
    ("line", "utilization", "used", "total"),
    [
        ("0, GPU-a, Tesla V100-SXM2-32GB, 535.104.05, 37, 1024, 32768", 37, 1024, 32768),
        ("0,GPU-a,Tesla V100-SXM2-32GB,535.104.05,37,1024,32768", 37, 1024, 32768),  # no spaces
        ("0,  GPU-a,  Tesla V100-SXM2-32GB,  535.104.05,  37,  1024,  32768  ", 37, 1024, 32768),
        ("0, GPU-a, NVIDIA A100-SXM4-40GB, 525.147.05, [N/A], 13, 40960", None, 13, 40960),  # MIG
        ("0, GPU-a, GeForce GTX 1080, 390.157, [Not Supported], 512, 8119", None, 512, 8119),
        ("0, GPU-a, NVIDIA A100-PCIE-40GB, 535.104.05, [Unknown Error], [N/A], [N/A]", None, None, None),
    ],
)
def test_values_and_non_values_of_one_line(line, utilization, used, total):
    (gpu,) = top.parse_nvidia_smi(line + "\n")
    assert gpu.name.startswith(("Tesla", "NVIDIA", "GeForce"))
    assert (gpu.utilization, gpu.memory_used, gpu.memory_total) == (utilization, used, total)


def test_blank_lines_and_crlf_are_ignored():
    text = (
        "\n0, GPU-a, Tesla T4, 470.223.02, 5, 100, 15109\r\n"
        "\r\n1, GPU-b, Tesla T4, 470.223.02, 7, 200, 15109\n\n"
    )
    assert [gpu.utilization for gpu in top.parse_nvidia_smi(text)] == [5, 7]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "listed no GPU"),
        (recorded("driver-failure.txt"), "expected 7 fields, got 1"),
        ("0, GPU-a, Tesla T4, 470.223.02, 5, 100\n", "expected 7 fields, got 6"),
        ("0, GPU-a, Tesla T4, 470.223.02, busy, 100, 15109\n", "utilization.gpu is 'busy'"),
        ("[N/A], GPU-a, Tesla T4, 470.223.02, 5, 100, 15109\n", "no GPU index"),
    ],
)
def test_anything_else_is_refused_with_the_line(text, message):
    with pytest.raises(top.NvidiaSmiOutputError, match=message.replace("(", r"\(")):
        top.parse_nvidia_smi(text)


# --- What a node's answer means ---


@pytest.mark.parametrize(
    ("result", "status", "error"),
    [
        (CommandResult(0, recorded("t4-idle.csv"), ""), "ok", ""),
        (
            CommandResult(255, "", "ssh: connect to host 10.0.0.22 port 22: No route to host\r\n"),
            "unreachable",
            "ssh: connect to host 10.0.0.22 port 22: No route to host",
        ),
        (
            CommandResult(
                255, "", "Warning: Permanently added '10.0.0.22' (ED25519).\nPermission denied (publickey).\n"
            ),
            "unreachable",
            "Permission denied (publickey).",
        ),
        (
            CommandResult(127, "", "bash: line 1: nvidia-smi: command not found\n"),
            "no_nvidia_smi",
            "bash: line 1: nvidia-smi: command not found",
        ),
        (
            CommandResult(9, recorded("driver-failure.txt"), ""),
            "nvidia_smi_failed",
            "exit 9: NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. "
            "Make sure that the latest NVIDIA driver is installed and running.",
        ),
        (
            CommandResult(6, recorded("no-devices.txt"), ""),
            "nvidia_smi_failed",
            "exit 6: No devices were found",
        ),
        (CommandResult(None, "", ""), "timeout", "no answer within 15 s"),
        (
            CommandResult(0, "Segmentation fault\n", ""),
            "bad_output",
            "expected 7 fields, got 1: 'Segmentation fault'",
        ),
    ],
)
def test_every_answer_becomes_a_reading_or_a_reason(result, status, error):
    reading = top.reading_of(Host("gpu-2", "10.0.0.22"), result, 15)
    assert (reading.node, reading.address, reading.status, reading.error) == (
        "gpu-2",
        "10.0.0.22",
        status,
        error,
    )
    assert reading.ok is (status == "ok")
    assert len(reading.gpus) == (2 if status == "ok" else 0)


def test_a_connection_other_than_ssh_or_local_is_reported_not_tried():
    def never(host, command, timeout):
        raise AssertionError("no transport for a winrm host")

    reading = top.read_node(Host("win-1", "10.0.0.9", connection="winrm"), never)
    assert reading.status == "unsupported"
    assert "ansible_connection winrm" in reading.error


def test_every_host_is_read_at_once_and_the_readings_keep_the_inventory_order():
    hosts = [Host(f"gpu-{n}", f"10.0.0.{n}") for n in range(1, 6)]
    # Each host waits for all the others: read one after the other, the barrier breaks.
    everyone = threading.Barrier(len(hosts), timeout=10)
    answers = {
        "gpu-1": CommandResult(0, recorded("dgx-a100-busy.csv"), ""),
        "gpu-2": CommandResult(255, "", "ssh: connect to host 10.0.0.2 port 22: Connection timed out"),
        "gpu-3": CommandResult(0, recorded("t4-idle.csv"), ""),
        "gpu-4": CommandResult(127, "", "sh: 1: nvidia-smi: not found"),
        "gpu-5": CommandResult(9, recorded("driver-failure.txt"), ""),
    }
    commands = []

    def transport(host: Host, command: str, timeout: float) -> CommandResult:
        commands.append(command)
        everyone.wait()
        return answers[host.name]

    readings = top.collect(hosts, run=transport, timeout=7)
    assert [r.node for r in readings] == ["gpu-1", "gpu-2", "gpu-3", "gpu-4", "gpu-5"]
    assert [r.status for r in readings] == ["ok", "unreachable", "ok", "no_nvidia_smi", "nvidia_smi_failed"]
    assert set(commands) == {
        "nvidia-smi --query-gpu=index,uuid,name,driver_version,utilization.gpu,memory.used,memory.total"
        " --format=csv,noheader,nounits"
    }


# --- Aggregation ---


@pytest.mark.parametrize(
    ("fixtures", "gpus", "utilization", "used", "total", "percent"),
    [
        (["dgx-a100-busy.csv"], 8, 763 / 8, 523398, 655360, 100 * 523398 / 655360),
        (["t4-idle.csv"], 2, 0.0, 0, 30218, 0.0),
        # MIG: the GPU without a utilisation is left out of the average, not counted as 0 %.
        (["a100-mig-na.csv"], 2, 42.0, 10253, 81920, 100 * 10253 / 81920),
        # Over GPUs, not nodes: the 8 busy A100s outweigh the 2 idle T4s.
        (["dgx-a100-busy.csv", "t4-idle.csv"], 10, 76.3, 523398, 685578, 100 * 523398 / 685578),
        (
            ["dgx-a100-busy.csv", "t4-idle.csv", "a100-mig-na.csv"],
            12,
            805 / 11,
            533651,
            767498,
            100 * 533651 / 767498,
        ),
    ],
)
def test_cluster_usage(fixtures, gpus, utilization, used, total, percent):
    usage = top.cluster_usage([node(f"n{i}", fixture) for i, fixture in enumerate(fixtures)])
    assert usage.gpus == gpus
    assert usage.utilization == pytest.approx(utilization)
    assert (usage.memory_used, usage.memory_total) == (used, total)
    assert usage.memory_percent == pytest.approx(percent)


def test_unread_nodes_and_unreported_figures_leave_no_figure_rather_than_zero():
    unreachable = NodeReading("gpu-9", "10.0.0.9", status="unreachable", error="No route to host")
    usage = top.cluster_usage([unreachable])
    assert (usage.gpus, usage.utilization, usage.memory_used, usage.memory_total) == (0, None, None, None)
    assert usage.memory_percent is None
    blind = Gpu(0, "GPU-a", "NVIDIA A100-PCIE-40GB", "535.104.05", None, None, None)
    assert top.usage_of([blind]).utilization is None
    assert top.usage_of([blind]).memory_percent is None


def test_the_json_document_has_cluster_nodes_gpus_and_errors():
    readings = [
        node("dgx-1", "dgx-a100-busy.csv"),
        NodeReading("gpu-9", "10.0.0.9", status="unreachable", error="No route to host"),
        node("t4-1", "t4-idle.csv"),
    ]
    doc = json.loads(json.dumps(top.document(readings)))
    assert doc["cluster"] == {
        "nodes": 3,
        "nodes_read": 2,
        "gpus": 10,
        "utilization_percent": 76.3,
        "memory_used_mib": 523398,
        "memory_total_mib": 685578,
        "memory_used_percent": 76.3,
    }
    assert [n["node"] for n in doc["nodes"]] == ["dgx-1", "gpu-9", "t4-1"]
    assert doc["nodes"][0] == {
        "node": "dgx-1",
        "address": "10.0.0.5",
        "status": "ok",
        "error": None,
        "driver_version": "535.129.03",
        "gpus": 8,
        "utilization_percent": 95.4,
        "memory_used_mib": 523398,
        "memory_total_mib": 655360,
        "memory_used_percent": 79.9,
    }
    assert doc["nodes"][1]["status"] == "unreachable"
    assert doc["nodes"][1]["gpus"] is None and doc["nodes"][1]["utilization_percent"] is None
    assert len(doc["gpus"]) == 10
    assert doc["gpus"][9] == {
        "node": "t4-1",
        "index": 1,
        "uuid": "GPU-e8f1a4c6-7b3d-0925-d6a8-3f2b7e1c9d54",
        "name": "Tesla T4",
        "driver_version": "470.223.02",
        "utilization_percent": 0.0,
        "memory_used_mib": 0,
        "memory_total_mib": 15109,
        "memory_used_percent": 0.0,
    }
    assert doc["errors"] == [
        {"node": "gpu-9", "address": "10.0.0.9", "status": "unreachable", "error": "No route to host"}
    ]


# --- Rendering ---


def test_the_view_has_rntops_three_sections_with_aligned_columns_and_the_figures():
    readings = [
        node("dgx-a100-01", "dgx-a100-busy.csv"),
        node("t4-1", "t4-idle.csv"),
        node("mig-1", "a100-mig-na.csv"),
        top.reading_of(
            Host("gpu-old", "10.0.0.40"), CommandResult(9, recorded("driver-failure.txt"), ""), 15
        ),
    ]
    lines = top.render(readings).splitlines()
    assert lines[:3] == [
        "Cluster",
        "GPU utilization: 73%   Used GPU memory: 533651 MiB / 767498 MiB (70%)",
        "1 of 4 nodes could not be read; the figures leave them out",
    ]
    nodes = lines[lines.index("Nodes") + 1 : lines.index("GPUs") - 1]
    gpus = lines[lines.index("GPUs") + 1 :]
    assert nodes == [
        "dgx-a100-01   535.129.03   GPU utilization: 95%    Used GPU memory: 523398 MiB / 655360 MiB (80%)",
        "t4-1          470.223.02   GPU utilization: 0%     Used GPU memory: 0 MiB / 30218 MiB (0%)",
        "mig-1         525.147.05   GPU utilization: 42%    Used GPU memory: 10253 MiB / 81920 MiB (13%)",
        "gpu-old       nvidia-smi failed: exit 9: NVIDIA-SMI has failed because it couldn't communicate with "
        "the NVIDIA driver. Make sure that the latest NVIDIA driver is installed and running.",
    ]
    assert len(gpus) == 12
    assert (
        gpus[0]
        == "dgx-a100-01   0            GPU utilization: 100%   Used GPU memory: 78215 MiB / 81920 MiB (95%)"
    )
    assert (
        gpus[9]
        == "t4-1          1            GPU utilization: 0%     Used GPU memory: 0 MiB / 15109 MiB (0%)"
    )
    assert (
        gpus[10]
        == "mig-1         0            GPU utilization: n/a    Used GPU memory: 13 MiB / 40960 MiB (0%)"
    )
    # The columns line up across both sections.
    figures = nodes[:3] + gpus
    assert {line.index("GPU utilization") for line in figures} == {27}
    assert {line.index("Used GPU memory") for line in figures} == {51}


def test_percentages_round_half_up():
    gpus = [
        Gpu(0, "GPU-a", "Tesla T4", "470.223.02", 1, 1, 2),
        Gpu(1, "GPU-b", "Tesla T4", "470.223.02", 2, 0, 2),
    ]
    view = top.render([NodeReading("t4-1", "10.0.0.1", tuple(gpus))])
    assert "GPU utilization: 2%   Used GPU memory: 1 MiB / 4 MiB (25%)" in view  # 1.5 -> 2
    gpus[1] = Gpu(1, "GPU-b", "Tesla T4", "470.223.02", 4, 0, 2)
    view = top.render([NodeReading("t4-1", "10.0.0.1", tuple(gpus))])
    assert "GPU utilization: 3%" in view  # 2.5 -> 3, where round() gives 2


# --- --watch ---


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(("out", "cleared"), [(io.StringIO(), False), (Terminal(), True)])
def test_watch_refreshes_until_ctrl_c_and_clears_the_screen_only_on_a_terminal(monkeypatch, out, cleared):
    monkeypatch.setattr(top.time, "sleep", lambda seconds: None)
    calls = []

    def transport(host: Host, command: str, timeout: float) -> CommandResult:
        calls.append(host.name)
        if len(calls) == 3:
            raise KeyboardInterrupt
        if len(calls) == 2:
            return CommandResult(255, "", "ssh: connect to host 10.0.0.1 port 22: Connection refused")
        return CommandResult(0, recorded("t4-idle.csv"), "")

    code = top.show([Host("t4-1", "10.0.0.1")], watch=2, out=out, run=transport)
    view = out.getvalue()
    assert code == 1  # the last reading's: the node had become unreachable
    assert view.count("Every 2 s;") == 2
    assert view.count("Cluster\n") == 2
    assert "t4-1   unreachable: ssh: connect to host 10.0.0.1 port 22: Connection refused" in view
    assert view.count(top.CLEAR_SCREEN) == (2 if cleared else 0)


def test_watch_with_json_prints_one_document_per_line(monkeypatch):
    monkeypatch.setattr(top.time, "sleep", lambda seconds: None)
    calls = []

    def transport(host: Host, command: str, timeout: float) -> CommandResult:
        calls.append(host.name)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return CommandResult(0, recorded("dgx-a100-busy.csv"), "")

    out = Terminal()
    assert top.show([Host("dgx-1", "10.0.0.1")], as_json=True, watch=5, out=out, run=transport) == 0
    documents = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [d["cluster"]["gpus"] for d in documents] == [8, 8]


def test_ctrl_c_before_the_first_reading_is_an_interruption():
    def transport(host: Host, command: str, timeout: float) -> CommandResult:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        top.show([Host("t4-1", "10.0.0.1")], watch=2, out=io.StringIO(), run=transport)


# --- The inventory and the ssh command ---


def test_connection_variables_are_those_ansible_uses():
    host = top.host_from_vars(
        "gpu-1",
        {
            "ansible_host": {"__ansible_unsafe": "10.0.0.21"},
            "ansible_user": "ansible",
            "ansible_port": 2222,
            "ansible_ssh_private_key_file": "~/.ssh/appliance_ed25519",
            "ansible_ssh_common_args": (
                "-o UserKnownHostsFile='/var/lib/lab state/known_hosts' -o ProxyJump=jump"
            ),
        },
    )
    assert host == Host(
        name="gpu-1",
        address="10.0.0.21",
        user="ansible",
        port=2222,
        private_key=str(Path("~/.ssh/appliance_ed25519").expanduser()),
        ssh_args=("-o", "UserKnownHostsFile=/var/lib/lab state/known_hosts", "-o", "ProxyJump=jump"),
    )
    assert host.command("nvidia-smi -L", 15) == [
        "ssh",
        "-o",
        "BatchMode=yes",
        "-o",
        "ConnectTimeout=15",
        "-p",
        "2222",
        "-i",
        str(Path("~/.ssh/appliance_ed25519").expanduser()),
        "-l",
        "ansible",
        "-o",
        "UserKnownHostsFile=/var/lib/lab state/known_hosts",
        "-o",
        "ProxyJump=jump",
        "--",
        "10.0.0.21",
        "nvidia-smi -L",
    ]


def test_a_host_without_variables_is_reached_by_its_name_and_a_local_one_locally():
    assert top.host_from_vars("gpu-1.example", {}).command("nvidia-smi", 9.5) == [
        "ssh",
        "-o",
        "BatchMode=yes",
        "-o",
        "ConnectTimeout=10",
        "--",
        "gpu-1.example",
        "nvidia-smi",
    ]
    local = top.host_from_vars("localhost", {"ansible_connection": "local"})
    assert local.command("nvidia-smi", 5) == ["/bin/sh", "-c", "nvidia-smi"]


def test_a_port_that_is_not_a_number_names_host_and_variable():
    with pytest.raises(
        UsageError, match=r"host gpu-1: ansible_port is '\{\{ port \}\}'; expected a port number"
    ):
        top.host_from_vars("gpu-1", {"ansible_port": "{{ port }}"})


def test_group_hosts_follows_child_groups_in_order_once():
    listing = {
        "_meta": {"hostvars": {}},
        "all": {"children": ["ungrouped", "k8s_cluster"]},
        "k8s_cluster": {"children": ["control_plane", "workers"]},
        "control_plane": {"hosts": ["cp-1"]},
        "workers": {"children": ["gpu_workers", "cpu_workers"]},
        "gpu_workers": {"hosts": ["gpu-1", "gpu-2"]},
        "cpu_workers": {"hosts": ["cpu-1", "gpu-2"]},
        "ungrouped": {"hosts": ["lonely"]},
    }
    assert top.group_hosts(listing, "gpu_workers") == ["gpu-1", "gpu-2"]
    assert top.group_hosts(listing, "workers") == ["gpu-1", "gpu-2", "cpu-1"]
    assert top.group_hosts(listing, "all") == ["lonely", "cp-1", "gpu-1", "gpu-2", "cpu-1"]
    assert top.group_hosts(listing, "no_such_group") == []


@pytest.fixture
def lab_like_inventory(tmp_path: Path) -> Path:
    """An inventory shaped like the lab's (lab.py write_inventory), with group_vars beside it."""
    (tmp_path / "group_vars").mkdir()
    (tmp_path / "group_vars" / "gpu_workers.yml").write_text("ansible_port: 2222\n")
    inventory = tmp_path / "hosts.yml"
    inventory.write_text(
        "all:\n"
        "  vars:\n"
        "    ansible_user: appliance\n"
        f"    ansible_ssh_private_key_file: {tmp_path}/id_ed25519\n"
        f"    ansible_ssh_common_args: -o UserKnownHostsFile={tmp_path}/known_hosts\n"
        "  hosts:\n"
        "    cp-1: {ansible_host: 172.30.0.10}\n"
        "    worker-1: {ansible_host: 172.30.0.11}\n"
        "    worker-2: {ansible_host: 172.30.0.12}\n"
        "  children:\n"
        "    control_plane: {hosts: {cp-1: }}\n"
        "    workers: {children: {gpu_workers: , cpu_workers: }}\n"
        "    gpu_workers: {hosts: {worker-1: , worker-2: }}\n"
        "    cpu_workers: {hosts: {}}\n"
    )
    return inventory


def test_the_real_ansible_inventory_gives_hosts_and_their_connection(lab_like_inventory):
    directory = lab_like_inventory.parent
    hosts = top.inventory_hosts(lab_like_inventory, ansible_config=PROJECT / "ansible.cfg")
    assert hosts == [
        Host(
            name=name,
            address=address,
            user="appliance",
            port=2222,
            private_key=f"{directory}/id_ed25519",
            ssh_args=("-o", f"UserKnownHostsFile={directory}/known_hosts"),
        )
        for name, address in [("worker-1", "172.30.0.11"), ("worker-2", "172.30.0.12")]
    ]
    limited = top.inventory_hosts(lab_like_inventory, group="all", limit="cp-1,worker-2")
    assert [(h.name, h.port) for h in limited] == [("cp-1", None), ("worker-2", 2222)]


def test_an_empty_selection_is_a_usage_error(lab_like_inventory):
    with pytest.raises(
        UsageError, match=r"no host in group 'cpu_workers' of .*; choose another with --group"
    ):
        top.inventory_hosts(lab_like_inventory, group="cpu_workers")
    with pytest.raises(UsageError, match=r"no host of group 'gpu_workers' in .* matches --limit 'cp-1'"):
        top.inventory_hosts(lab_like_inventory, limit="cp-1")


# --- The command, for real ---


def appliance_top(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "appliance"), "top", *args],
        cwd=PROJECT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture
def unreachable_inventory(tmp_path: Path) -> Path:
    """GPU workers nobody answers for: port 1 of this machine refuses connections."""
    inventory = tmp_path / "hosts.yml"
    inventory.write_text(
        "all:\n"
        "  vars:\n"
        "    ansible_host: 127.0.0.1\n"
        "    ansible_port: 1\n"
        f"    ansible_ssh_common_args: -o UserKnownHostsFile={tmp_path}/known_hosts\n"
        "  children:\n"
        "    gpu_workers: {hosts: {gpu-1: , gpu-2: }}\n"
    )
    return inventory


def test_appliance_top_reports_unreachable_nodes_and_exits_1(unreachable_inventory):
    """The real command over real ssh; no GPU here, so every node is unreachable (nvidia-smi's output is
    recorded in the fixtures for the other tests)."""
    result = appliance_top("--json", "-i", str(unreachable_inventory), "--timeout", "20")
    assert result.returncode == 1, result.stderr
    doc = json.loads(result.stdout)
    assert [(n["node"], n["status"]) for n in doc["nodes"]] == [
        ("gpu-1", "unreachable"),
        ("gpu-2", "unreachable"),
    ]
    assert all("port 1" in error["error"] for error in doc["errors"])
    assert doc["cluster"]["nodes_read"] == 0 and doc["gpus"] == []

    view = appliance_top("-i", str(unreachable_inventory), "--limit", "gpu-2", "--timeout", "20")
    assert view.returncode == 1, view.stderr
    assert "gpu-2   unreachable: ssh: connect to host 127.0.0.1 port 1" in view.stdout
    assert "gpu-1" not in view.stdout


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="this machine has nvidia-smi")
def test_appliance_top_reports_a_node_without_nvidia_smi(tmp_path):
    """A host Ansible reaches with ansible_connection=local: this machine, which has no nvidia-smi."""
    inventory = tmp_path / "hosts.yml"
    inventory.write_text(
        "all:\n  children:\n    gpu_workers:\n      hosts: {here: {ansible_connection: local}}\n"
    )
    result = appliance_top("-i", str(inventory))
    assert result.returncode == 1, result.stderr
    assert "here   no nvidia-smi: " in result.stdout
    assert "nvidia-smi: not found" in result.stdout or "command not found" in result.stdout


def test_appliance_top_refuses_a_group_without_hosts(unreachable_inventory):
    result = appliance_top("-i", str(unreachable_inventory), "--group", "control_plane")
    assert result.returncode == 2
    assert "no host in group 'control_plane'" in result.stderr
