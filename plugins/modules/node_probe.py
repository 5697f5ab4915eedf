#!/usr/bin/python
"""Ansible module node_probe: everything role preflight reads on a node, in one module execution."""

from __future__ import annotations

DOCUMENTATION = r"""
module: node_probe
short_description: Read what the preflight checks judge on a node, changing nothing
description:
  - One call reads the filesystem size, active swap areas, cluster membership, listening TCP ports,
    the state of container runtime units, docker's cgroup driver, kubelet's runtime flags and the GPUs,
    so that role preflight costs one module execution per node instead of one per probe.
  - A probe that fails reports its error in the result instead of failing the module, so that every
    problem becomes a finding of the preflight report.
options:
  disk_path:
    description: Path whose filesystem is measured.
    type: path
    default: /var
  units:
    description: systemd units whose state is asked (C(systemctl is-active)).
    type: list
    elements: str
    default: []
  listening:
    description: Whether to list the TCP ports the node listens on, with the program of each.
    type: bool
    default: false
  gpus:
    description: Whether to list the GPUs with C(nvidia-smi -L), where it exists.
    type: bool
    default: false
attributes:
  check_mode:
    support: full
    description: It only reads, so it runs in check mode as in any other run.
  diff_mode:
    support: none
    description: Returns no diff.
author:
  - Appliance toolkit maintainers (@appliance-maintainers)
"""

EXAMPLES = r"""
- name: Read the node
  appliance.runai.node_probe:
    disk_path: /var
    units: [docker.service, crio.service]
    listening: true
    gpus: "{{ 'gpu_workers' in group_names }}"
  register: preflight_probe
"""

RETURN = r"""
disk:
  description: Size and free space (for unprivileged users, as df's Available) in bytes, and the mount point.
  returned: always
  type: dict
  sample: {size: 105089261568, free: 52544630784, mount: /, error: ""}
swaps:
  description: The active swap areas of /proc/swaps, and the error when it cannot be read.
  returned: always
  type: dict
  sample: {areas: [/swapfile], error: ""}
member:
  description: Whether /etc/kubernetes/kubelet.conf exists (the node is or was a cluster member).
  returned: always
  type: bool
tcp_listen:
  description: Listening TCP ports (IPv4 and IPv6) and the program of each, when O(listening).
  returned: always
  type: dict
  sample: {ports: [{port: 22, name: sshd}], error: ""}
units:
  description: The state systemd gives each of O(units) (active, inactive, failed, ...).
  returned: always
  type: dict
  sample: {docker.service: active, crio.service: inactive}
docker_cgroup_driver:
  description: docker's cgroup driver when docker.service is active, and the error of docker info.
  returned: always
  type: dict
  sample: {driver: systemd, error: ""}
kubeadm_flags:
  description: The contents of /var/lib/kubelet/kubeadm-flags.env on a member, and the read error.
  returned: always
  type: dict
  sample: {content: KUBELET_KUBEADM_ARGS="--network-plugin=cni", error: ""}
nvidia_smi:
  description: rc (127 without nvidia-smi), stdout_lines and stderr of C(nvidia-smi -L), when O(gpus).
  returned: always
  type: dict
"""

import os

from ansible.module_utils.basic import AnsibleModule

KUBELET_CONF = "/etc/kubernetes/kubelet.conf"
KUBEADM_FLAGS = "/var/lib/kubelet/kubeadm-flags.env"
TCP_LISTEN = "0A"


def disk(path: str) -> dict:
    try:
        stats = os.statvfs(path)
    except OSError as error:
        return {"size": None, "free": None, "mount": "", "error": str(error)}
    mount = os.path.realpath(path)
    while not os.path.ismount(mount):
        mount = os.path.dirname(mount)
    return {
        "size": stats.f_blocks * stats.f_frsize,
        "free": stats.f_bavail * stats.f_frsize,
        "mount": mount,
        "error": "",
    }


