"""`appliance top`: GPU utilisation and memory per node and per GPU across the cluster, like Run:ai's rntop.

The hosts come from the Ansible inventory through the real `ansible-inventory`, so the connection
variables Ansible uses (ansible_host, ansible_user, ansible_port, ansible_ssh_private_key_file,
ansible_ssh_common_args) apply here too. nvidia-smi runs on every host at once over SSH; a host that
cannot be read (unreachable, no nvidia-smi, driver not loaded, too slow) gets its own row and never stops
the others. Parsing, aggregation and rendering are pure functions; the transport is a parameter, so tests
feed them recorded nvidia-smi output. Standard library only, like the rest of appliance.health.
"""

from __future__ import annotations

import csv
import json
import math
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from appliance.errors import ApplianceError, UsageError

QUERY_FIELDS = ("index", "uuid", "name", "driver_version", "utilization.gpu", "memory.used", "memory.total")
NVIDIA_SMI = f"nvidia-smi --query-gpu={','.join(QUERY_FIELDS)} --format=csv,noheader,nounits"
DEFAULT_GROUP = "gpu_workers"
DEFAULT_TIMEOUT = 15.0
# ssh processes are cheap and mostly wait on the network: read a whole rack in one round.
MAX_PARALLEL = 64

# Why a node could not be read: the status in --json, and its wording on the node's row.
STATUS_WORDS = {
    "unreachable": "unreachable",
    "no_nvidia_smi": "no nvidia-smi",
    "nvidia_smi_failed": "nvidia-smi failed",
    "timeout": "timed out",
    "bad_output": "unreadable nvidia-smi output",
    "unsupported": "unsupported connection",
}
CLEAR_SCREEN = "\033[H\033[2J"
GAP = "   "


@dataclass(frozen=True)
class Host:
    """One inventory host and how Ansible would connect to it."""

    name: str
    address: str
    user: str | None = None
    port: int | None = None
    private_key: str | None = None
    ssh_args: tuple[str, ...] = ()
    connection: str = "ssh"

    def command(self, remote: str, timeout: float) -> list[str]:
        """The argv running REMOTE on this host: ssh, or the local shell for ansible_connection=local.
        BatchMode: a host that wants a password or an unknown host key fails at once instead of asking."""
        if self.connection == "local":
            return ["/bin/sh", "-c", remote]
        argv = ["ssh", "-o", "BatchMode=yes", "-o", f"ConnectTimeout={max(1, math.ceil(timeout))}"]
        if self.port is not None:
            argv += ["-p", str(self.port)]
        if self.private_key:
            argv += ["-i", self.private_key]
        if self.user:
            argv += ["-l", self.user]
        return [*argv, *self.ssh_args, "--", self.address, remote]


@dataclass(frozen=True)
class CommandResult:
    returncode: int | None  # None: killed after the timeout
    stdout: str
    stderr: str


# How a command reaches a host: run_on_host for real, a recording in tests.
Transport = Callable[[Host, str, float], CommandResult]


@dataclass(frozen=True)
class Gpu:
    index: int
    uuid: str
    name: str
    driver_version: str
    utilization: int | None  # percent; None where nvidia-smi says [N/A] (MIG mode) or [Not Supported]
    memory_used: int | None  # MiB
    memory_total: int | None  # MiB


@dataclass(frozen=True)
class NodeReading:
    """What one node answered: its GPUs, or why it could not be read (status and error)."""

    node: str
    address: str
    gpus: tuple[Gpu, ...] = ()
    status: str = "ok"
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "ok"


@dataclass(frozen=True)
class Usage:
    """Utilisation and memory of a set of GPUs; a figure a GPU does not report is left out of the sums."""

    gpus: int
    utilization: float | None  # average over the GPUs reporting it, percent
    memory_used: int | None  # MiB, over the GPUs reporting both used and total
    memory_total: int | None

    @property
    def memory_percent(self) -> float | None:
        if not self.memory_total or self.memory_used is None:
            return None
        return 100 * self.memory_used / self.memory_total


