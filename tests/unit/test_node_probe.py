"""plugins/modules/node_probe.py: how it reads swap areas, listening ports and the filesystem.
Role preflight runs it on real lab nodes in tests/lab/test_preflight.py."""

from __future__ import annotations

import importlib.util
import os
import socket
from pathlib import Path

import yaml

MODULE = Path(__file__).resolve().parents[2] / "plugins" / "modules" / "node_probe.py"
_spec = importlib.util.spec_from_file_location("node_probe", MODULE)
node_probe = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(node_probe)

TCP_HEADER = (
    "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
)
TCP = TCP_HEADER + (
    "   0: 0100007F:1771 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4242 1 0\n"
    "   1: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 17 1 0\n"
    "   2: 0A00000A:0016 0B00000A:C350 01 00000000:00000000 02:000A7B2D 00000000     0        0 99 4 0\n"
)
ANY6 = "00000000000000000000000000000000"
TCP6 = TCP_HEADER + (
    f"   0: {ANY6}:192B {ANY6}:0000 0A 00000000:00000000 00:00000000 00000000     0        0 555 1 0\n"
    f"   1: {ANY6}:0016 {ANY6}:0000 0A 00000000:00000000 00:00000000 00000000     0        0 18 1 0\n"
)


def test_listening_ports_are_read_from_ipv4_and_ipv6_tables():
    # 0x1771 = 6001, 0x16 = 22 (both tables; the IPv4 one is kept), 0x192B = 6443; established sockets ignored
    assert node_probe.listening_ports([TCP, TCP6]) == {6001: 4242, 22: 17, 6443: 555}


def test_a_real_listening_socket_is_found_with_its_program():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        listed = {entry["port"]: entry["name"] for entry in node_probe.tcp_listen()["ports"]}
    assert port in listed
    assert listed[port] == Path(f"/proc/{os.getpid()}/comm").read_text().strip()


def test_swap_areas_skip_the_header():
    text = (
        "Filename\tType\tSize\tUsed\tPriority\n/swapfile  file  1048572  0  -2\n/dev/sda2 partition 4 0 -3\n"
    )
    assert node_probe.swap_areas(text) == ["/swapfile", "/dev/sda2"]
    assert node_probe.swap_areas("Filename\tType\tSize\tUsed\tPriority\n") == []


def test_disk_measures_the_filesystem_and_names_its_mount(tmp_path):
    measured = node_probe.disk(str(tmp_path))
    stats = os.statvfs(tmp_path)
    assert measured["size"] == stats.f_blocks * stats.f_frsize
    assert 0 < measured["free"] <= measured["size"]
    assert os.path.ismount(measured["mount"]) and str(tmp_path).startswith(measured["mount"])
    missing = node_probe.disk(str(tmp_path / "absent"))
    assert missing["size"] is None and "No such file" in missing["error"]


def test_documentation_parses_and_names_every_option():
    documented = yaml.safe_load(node_probe.DOCUMENTATION)["options"]
    assert set(documented) == {"disk_path", "units", "listening", "gpus"}
    assert yaml.safe_load(node_probe.EXAMPLES)
    assert set(yaml.safe_load(node_probe.RETURN)) == {
        "disk",
        "swaps",
        "member",
        "tcp_listen",
        "units",
        "docker_cgroup_driver",
        "kubeadm_flags",
        "nvidia_smi",
    }
