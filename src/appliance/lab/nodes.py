"""Lab nodes: systemd containers on a dedicated docker network, reached by Ansible over SSH.

A node's container settings come from the first platform of the Molecule base config
(.config/molecule/config.yml), so Molecule instances and lab nodes are the same kind of machine.
"""

from __future__ import annotations

import ipaddress
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from appliance.errors import ApplianceError, UsageError
from appliance.lab import docker

LAB_LABEL = "appliance.lab"
# Per-node volumes: docker, containerd and kubelet need a real filesystem (not the overlay root).
NODE_VOLUMES = {
    "docker": "/var/lib/docker",
    "containerd": "/var/lib/containerd",
    "kubelet": "/var/lib/kubelet",
}


@dataclass(frozen=True)
class LabId:
    """Which lab: the default one, or another beside it (the test suite's), on its own subnet."""

    name: str
    subnet: ipaddress.IPv4Network

    @classmethod
    def from_environment(cls) -> LabId:
        name = os.environ.get("APPLIANCE_LAB_NAME", "lab")
        subnet = os.environ.get("APPLIANCE_LAB_SUBNET", "172.28.0.0/24")
        if not name.replace("-", "").isalnum():
            raise UsageError(f"APPLIANCE_LAB_NAME={name!r}: letters, digits and dashes only")
        try:
            network = ipaddress.IPv4Network(subnet)
        except ValueError as error:
            raise UsageError(f"APPLIANCE_LAB_SUBNET={subnet!r}: {error}") from error
        if network.num_addresses < 64:
            raise UsageError(f"APPLIANCE_LAB_SUBNET={subnet!r}: needs at least a /26")
        return cls(name, network)

    @property
    def network(self) -> str:
        return f"appliance-{self.name}"


@dataclass(frozen=True)
class Node:
    name: str
    role: str  # "control_plane" or "worker"
    address: str
    lab: str = "lab"

    @property
    def container(self) -> str:
        return f"appliance-{self.lab}-{self.name}"

    def volume(self, purpose: str) -> str:
        return f"{self.container}-{purpose}"


def plan(lab: LabId, workers: int) -> list[Node]:
    """The lab's machines: cp-1 at .10 and worker-N at .10+N, fixed so inventories stay valid."""
    if not 0 <= workers <= 20:
        raise UsageError(f"--workers {workers}: the lab holds 0 to 20 workers")
    hosts = list(lab.subnet.hosts())
    nodes = [Node("cp-1", "control_plane", str(hosts[9]), lab.name)]
    nodes += [Node(f"worker-{i}", "worker", str(hosts[9 + i]), lab.name) for i in range(1, workers + 1)]
    return nodes


def platform_settings(project: Path) -> dict[str, Any]:
    config = yaml.safe_load((project / ".config" / "molecule" / "config.yml").read_text())
    return config["platforms"][0]


def run_arguments(node: Node, image: str, platform: dict[str, Any]) -> list[str]:
    """`docker run` arguments for NODE, from the shared platform definition."""
    args = ["run", "--detach", "--name", node.container, "--hostname", node.name]
    # A reboot inside a node (`systemctl reboot`, as GPU remediation does) ends its systemd with a non-zero
    # status (133, as systemd-nspawn expects), which this policy turns into a restart of the container: the
    # node boots again, with the same volumes. `docker stop` (a node taken down) is not restarted. The
    # nodes share this machine's kernel, so /proc/sys/kernel/random/boot_id stays; PID 1's start time changes.
    args += ["--restart", "on-failure"]
    args += ["--label", f"{LAB_LABEL}={node.lab}", "--label", f"{LAB_LABEL}.role={node.role}"]
    args += ["--network", f"appliance-{node.lab}", "--ip", node.address]
    args += ["--cgroupns", platform["cgroupns_mode"], "--stop-signal", platform["stop_signal"]]
    args += [f"--cap-add={cap}" for cap in platform["capabilities"]]
    args += [f"--security-opt={opt}" for opt in platform["security_opts"]]
    args += [f"--tmpfs={path}" for path in platform["tmpfs"]]
    args += [f"--volume={volume}" for volume in platform["volumes"]]
    args += [f"--env={key}={value}" for key, value in platform["env"].items()]
    # Nested runtimes create device nodes for their containers; kubelet reads /dev/kmsg.
    args += ["--device-cgroup-rule=a *:* rwm", "--device=/dev/kmsg"]
    args += [f"--volume={node.volume(purpose)}:{path}" for purpose, path in NODE_VOLUMES.items()]
    args += [image, platform["command"]]
    return args