class NvidiaSmiOutputError(ValueError):
    """nvidia-smi printed something other than the CSV asked for."""


# --- Parsing and aggregation (pure) ---


def parse_nvidia_smi(text: str) -> list[Gpu]:
    """The GPUs in the output of NVIDIA_SMI: one CSV line per GPU, "[N/A]"-like values as None."""
    gpus = []
    for line in (line for line in text.splitlines() if line.strip()):
        row = [value.strip() for value in next(csv.reader([line], skipinitialspace=True))]
        if len(row) != len(QUERY_FIELDS):
            raise NvidiaSmiOutputError(
                f"expected {len(QUERY_FIELDS)} fields, got {len(row)}: {line.strip()!r}"
            )
        index, uuid, name, driver_version, utilization, used, total = row
        gpu_index = _number(index, "index", line)
        if gpu_index is None:
            raise NvidiaSmiOutputError(f"no GPU index in {line.strip()!r}")
        gpus.append(
            Gpu(
                index=gpu_index,
                uuid=uuid,
                name=name,
                driver_version=driver_version,
                utilization=_number(utilization, "utilization.gpu", line),
                memory_used=_number(used, "memory.used", line),
                memory_total=_number(total, "memory.total", line),
            )
        )
    if not gpus:
        raise NvidiaSmiOutputError("nvidia-smi listed no GPU")
    return gpus


def _number(value: str, name: str, line: str) -> int | None:
    """nvidia-smi's integer, or None for its bracketed non-values: [N/A], [Not Supported], [Unknown Error]."""
    if value.startswith("[") and value.endswith("]"):
        return None
    try:
        return int(value)
    except ValueError:
        try:
            return round(float(value))
        except ValueError:
            raise NvidiaSmiOutputError(f"{name} is {value!r} in {line.strip()!r}") from None


def reading_of(host: Host, result: CommandResult, timeout: float) -> NodeReading:
    """What RESULT of NVIDIA_SMI on HOST says: its GPUs, or why the node could not be read."""

    def failed(status: str, error: str) -> NodeReading:
        return NodeReading(host.name, host.address, status=status, error=error)

    if result.returncode is None:
        return failed("timeout", f"no answer within {timeout:g} s")
    if result.returncode == 255 and host.connection != "local":
        return failed("unreachable", _last_line(result.stderr) or "ssh exited 255")
    if result.returncode == 127:
        return failed("no_nvidia_smi", _last_line(result.stderr) or "nvidia-smi: command not found")
    if result.returncode != 0:
        # nvidia-smi explains itself on stdout ("NVIDIA-SMI has failed because ..."), a shell on stderr.
        message = _first_line(result.stdout) or _last_line(result.stderr) or "no message"
        return failed("nvidia_smi_failed", f"exit {result.returncode}: {message}")
    try:
        return NodeReading(host.name, host.address, tuple(parse_nvidia_smi(result.stdout)))
    except NvidiaSmiOutputError as error:
        return failed("bad_output", str(error))


def usage_of(gpus: Iterable[Gpu]) -> Usage:
    gpus = list(gpus)
    utilizations = [gpu.utilization for gpu in gpus if gpu.utilization is not None]
    memories = [
        (gpu.memory_used, gpu.memory_total)
        for gpu in gpus
        if gpu.memory_used is not None and gpu.memory_total is not None
    ]
    return Usage(
        gpus=len(gpus),
        utilization=sum(utilizations) / len(utilizations) if utilizations else None,
        memory_used=sum(used for used, _total in memories) if memories else None,
        memory_total=sum(total for _used, total in memories) if memories else None,
    )


def cluster_usage(readings: Iterable[NodeReading]) -> Usage:
    """Over every GPU of the nodes read: a node of 8 GPUs weighs 8 times a node of one."""
    return usage_of(gpu for reading in readings for gpu in reading.gpus)


def driver_version(reading: NodeReading) -> str:
    versions = dict.fromkeys(gpu.driver_version for gpu in reading.gpus)
    return "/".join(versions)


