"""`appliance lab`: bring the lab's nodes up, report on them, run commands in them, take them down."""

from __future__ import annotations

import os
import secrets
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from appliance import paths
from appliance.errors import ApplianceError, UsageError
from appliance.lab import docker, image, nodes

ANSIBLE_USER = "ansible"
ADMIN_CONF = "/etc/kubernetes/admin.conf"
LAB_RESOLV_CONF = "/etc/appliance-lab/resolv.conf"  # lab-vars.yml points kubelet at it


@dataclass(frozen=True)
class LabFiles:
    key: Path
    known_hosts: Path
    inventory: Path
    # The controller's copy of cp-1's admin kubeconfig: `lab kubeconfig` writes it, a renewal refreshes it.
    admin_conf: Path

    @classmethod
    def of(cls, lab: nodes.LabId) -> LabFiles:
        state = paths.state_dir() / lab.name
        return cls(
            key=state / "id_ed25519",
            known_hosts=state / "known_hosts",
            admin_conf=state / "admin.conf",
            inventory=paths.project_root() / "inventories" / lab.name / "hosts.yml",
        )


def up(
    workers: int = 2, log: Callable[[str], None] = print, runai_tarball: Path | None = None
) -> list[nodes.Node]:
    """Bring the lab to WORKERS workers plus cp-1, reachable over SSH; reuse what already runs. With
    RUNAI_TARBALL, the inventory also installs Run:ai from it (runai_variables)."""
    if runai_tarball is not None and not runai_tarball.is_file():
        raise UsageError(f"--runai-tarball {runai_tarball}: no such file")
    lab = nodes.LabId.from_environment()
    planned = nodes.plan(lab, workers)
    docker.require_engine()
    existing = nodes.existing_containers(lab)
    extra = sorted(set(existing) - {node.name for node in planned})
    if extra:
        raise UsageError(
            f"the lab already has {', '.join(extra)}, beyond --workers {workers}; `appliance lab down` first"
        )
    tag = image.ensure_image(log)
    files = LabFiles.of(lab)
    _ensure_key(files.key)
    nodes.start(lab, planned, tag, nodes.platform_settings(paths.project_root()), log)
    nodes.wait_booted(planned)
    public_key = files.key.with_suffix(".pub").read_text()
    resolv_conf = _upstream_resolv_conf()
    for node in planned:
        _authorize(node, public_key)
        _write_resolv_conf(node, resolv_conf)
    _write_known_hosts(planned, files.known_hosts)
    write_inventory(planned, files, runai_variables(planned, files, runai_tarball) if runai_tarball else {})
    return planned


def down(log: Callable[[str], None] = print) -> None:
    lab = nodes.LabId.from_environment()
    docker.require_engine()
    nodes.remove(lab, log)
    files = LabFiles.of(lab)
    for path in (files.known_hosts, files.inventory):
        path.unlink(missing_ok=True)


def status() -> list[dict[str, str]]:
    """One row per lab node: name, role, address, container state, systemd state, image."""
    lab = nodes.LabId.from_environment()
    docker.require_engine()
    current = image.image_tag()
    rows = []
    for name, container in sorted(
        nodes.existing_containers(lab).items(), key=lambda item: _node_order(item[0])
    ):
        running = container["State"]["Running"]
        networks = container["NetworkSettings"]["Networks"]
        node = nodes.Node(
            name,
            container["Config"]["Labels"].get(f"{nodes.LAB_LABEL}.role", "?"),
            networks.get(lab.network, {}).get("IPAddress", ""),
            lab.name,
        )
        rows.append(
            {
                "node": name,
                "role": node.role,
                "address": node.address,
                "container": container["State"]["Status"],
                "systemd": nodes.system_state(node) if running else "-",
                "image": "current"
                if container["Config"]["Image"] == current
                else container["Config"]["Image"],
            }
        )
    return rows


def exec_arguments(node_name: str, command: list[str], interactive: bool) -> list[str]:
    """The `docker exec` argument list that runs COMMAND on NODE_NAME, or a UsageError."""
    docker.require_engine()
    known = nodes.existing_containers(nodes.LabId.from_environment())
    if node_name not in known:
        names = ", ".join(sorted(known, key=_node_order)) or "none; run `appliance lab up`"
        raise UsageError(f"unknown lab node {node_name!r}; lab nodes: {names}")
    if not known[node_name]["State"]["Running"]:
        raise UsageError(f"lab node {node_name} is stopped; `appliance lab up` starts it")
    if command[:1] == ["--"]:
        command = command[1:]
    if not command:
        raise UsageError("no command given: appliance lab exec NODE -- COMMAND...")
    flags = ["--interactive", "--tty"] if interactive else ["--interactive"]
    return ["exec", *flags, known[node_name]["Name"].lstrip("/"), *command]


