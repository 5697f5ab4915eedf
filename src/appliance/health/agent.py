"""The GPU health node agent: follows the kernel log and nvidia-smi, reports faults on its own Node.

Runs on each GPU worker as the systemd service appliance-gpu-health-agent (role gpu_health), with the
node's own kubelet credentials (/etc/kubernetes/kubelet.conf): the API server's Node authorizer lets a
node write its own status and events, nothing else. It

- reads kernel messages from the configured source: `kmsg` (/dev/kmsg, new records only), `journal`
  (`journalctl -k -f`), or `file:PATH` (a file followed like `tail -F`: how tests feed it, and how a
  site feeds it a relayed log);
- parses each line with appliance.health.xid and judges it with the Xid catalog (repeat windows for
  application-class codes);
- where nvidia-smi exists, asks it every `check_interval` seconds (appliance.health.smi: the expected
  number of GPUs, uncorrected ECC errors, rows pending remapping or failed, pages pending retirement,
  throttled clocks; no answer within `smi_timeout` seconds is a hung driver);
- where dcgmi exists, turns on DCGM's health watches and checks them as often (appliance.health.dcgm);
- on a fatal fault sets GPUHealthy=False (reason and line) at once, records an Event for every fault
  reported (at most one per reason per `event_interval`), and serves Prometheus metrics;
- carries out the controller's remediation instruction on its node (appliance.health.remedy: a reboot or
  a GPU reset, then the QA check), never one of its own.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import logging
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

from appliance.health import dcgm
from appliance.health import node as nodeapi
from appliance.health.catalog import Assessor, Catalog
from appliance.health.kube import Client, KubeError
from appliance.health.remedy import Remedy
from appliance.health.smi import Finding, Reading, Run, read, run_command
from appliance.health.xid import parse_line

log = logging.getLogger("appliance.health.agent")
Settings = TypeVar("Settings")


@dataclass
class AgentConfig:
    node_name: str = dataclasses.field(default_factory=socket.gethostname)
    kubeconfig: Path = Path("/etc/kubernetes/kubelet.conf")
    source: str = "kmsg"
    expected_gpus: int = 0  # 0: do not check the count
    nvidia_smi: str = "nvidia-smi"
    check_interval: float = 60.0
    smi_timeout: float = 30.0  # seconds nvidia-smi has to answer before the driver counts as hung
    dcgmi: str = "dcgmi"  # DCGM's CLI; where it is not installed, DCGM is not asked
    dcgm_host: str = ""  # the host engine dcgmi asks (dcgmi's --host); "": its default, this node
    dcgm_health_systems: str = "a"  # the watches the agent turns on (dcgmi health --set); "": leave them be
    remediation_interval: float = 2.0  # seconds between two looks for the controller's instruction
    reboot_command: tuple[str, ...] = ("systemctl", "reboot")
    event_interval: float = 30.0
    metrics_address: str = ":9465"  # "" serves no metrics
    catalog_override: Path | None = None

    @classmethod
    def from_file(cls, path: Path) -> AgentConfig:
        return read_settings(cls, path)


def read_settings(cls: type[Settings], path: Path) -> Settings:
    """A settings dataclass from a YAML file (the role writes it); an unknown key is named, not ignored, and
    the fields annotated Path become paths."""
    import yaml

    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as error:
        raise ValueError(f"{path}: {error}") from error
    fields = {field.name: field for field in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(
            f"{path}: unknown settings {', '.join(unknown)} (known: {', '.join(sorted(fields))})"
        )
    for key, value in data.items():
        if value and "Path" in str(fields[key].type):
            data[key] = Path(value)
    return cls(**data)


# ---------------------------------------------------------------------------------------------- sources


def follow_file(path: Path, stop: threading.Event, poll: float = 0.05) -> Iterator[str]:
    """Lines appended to PATH from now on, across truncation and replacement (log rotation); a file that
    appears after the start is read from its beginning."""
    handle = None
    identity = None
    existed = path.exists()
    while not stop.is_set():
        if handle is None:
            try:
                handle = path.open("r", errors="replace")
            except FileNotFoundError:
                existed = False
                stop.wait(poll)
                continue
            identity = os.fstat(handle.fileno()).st_ino
            if existed:
                handle.seek(0, os.SEEK_END)
        line = handle.readline()
        if line.endswith("\n"):
            yield line.rstrip("\n")
            continue
        if line:  # a partial line: the writer is mid-way; read it again whole
            handle.seek(handle.tell() - len(line.encode()))
        stop.wait(poll)
        try:
            status = path.stat()
        except FileNotFoundError:
            continue
        if status.st_ino != identity or status.st_size < handle.tell():
            handle.close()
            handle = path.open("r", errors="replace")  # a new file is read from its start
            identity = os.fstat(handle.fileno()).st_ino
    if handle:
        handle.close()


def follow_kmsg(stop: threading.Event, device: str = "/dev/kmsg") -> Iterator[str]:
    """New kernel records from /dev/kmsg ("prio,seq,usec,flags;message"): the message part."""
    fd = os.open(device, os.O_RDONLY | os.O_NONBLOCK)
    try:
        os.lseek(fd, 0, os.SEEK_END)
        os.set_blocking(fd, True)
        while not stop.is_set():
            try:
                record = os.read(fd, 8192)
            except OSError as error:
                if error.errno == errno.EPIPE:  # records overwritten before we read them: go on
                    continue
                raise
            _fields, _sep, message = record.decode(errors="replace").partition(";")
            yield message.split("\n", 1)[0]
    finally:
        os.close(fd)


def follow_journal(stop: threading.Event) -> Iterator[str]:
    process = subprocess.Popen(
        ["journalctl", "-k", "-f", "-n", "0", "-o", "cat"],
        stdout=subprocess.PIPE,
        text=True,
        errors="replace",
    )
    try:
        assert process.stdout is not None
        for line in process.stdout:
            if stop.is_set():
                break
            yield line.rstrip("\n")
    finally:
        process.terminate()


def open_source(source: str, stop: threading.Event) -> Iterator[str]:
    if source == "kmsg":
        return follow_kmsg(stop)
    if source == "journal":
        return follow_journal(stop)
    if source.startswith("file:"):
        return follow_file(Path(source[5:]), stop)
    raise ValueError(f"source {source!r}: expected kmsg, journal or file:PATH")


# --------------------------------------------------------------------------------------------- metrics


class Metrics:
    """Counters and gauges in Prometheus' text format; label sets are few (codes seen), so plain dicts."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.lines = 0
        self.faults: dict[tuple[str, str, str, str], int] = {}
        self.api_errors = 0
        self.healthy = 1
        self.smi: Reading | None = None  # the last nvidia-smi check; None: no nvidia-smi on this node
        self.dcgm: dcgm.Reading | None = None  # the last DCGM check; None: no dcgmi on this node
        self.started = time.time()

    def count_fault(self, kind: str, code: str, action: str, fatal: bool) -> None:
        key = (kind, code, action, "true" if fatal else "false")
        with self.lock:
            self.faults[key] = self.faults.get(key, 0) + 1

    def render(self, node: str) -> str:
        with self.lock:
            out = [
                "# HELP appliance_gpu_health_lines_total Kernel log lines read by the agent.",
                "# TYPE appliance_gpu_health_lines_total counter",
                f'appliance_gpu_health_lines_total{{node="{node}"}} {self.lines}',
                "# HELP appliance_gpu_faults_total GPU faults found, by kind, code and the catalog's action.",
                "# TYPE appliance_gpu_faults_total counter",
            ]
            for (kind, code, action, fatal), count in sorted(self.faults.items()):
                out.append(
                    f'appliance_gpu_faults_total{{node="{node}",kind="{kind}",code="{code}",'
                    f'action="{action}",fatal="{fatal}"}} {count}'
                )
            out += [
                "# HELP appliance_gpu_healthy 1 while the node's GPUHealthy condition is True.",
                "# TYPE appliance_gpu_healthy gauge",
                f'appliance_gpu_healthy{{node="{node}"}} {self.healthy}',
            ]
            out += self.render_smi(node)
            out += self.render_dcgm(node)
            out += [
                "# HELP appliance_gpu_health_api_errors_total Failed calls to the Kubernetes API.",
                "# TYPE appliance_gpu_health_api_errors_total counter",
                f'appliance_gpu_health_api_errors_total{{node="{node}"}} {self.api_errors}',
            ]
        return "\n".join(out) + "\n"

    def render_smi(self, node: str) -> list[str]:
        """The last nvidia-smi check; nothing where nvidia-smi is not installed (no sentinel values)."""
        reading = self.smi
        if reading is None:
            return []
        up = 1 if reading.succeeded else 0
        out = [
            "# HELP appliance_gpu_nvidia_smi_up 1: nvidia-smi answered the last check; 0: it failed or hung.",
            "# TYPE appliance_gpu_nvidia_smi_up gauge",
            f'appliance_gpu_nvidia_smi_up{{node="{node}"}} {up}',
            "# HELP appliance_gpu_nvidia_smi_duration_seconds How long the last nvidia-smi check took.",
            "# TYPE appliance_gpu_nvidia_smi_duration_seconds gauge",
            f'appliance_gpu_nvidia_smi_duration_seconds{{node="{node}"}} {reading.seconds:.3f}',
        ]
        if up:
            out += [
                "# HELP appliance_gpu_visible GPUs nvidia-smi lists.",
                "# TYPE appliance_gpu_visible gauge",
                f'appliance_gpu_visible{{node="{node}"}} {len(reading.gpus)}',
            ]
        out += [
            "# HELP appliance_gpu_finding 1 for each problem the last nvidia-smi or DCGM check found "
            "(GPU, reason).",
            "# TYPE appliance_gpu_finding gauge",
        ]
        out += [_finding_line(node, finding) for finding in reading.findings]
        return out

    def render_dcgm(self, node: str) -> list[str]:
        """The last DCGM health check; nothing where dcgmi is not installed. Its findings join nvidia-smi's in
        appliance_gpu_finding (their reasons start with DCGM, but RowRemapFailure)."""
        reading = self.dcgm
        if reading is None:
            return []
        out = [
            "# HELP appliance_gpu_dcgm_up 1: DCGM's health check answered; 0: dcgmi failed (no host engine, "
            "no watches) or hung.",
            "# TYPE appliance_gpu_dcgm_up gauge",
            f'appliance_gpu_dcgm_up{{node="{node}"}} {1 if reading.up else 0}',
            "# HELP appliance_gpu_dcgm_duration_seconds How long the last DCGM health check took.",
            "# TYPE appliance_gpu_dcgm_duration_seconds gauge",
            f'appliance_gpu_dcgm_duration_seconds{{node="{node}"}} {reading.seconds:.3f}',
        ]
        if not reading.findings:
            return out
        if self.smi is None:
            out += [
                "# HELP appliance_gpu_finding 1 for each problem the last nvidia-smi or DCGM check found "
                "(GPU, reason).",
                "# TYPE appliance_gpu_finding gauge",
            ]
        return out + [_finding_line(node, finding) for finding in reading.findings]