def document(readings: Sequence[NodeReading]) -> dict[str, Any]:
    """The --json document: cluster, nodes (every node, with its status), gpus, errors."""
    cluster = cluster_usage(readings)
    nodes = []
    for reading in readings:
        usage = usage_of(reading.gpus) if reading.ok else None
        nodes.append(
            {
                "node": reading.node,
                "address": reading.address,
                "status": reading.status,
                "error": reading.error or None,
                "driver_version": driver_version(reading) or None,
                "gpus": usage.gpus if usage else None,
                **_usage_fields(usage),
            }
        )
    gpus = [
        {
            "node": reading.node,
            "index": gpu.index,
            "uuid": gpu.uuid,
            "name": gpu.name,
            "driver_version": gpu.driver_version,
            **_usage_fields(usage_of([gpu])),
        }
        for reading in readings
        for gpu in reading.gpus
    ]
    errors = [
        {"node": r.node, "address": r.address, "status": r.status, "error": r.error}
        for r in readings
        if not r.ok
    ]
    return {
        "cluster": {
            "nodes": len(readings),
            "nodes_read": sum(r.ok for r in readings),
            "gpus": cluster.gpus,
            **_usage_fields(cluster),
        },
        "nodes": nodes,
        "gpus": gpus,
        "errors": errors,
    }


def _usage_fields(usage: Usage | None) -> dict[str, Any]:
    def rounded(value: float | None) -> float | None:
        return None if value is None else round(value, 1)

    return {
        "utilization_percent": rounded(usage.utilization) if usage else None,
        "memory_used_mib": usage.memory_used if usage else None,
        "memory_total_mib": usage.memory_total if usage else None,
        "memory_used_percent": rounded(usage.memory_percent) if usage else None,
    }


def render(readings: Sequence[NodeReading]) -> str:
    """rntop's three sections, Cluster, Nodes and GPUs, with aligned columns."""
    cluster = cluster_usage(readings)
    node_rows: list[list[str]] = []
    for reading in readings:
        if reading.ok:
            usage = usage_of(reading.gpus)
            node_rows.append(
                [reading.node, driver_version(reading), _utilization_text(usage), _memory_text(usage)]
            )
        else:
            node_rows.append(
                [reading.node, f"{STATUS_WORDS.get(reading.status, reading.status)}: {reading.error}"]
            )
    gpu_rows = [
        [reading.node, str(gpu.index), _utilization_text(usage), _memory_text(usage)]
        for reading in readings
        for gpu in reading.gpus
        for usage in [usage_of([gpu])]
    ]
    # One set of widths for both sections, so a GPU's figures stand under its node's.
    widths = _widths(node_rows + gpu_rows)
    lines = ["Cluster", f"{_utilization_text(cluster)}{GAP}{_memory_text(cluster)}"]
    unread = sum(not reading.ok for reading in readings)
    if unread:
        lines.append(f"{unread} of {len(readings)} nodes could not be read; the figures leave them out")
    lines += ["", "Nodes", *(_row(cells, widths) for cells in node_rows)]
    lines += ["", "GPUs", *(_row(cells, widths) for cells in gpu_rows)]
    return "\n".join(lines) + "\n"


def _utilization_text(usage: Usage) -> str:
    return f"GPU utilization: {_percent(usage.utilization)}"


def _memory_text(usage: Usage) -> str:
    if usage.memory_used is None or usage.memory_total is None:
        return "Used GPU memory: n/a"
    used, total, percent = usage.memory_used, usage.memory_total, _percent(usage.memory_percent)
    return f"Used GPU memory: {used} MiB / {total} MiB ({percent})"


def _percent(value: float | None) -> str:
    # Half up, as a reader rounds: 2.5 % shows as 3 %, where round() gives 2.
    return "n/a" if value is None else f"{math.floor(value + 0.5)}%"


def _widths(rows: list[list[str]]) -> list[int]:
    """Each column's width over the rows where it is not the last cell (a last cell is not padded)."""
    widths: list[int] = []
    for cells in rows:
        for column, cell in enumerate(cells[:-1]):
            if column == len(widths):
                widths.append(0)
            widths[column] = max(widths[column], len(cell))
    return widths