def ensure_network(lab: LabId) -> None:
    found = docker.inspect("network", [lab.network])
    if found:
        subnets = [c.get("Subnet") for c in (found[0].get("IPAM", {}).get("Config") or [])]
        if str(lab.subnet) not in subnets:
            raise ApplianceError(
                f"docker network {lab.network} has subnet {subnets}, not {lab.subnet}; lab down first"
            )
        return
    docker.docker(
        "network",
        "create",
        "--driver",
        "bridge",
        "--subnet",
        str(lab.subnet),
        "--label",
        f"{LAB_LABEL}={lab.name}",
        lab.network,
    )


def existing_containers(lab: LabId) -> dict[str, dict[str, Any]]:
    """The lab's containers by node name, running or not."""
    listed = docker.docker(
        "ps", "--all", "--filter", f"label={LAB_LABEL}={lab.name}", "--format", "{{.Names}}"
    ).stdout.split()
    return {c["Config"]["Hostname"]: c for c in docker.inspect("container", listed)}


def start(
    lab: LabId, nodes: list[Node], image: str, platform: dict[str, Any], log: Callable[[str], None]
) -> None:
    """Create missing nodes, start stopped ones (a reboot), leave running ones alone."""
    ensure_network(lab)
    existing = existing_containers(lab)
    for node in nodes:
        container = existing.get(node.name)
        if container is None:
            log(f"creating {node.name} ({node.address})")
            for purpose in NODE_VOLUMES:
                docker.docker("volume", "create", "--label", f"{LAB_LABEL}={lab.name}", node.volume(purpose))
            docker.docker(*run_arguments(node, image, platform))
        elif not container["State"]["Running"]:
            log(f"starting stopped {node.name}")
            docker.docker("start", node.container)
        else:
            if container["Config"]["Image"] != image:
                old = container["Config"]["Image"]
                log(f"{node.name} runs image {old}, not {image}; `lab down` to rebuild it")


def wait_booted(nodes: list[Node], timeout: float = 120) -> dict[str, str]:
    """Wait until systemd on every node has finished booting; return each node's final state."""
    deadline = time.monotonic() + timeout
    states: dict[str, str] = {}
    pending = list(nodes)
    while pending:
        for node in list(pending):
            state = system_state(node)
            states[node.name] = state
            if state in ("running", "degraded"):
                pending.remove(node)
        if not pending:
            break
        if time.monotonic() > deadline:
            summary = ", ".join(f"{n.name}: {states.get(n.name)}" for n in pending)
            raise ApplianceError(f"nodes did not finish booting within {timeout:.0f}s ({summary})")
        time.sleep(0.5)
    return states


def system_state(node: Node) -> str:
    result = docker.docker("exec", node.container, "systemctl", "is-system-running", check=False)
    return result.stdout.strip() or "unreachable"


def remove(lab: LabId, log: Callable[[str], None]) -> None:
    """Remove the lab's containers, their volumes and the lab's network, and nothing else."""
    containers = existing_containers(lab)
    for name, container in sorted(containers.items()):
        log(f"removing {name}")
        docker.docker("rm", "--force", "--volumes", container["Name"].lstrip("/"))
    volumes = docker.docker(
        "volume", "ls", "--quiet", "--filter", f"label={LAB_LABEL}={lab.name}"
    ).stdout.split()
    if volumes:
        docker.docker("volume", "rm", *volumes)
    if docker.inspect("network", [lab.network]):
        docker.docker("network", "rm", lab.network)