def _finding_line(node: str, finding: Finding) -> str:
    return (
        f'appliance_gpu_finding{{node="{node}",gpu="{finding.gpu or ""}",reason="{finding.reason}",'
        f'action="{finding.action}"}} 1'
    )


def serve_metrics(address: str, render: Callable[[], str]) -> ThreadingHTTPServer:
    host, _sep, port = address.rpartition(":")

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.split("?")[0] not in ("/metrics", "/healthz"):
                self.send_error(404)
                return
            body = (render() if self.path.startswith("/metrics") else "ok\n").encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:  # no access log in the journal
            pass

    server = ThreadingHTTPServer((host or "0.0.0.0", int(port)), Handler)
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    return server


# ----------------------------------------------------------------------------------------------- agent


class Agent:
    def __init__(
        self,
        config: AgentConfig,
        client: Client | None = None,
        run: Run = run_command,
    ) -> None:
        self.config = config
        self.client = client or Client(config.kubeconfig)
        self.run = run
        self.assessor = Assessor(Catalog.load(config.catalog_override))
        self.metrics = Metrics()
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.fault: nodeapi.NodeFault | None = None
        self.synced_at = -1e9
        self.last_event: dict[str, float] = {}
        self.suppressed: dict[str, int] = {}
        self.dcgm_watching = False  # the health watches are set
        self.remedy = Remedy(
            self.client,
            config.node_name,
            qa=self.qa,
            run=run,
            reboot=tuple(config.reboot_command),
            nvidia_smi=config.nvidia_smi,
            reset_done=self.reset_done,
        )

    def qa(self) -> dict[str, Any]:
        from appliance.health.operations import qa  # operations imports the controller, which imports us

        return qa(self.config.expected_gpus, self.run)

    def reset_done(self, gpus: tuple[str, ...]) -> None:
        """After a reset the GPUs' repeat windows start again (all of them where the reset named none)."""
        for gpu in gpus or (None,):
            self.assessor.forget(gpu)

    # The node's condition is the truth: a restarted agent keeps a fault an earlier one reported.
    def sync_condition(self) -> None:
        current = nodeapi.condition(self.refresh_fault())
        if current is None:
            nodeapi.set_condition(
                self.client, self.config.node_name, True, nodeapi.HEALTHY_REASON, "no GPU fault reported"
            )
        else:
            nodeapi.heartbeat(self.client, self.config.node_name, current)

    def refresh_fault(self) -> dict[str, Any]:
        node = nodeapi.get_node(self.client, self.config.node_name)
        with self.lock:
            self.fault = nodeapi.fault_of(node)
            self.metrics.healthy = 0 if self.fault else 1
            self.synced_at = time.monotonic()
        return node

    def _covered(self, action: str) -> bool:
        with self.lock:
            fault = self.fault
        return fault is not None and nodeapi.SEVERITY.get(action, 0) <= nodeapi.SEVERITY[fault.action]

    def _due(self, key: str) -> tuple[bool, int]:
        """Whether KEY's Event (or log line) is due, at most one per event_interval; and how many were
        held back since the last one."""
        with self.lock:
            now = time.monotonic()
            if now - self.last_event.get(key, -1e9) < self.config.event_interval:
                self.suppressed[key] = self.suppressed.get(key, 0) + 1
                return False, 0
            self.last_event[key] = now
            return True, self.suppressed.pop(key, 0)

    def report(self, reason: str, action: str, message: str, fatal: bool) -> None:
        """Record an Event (rate-limited per reason) and, for a fatal fault graver than the current one,
        set GPUHealthy=False."""
        name = self.config.node_name
        if fatal and self._covered(action) and time.monotonic() - self.synced_at > 2.0:
            # Re-admission may have cleared the condition since we last looked: the node says.
            with contextlib.suppress(KubeError):
                self.refresh_fault()
        with self.lock:
            escalate = fatal and (
                self.fault is None or nodeapi.SEVERITY.get(action, 0) > nodeapi.SEVERITY[self.fault.action]
            )
            if escalate:
                self.fault = nodeapi.NodeFault(reason, action, message, nodeapi.now_iso())
                self.metrics.healthy = 0
        emit, suppressed = self._due(reason)
        try:
            if escalate:
                nodeapi.set_condition(self.client, name, False, reason, message)
                log.warning("GPUHealthy=False on %s: %s %s", name, reason, message)
            if emit or escalate:
                more = f" ({suppressed} more since the last event)" if emit and suppressed else ""
                nodeapi.record_event(self.client, name, reason, message + more, warning=fatal)
        except KubeError as error:
            with self.metrics.lock:
                self.metrics.api_errors += 1
            log.error("reporting %s on %s: %s", reason, name, error)
            if escalate:  # the condition was not written: the next check or fault writes it again
                with self.lock:
                    self.fault = None

    def handle_line(self, line: str) -> None:
        with self.metrics.lock:
            self.metrics.lines += 1
        fault = parse_line(line)
        if fault is None:
            return
        verdict = self.assessor.assess(fault, time.monotonic())
        self.metrics.count_fault(fault.kind, str(fault.code or ""), verdict.action, verdict.fatal)
        if verdict.action == "ignore" and not verdict.fatal:
            if self._due(f"log:{verdict.reason}")[0]:  # a flood of one code is one journal line a while
                log.info("%s (ignored by the catalog): %s", verdict.reason, fault.line)
            return
        self.report(verdict.reason, verdict.action, f"{verdict.action}: {fault.line.strip()}", verdict.fatal)

    def check_loop(self) -> None:
        while not self.stop.is_set():
            try:
                self.sync_condition()
            except KubeError as error:
                with self.metrics.lock:
                    self.metrics.api_errors += 1
                log.error("condition of %s: %s", self.config.node_name, error)
            self.check_gpus()
            self.stop.wait(self.config.check_interval)

    def check_gpus(self) -> None:
        """One nvidia-smi check and one DCGM check, each where it is installed: each finding reported, the
        gravest first (it sets the condition; a graver one found later replaces it, a lesser one is an
        Event)."""
        gpus: tuple = ()
        smi = shutil.which(self.config.nvidia_smi)
        if smi:
            reading = read(smi, self.config.expected_gpus, self.run, self.config.smi_timeout)
            gpus = reading.gpus
            with self.metrics.lock:
                self.metrics.smi = reading
            for finding in reading.findings:
                self.report(finding.reason, finding.action, finding.message, finding.fatal)
        self.check_dcgm(gpus)

    def check_dcgm(self, gpus: tuple) -> None:
        """DCGM's health check where dcgmi is installed, the watches turned on first (again after a check that
        failed: a restarted host engine forgets them)."""
        dcgmi = shutil.which(self.config.dcgmi)
        if not dcgmi:
            return
        host, timeout = self.config.dcgm_host, self.config.smi_timeout
        if not self.dcgm_watching and self.config.dcgm_health_systems:
            problem = dcgm.set_watches(dcgmi, self.config.dcgm_health_systems, host, self.run, timeout)
            if problem and self._due("log:dcgm-watches")[0]:
                log.warning("DCGM's health watches not set (tried again at the next check): %s", problem)
            self.dcgm_watching = problem is None
        reading = dcgm.read(dcgmi, host, self.run, gpus, timeout)
        with self.metrics.lock:
            self.metrics.dcgm = reading
        if not reading.up:
            self.dcgm_watching = False
            if self._due("log:dcgm")[0]:
                log.warning("DCGM's health check: %s", reading.problem)
        for finding in reading.findings:
            self.report(finding.reason, finding.action, finding.message, finding.fatal)

    def remediation_loop(self) -> None:
        while not self.stop.is_set():
            try:
                self.remedy.step()
            except KubeError as error:
                with self.metrics.lock:
                    self.metrics.api_errors += 1
                log.error("remediation on %s: %s", self.config.node_name, error)
            self.stop.wait(self.config.remediation_interval)

    def run_forever(self) -> None:
        if self.config.metrics_address:
            serve_metrics(self.config.metrics_address, lambda: self.metrics.render(self.config.node_name))
        threading.Thread(target=self.check_loop, name="check", daemon=True).start()
        threading.Thread(target=self.remediation_loop, name="remediation", daemon=True).start()
        log.info(
            "following %s on %s (expected GPUs: %s)",
            self.config.source,
            self.config.node_name,
            self.config.expected_gpus or "not checked",
        )
        for line in open_source(self.config.source, self.stop):
            self.handle_line(line)


def main(config_path: Path | None, overrides: dict[str, Any]) -> int:
    config = AgentConfig.from_file(config_path) if config_path else AgentConfig()
    config = dataclasses.replace(config, **{k: v for k, v in overrides.items() if v is not None})
    agent = Agent(config)
    with contextlib.suppress(KeyboardInterrupt):
        agent.run_forever()
    return 0