def kubeconfig() -> Path:
    """Copy cp-1's admin kubeconfig (mode 0600) beside the lab's key; its server is cp-1's lab address,
    which this machine reaches. Copied again on each call: a re-initialised cluster has new credentials."""
    lab = nodes.LabId.from_environment()
    docker.require_engine()
    known = nodes.existing_containers(lab)
    control_plane = known.get("cp-1")
    if control_plane is None or not control_plane["State"]["Running"]:
        raise UsageError("the lab's cp-1 is not running; `appliance lab up` and `appliance bootstrap` first")
    result = docker.docker("exec", control_plane["Name"].lstrip("/"), "cat", ADMIN_CONF, check=False)
    if result.returncode != 0:
        raise UsageError(f"cp-1 has no {ADMIN_CONF}: its cluster is not set up; run `appliance bootstrap`")
    path = LabFiles.of(lab).admin_conf
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(result.stdout)
    path.chmod(0o600)
    return path


def groups_for(planned: list[nodes.Node]) -> dict[str, list[str]]:
    """Inventory groups as in inventories/sample: odd workers stand in for GPU workers, even ones for
    CPU workers, and the last CPU worker (cp-1 when there is none) hosts the Run:ai system services."""
    workers = [n.name for n in planned if n.role == "worker"]
    gpu = workers[0::2]
    cpu = workers[1::2]
    return {
        "control_plane": [n.name for n in planned if n.role == "control_plane"],
        "gpu_workers": gpu,
        "cpu_workers": cpu,
        "runai_system": [cpu[-1]] if cpu else [planned[0].name],
        # Where researchers work with the Run:ai CLI (playbooks/researchers.yml); in the lab, cp-1.
        "jumpbox": [planned[0].name],
    }


def _secret_lookup(files: LabFiles, name: str) -> str:
    """A lookup of a random secret made once for this lab, kept in its state directory (mode 0600)."""
    path = files.key.parent / name
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        path.touch(mode=0o600)
        path.write_text(secrets.token_urlsafe(24) + "\n")
    return f"{{{{ lookup('ansible.builtin.file', '{path}') }}}}"


def runai_variables(planned: list[nodes.Node], files: LabFiles, tarball: Path) -> dict[str, Any]:
    """The Run:ai inputs of a lab appliance: the tarball, a domain of the reserved .test name space on
    cp-1's address, a CA and certificate made by role runai_backend, and an admin password generated once
    per lab, kept in the lab's state directory (0600) and read from there by the inventory."""
    control_plane = planned[0]
    return {
        "runai_airgapped_tar": str(tarball.resolve()),
        "runai_domain": f"runai.{control_plane.lab}.test",
        "runai_external_ip": control_plane.address,
        "runai_tls_generate": True,
        # The lab has neither an NFS server nor a storage class: the database lives on the runai_system node.
        "runai_local_storage_path": "/var/lib/runai-local",
        "runai_admin_password": _secret_lookup(files, "runai-admin-password"),
        # No DNS server of the lab knows the domain; the roles connect to the IP with the domain's name.
        "preflight_runai_domain": "",
    }