def _row(cells: list[str], widths: list[int]) -> str:
    padded = [cell.ljust(widths[column]) for column, cell in enumerate(cells[:-1])]
    return GAP.join([*padded, cells[-1]])


def _first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


def _last_line(text: str) -> str:
    return next((line.strip() for line in reversed(text.splitlines()) if line.strip()), "")


# --- The inventory ---


def ansible_inventory_executable() -> str:
    """ansible-inventory beside this interpreter (the venv's, even when not activated), else on PATH."""
    beside = Path(sys.executable).parent / "ansible-inventory"
    if beside.is_file():
        return str(beside)
    found = shutil.which("ansible-inventory")
    if found:
        return found
    raise ApplianceError(
        f"ansible-inventory is neither beside {sys.executable} nor on PATH; install ansible-core"
    )


def list_inventory(
    inventory: Path, *, limit: str | None = None, ansible_config: Path | None = None, timeout: float = 120
) -> dict[str, Any]:
    """`ansible-inventory -i INVENTORY --list [--limit LIMIT]`: groups, and every host's variables merged
    as Ansible merges them (group_vars and host_vars beside the inventory included)."""
    argv = [ansible_inventory_executable(), "-i", str(inventory), "--list"]
    argv += ["--limit", limit] if limit else []
    env = {**os.environ, "ANSIBLE_NOCOLOR": "1"}
    if ansible_config is not None:
        env.setdefault("ANSIBLE_CONFIG", str(ansible_config))
    try:
        done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise ApplianceError(f"ansible-inventory -i {inventory} took more than {timeout:g} s") from None
    if done.returncode != 0:
        reason = _last_line(done.stderr) or f"exit {done.returncode}"
        raise ApplianceError(f"ansible-inventory -i {inventory} failed: {reason}")
    try:
        return json.loads(done.stdout)
    except json.JSONDecodeError as error:
        raise ApplianceError(f"ansible-inventory -i {inventory} printed no JSON: {error}") from None


def group_hosts(listing: dict[str, Any], group: str) -> list[str]:
    """GROUP's hosts, its child groups' included, in the listing's order, each once."""
    hosts: dict[str, None] = {}
    visited: set[str] = set()

    def visit(name: str) -> None:
        if name in visited or name == "_meta":
            return
        visited.add(name)
        entry = listing.get(name) or {}
        hosts.update(dict.fromkeys(entry.get("hosts", [])))
        for child in entry.get("children", []):
            visit(child)

    visit(group)
    return list(hosts)


def host_from_vars(name: str, variables: dict[str, Any]) -> Host:
    """How Ansible connects to host NAME, from its merged inventory variables."""

    def value(*keys: str) -> str | None:
        for key in keys:
            found = _unwrap(variables.get(key))
            if found is None:
                continue
            if isinstance(found, dict | list):
                raise UsageError(f"host {name}: {key} is {found!r}; expected a string")
            return str(found)
        return None

    port = value("ansible_port", "ansible_ssh_port")
    if port is not None and not port.isdigit():
        raise UsageError(f"host {name}: ansible_port is {port!r}; expected a port number")
    key = value("ansible_ssh_private_key_file", "ansible_private_key_file")
    ssh_args = [
        arg
        for option in ("ansible_ssh_common_args", "ansible_ssh_extra_args")
        for arg in shlex.split(value(option) or "")
    ]
    connection = value("ansible_connection") or "ssh"
    return Host(
        name=name,
        address=value("ansible_host", "ansible_ssh_host") or name,
        user=value("ansible_user", "ansible_ssh_user"),
        port=int(port) if port is not None else None,
        private_key=os.path.expanduser(key) if key else None,
        ssh_args=tuple(ssh_args),
        # "smart" and paramiko reach the host over SSH with the same variables.
        connection="ssh" if connection in ("smart", "paramiko", "ansible.builtin.ssh") else connection,
    )


def _unwrap(value: Any) -> Any:
    """ansible-inventory marks some strings {"__ansible_unsafe": "..."}: the string is what counts."""
    if isinstance(value, dict) and set(value) == {"__ansible_unsafe"}:
        return value["__ansible_unsafe"]
    return value