def swap_areas(text: str) -> list[str]:
    """The areas of /proc/swaps (a header line, then one area per line)."""
    return [line.split()[0] for line in text.splitlines()[1:] if line.strip()]


def listening_ports(tables: list[str]) -> dict[int, int]:
    """Port -> socket inode of every listening socket in the text of /proc/net/tcp and tcp6."""
    ports: dict[int, int] = {}
    for table in tables:
        for line in table.splitlines()[1:]:
            fields = line.split()
            if len(fields) > 9 and fields[3] == TCP_LISTEN:
                ports.setdefault(int(fields[1].rsplit(":", 1)[1], 16), int(fields[9]))
    return ports


def socket_owners(proc: str = "/proc") -> dict[int, str]:
    """Socket inode -> name of a program that holds it."""
    owners: dict[int, str] = {}
    for pid in filter(str.isdigit, os.listdir(proc)):
        try:
            with open(os.path.join(proc, pid, "comm"), encoding="utf-8") as handle:
                name = handle.read().strip()
            fds = os.path.join(proc, pid, "fd")
            for fd in os.listdir(fds):
                target = os.readlink(os.path.join(fds, fd))
                if target.startswith("socket:["):
                    owners.setdefault(int(target[8:-1]), name)
        except OSError:
            continue  # the process ended, or hides its descriptors
    return owners


def tcp_listen() -> dict:
    tables = []
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(path, encoding="ascii") as handle:
                tables.append(handle.read())
        except OSError as error:
            if path.endswith("tcp"):
                return {"ports": [], "error": f"cannot read {path}: {error}"}
    owners = socket_owners()
    ports = listening_ports(tables)
    return {
        "ports": [{"port": port, "name": owners.get(inode, "?")} for port, inode in sorted(ports.items())],
        "error": "",
    }


def read(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as handle:
            return {"content": handle.read(), "error": ""}
    except OSError as error:
        return {"content": None, "error": str(error)}


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "disk_path": {"type": "path", "default": "/var"},
            "units": {"type": "list", "elements": "str", "default": []},
            "listening": {"type": "bool", "default": False},
            "gpus": {"type": "bool", "default": False},
        },
        supports_check_mode=True,
    )
    params = module.params
    result: dict = {
        "changed": False,
        "disk": disk(params["disk_path"]),
        "member": os.path.exists(KUBELET_CONF),
    }

    swaps = read("/proc/swaps")
    result["swaps"] = {"areas": swap_areas(swaps["content"] or ""), "error": swaps["error"]}
    result["tcp_listen"] = tcp_listen() if params["listening"] else {"ports": [], "error": ""}

    units: dict[str, str] = {}
    if params["units"]:
        _rc, out, _err = module.run_command(["systemctl", "is-active", *params["units"]])
        states = out.splitlines()
        units = {
            unit: states[index] if index < len(states) else "" for index, unit in enumerate(params["units"])
        }
    result["units"] = units

    driver = {"driver": "", "error": ""}
    if units.get("docker.service") == "active":
        rc, out, err = module.run_command(["docker", "info", "--format", "{{.CgroupDriver}}"])
        driver = {"driver": out.strip() if rc == 0 else "", "error": err.strip() if rc != 0 else ""}
    result["docker_cgroup_driver"] = driver

    result["kubeadm_flags"] = read(KUBEADM_FLAGS) if result["member"] else {"content": None, "error": ""}

    smi = {"rc": None, "stdout_lines": [], "stderr": ""}
    if params["gpus"]:
        nvidia_smi = module.get_bin_path("nvidia-smi")
        if nvidia_smi is None:
            smi["rc"] = 127
        else:
            rc, out, err = module.run_command([nvidia_smi, "-L"])
            smi = {"rc": rc, "stdout_lines": out.splitlines(), "stderr": err.strip()}
    result["nvidia_smi"] = smi
    module.exit_json(**result)


if __name__ == "__main__":
    main()