def write_inventory(
    planned: list[nodes.Node], files: LabFiles, extra_vars: dict[str, Any] | None = None
) -> None:
    groups = groups_for(planned)
    addresses = {n.name: n.address for n in planned}

    def hosts(names: list[str]) -> dict[str, dict[str, str] | None]:
        return {name: None for name in names}

    inventory = {
        "all": {
            "vars": {
                "ansible_user": ANSIBLE_USER,
                "ansible_ssh_private_key_file": str(files.key),
                "ansible_ssh_common_args": f"-o UserKnownHostsFile={files.known_hosts}",
                "appliance_bundle_dir": str(paths.lab_bundle_dir()),
                "certs_admin_kubeconfig_fetch": str(files.admin_conf),
                # Archives are named after the lab; their passphrase is made once per lab (0600), as a site
                # keeps it in Ansible Vault.
                "appliance_cluster_name": planned[0].lab,
                "backup_passphrase": _secret_lookup(files, "backup-passphrase"),
                # The registry's pusher (appliance_registry_tls), made once per lab as well.
                "appliance_registry_password": _secret_lookup(files, "registry-password"),
                **lab_variables(),
                **(extra_vars or {}),
            },
            "hosts": {name: {"ansible_host": address} for name, address in addresses.items()},
            "children": {
                "k8s_cluster": {"children": {"control_plane": None, "workers": None}},
                "control_plane": {"hosts": hosts(groups["control_plane"])},
                "workers": {"children": {"gpu_workers": None, "cpu_workers": None}},
                "gpu_workers": {"hosts": hosts(groups["gpu_workers"])},
                "cpu_workers": {"hosts": hosts(groups["cpu_workers"])},
                "runai_system": {"hosts": hosts(groups["runai_system"])},
                "jumpbox": {"hosts": hosts(groups["jumpbox"])},
            },
        }
    }
    files.inventory.parent.mkdir(parents=True, exist_ok=True)
    header = "# Written by `appliance lab up` for this machine's lab; rewritten on every `lab up`.\n"
    text = yaml.safe_dump(inventory, sort_keys=False, default_flow_style=False).replace(": null\n", ":\n")
    files.inventory.write_text(header + text)


def lab_variables() -> dict[str, Any]:
    """What sets a lab node apart from an appliance's machine (lab-vars.yml, which says why)."""
    text = resources.files("appliance.lab").joinpath("lab-vars.yml").read_text()
    return yaml.safe_load(text) or {}


def _node_order(name: str) -> tuple[int, int]:
    kind, _, number = name.partition("-")
    return (0 if kind == "cp" else 1, int(number) if number.isdigit() else 0)


def _ensure_key(key: Path) -> None:
    if key.exists():
        return
    key.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    result = subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "appliance-lab", "-f", str(key)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise ApplianceError(f"ssh-keygen failed: {result.stderr.strip()}")


def _authorize(node: nodes.Node, public_key: str) -> None:
    user = ANSIBLE_USER
    script = (
        f"install -d -m 0700 -o {user} -g {user} ~{user}/.ssh && cat > ~{user}/.ssh/authorized_keys && "
        f"chown {user}: ~{user}/.ssh/authorized_keys && chmod 0600 ~{user}/.ssh/authorized_keys"
    )
    docker.docker("exec", "--interactive", node.container, "sh", "-c", script, input_text=public_key)


def _upstream_resolv_conf(host_file: Path = Path("/etc/resolv.conf")) -> str:
    """This machine's own name servers, for pods: a lab node's resolv.conf names docker's embedded DNS
    (127.0.0.11), which a pod's network namespace cannot reach (CoreDNS would forward to itself)."""
    servers = []
    for line in host_file.read_text().splitlines():
        words = line.split()
        if len(words) >= 2 and words[0] == "nameserver" and not words[1].startswith("127."):
            servers.append(words[1])
    lines = ["# Written by `appliance lab up`: this machine's name servers, for kubelet's resolvConf."]
    return "\n".join(lines + [f"nameserver {server}" for server in servers]) + "\n"


def _write_resolv_conf(node: nodes.Node, text: str) -> None:
    script = f"install -d -m 0755 {LAB_RESOLV_CONF.rsplit('/', 1)[0]} && cat > {LAB_RESOLV_CONF}"
    docker.docker("exec", "--interactive", node.container, "sh", "-c", script, input_text=text)


def _write_known_hosts(planned: list[nodes.Node], known_hosts: Path, timeout: float = 60) -> None:
    """Record each node's own host key (generated at its first boot), so SSH verifies hosts as usual."""
    lines = []
    for node in planned:
        deadline = time.monotonic() + timeout
        while True:
            scan = subprocess.run(
                ["ssh-keyscan", "-T", "2", "-t", "ed25519", node.address],
                capture_output=True,
                text=True,
                check=False,
            )
            if scan.stdout.strip():
                lines.append(scan.stdout.strip())
                break
            if time.monotonic() > deadline:
                raise ApplianceError(
                    f"sshd on {node.name} ({node.address}) did not answer within {timeout:.0f}s"
                )
            time.sleep(0.5)
    known_hosts.write_text("\n".join(lines) + "\n")