def inventory_hosts(
    inventory: Path,
    *,
    group: str = DEFAULT_GROUP,
    limit: str | None = None,
    ansible_config: Path | None = None,
) -> list[Host]:
    """The hosts of GROUP in INVENTORY, further limited by the Ansible pattern LIMIT."""
    listing = list_inventory(inventory, limit=limit, ansible_config=ansible_config)
    names = group_hosts(listing, group)
    if not names:
        if limit:
            raise UsageError(f"no host of group {group!r} in {inventory} matches --limit {limit!r}")
        raise UsageError(f"no host in group {group!r} of {inventory}; choose another with --group")
    hostvars = (listing.get("_meta") or {}).get("hostvars") or {}
    return [host_from_vars(name, hostvars.get(name) or {}) for name in names]


# --- Reading the nodes ---


def run_on_host(host: Host, remote: str, timeout: float) -> CommandResult:
    """Run REMOTE on HOST, killed after TIMEOUT seconds."""
    try:
        done = subprocess.run(
            host.command(remote, timeout),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as expired:
        return CommandResult(None, _decoded(expired.stdout), _decoded(expired.stderr))
    except FileNotFoundError as error:
        raise ApplianceError(f"cannot run {error.filename}: appliance top needs OpenSSH's ssh") from None
    return CommandResult(done.returncode, done.stdout, done.stderr)


def _decoded(output: bytes | str | None) -> str:
    if isinstance(output, bytes):
        return output.decode(errors="replace")
    return output or ""


def read_node(host: Host, run: Transport = run_on_host, timeout: float = DEFAULT_TIMEOUT) -> NodeReading:
    if host.connection not in ("ssh", "local"):
        return NodeReading(
            host.name,
            host.address,
            status="unsupported",
            error=f"ansible_connection {host.connection}: appliance top reads nodes over ssh or locally",
        )
    return reading_of(host, run(host, NVIDIA_SMI, timeout), timeout)


def collect(
    hosts: Sequence[Host], *, run: Transport = run_on_host, timeout: float = DEFAULT_TIMEOUT
) -> list[NodeReading]:
    """Every host read at once; the readings in the hosts' order."""
    if not hosts:
        return []
    # Ctrl-C reaches the ssh processes too (same process group), so waiting for the threads is short.
    with ThreadPoolExecutor(max_workers=min(MAX_PARALLEL, len(hosts)), thread_name_prefix="top") as pool:
        return list(pool.map(lambda host: read_node(host, run, timeout), hosts))


def show(
    hosts: Sequence[Host],
    *,
    as_json: bool = False,
    watch: float | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    out: TextIO | None = None,
    run: Transport = run_on_host,
) -> int:
    """Print the view once, or every WATCH seconds until Ctrl-C. The exit code: 1 when a node of the
    last reading could not be read, else 0. With --watch, --json prints one document per line."""
    out = out or sys.stdout
    code: int | None = None
    try:
        while True:
            started = time.monotonic()
            readings = collect(hosts, run=run, timeout=timeout)
            _print(out, readings, as_json=as_json, watch=watch, first=code is None)
            code = 0 if all(reading.ok for reading in readings) else 1
            if watch is None:
                return code
            time.sleep(max(0.0, watch - (time.monotonic() - started)))
    except KeyboardInterrupt:
        if code is None:
            raise  # nothing shown yet: the CLI reports the interruption
        return code


def _print(
    out: TextIO, readings: Sequence[NodeReading], *, as_json: bool, watch: float | None, first: bool
) -> None:
    if as_json:
        out.write(json.dumps(document(readings), indent=2 if watch is None else None) + "\n")
    elif watch is None:
        out.write(render(readings))
    else:
        if out.isatty():
            out.write(CLEAR_SCREEN)
        elif not first:
            out.write("\n")
        out.write(f"Every {watch:g} s; {time.strftime('%Y-%m-%d %H:%M:%S')}; Ctrl-C to stop\n\n")
        out.write(render(readings))
    out.flush()
