#!/usr/bin/python3 -I
"""appliance-certs: the certificates a kubeadm node runs on, and their renewal (Ansible role certs).

    appliance-certs status [--config FILE] [--file NAME=PATH ...]
    appliance-certs renew [--config FILE] [--before-days N] [--force] [--dry-run]

`status` prints one JSON document: every certificate of this node (kubeadm's certificates, the client
certificates embedded in its kubeconfigs, the kubelet's rotating client certificate, the CAs, and the
files named with --file) with subject, issuer, serial, not-after and days left, and the last renewal this
node recorded. `renew` renews, with `kubeadm certs renew`, every kubeadm certificate that expires within
--before-days days (all of them with --force), restarts the control-plane components that use them one
at a time and waits until each is healthy again, checks the new expiry, copies admin.conf to the
kubeconfigs the configuration names, and records the result (a JSON file `status` shows, and the
journal when a timer runs it). CAs are never renewed. It runs on the node from a systemd timer, with
Debian's python3 and openssl alone: nothing of the toolkit's controller is needed.

Exit codes: 0 done (also: nothing due), 1 a renewal or restart failed, 2 bad usage.
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

KUBERNETES_DIR = Path("/etc/kubernetes")
CONFIG_FILE = Path("/etc/appliance/certs/config.json")
# The last run of `renew` (a check that found nothing due included), and the last one that renewed or failed.
STATE_DIR = Path("/var/lib/appliance/certs")

# kubeadm's certificates: its name for `kubeadm certs renew`, the file under /etc/kubernetes, and the
# control-plane component that reads it (restarted after a renewal; None: nothing to restart).
KUBEADM_CERTIFICATES = (
    ("apiserver", "pki/apiserver.crt", "kube-apiserver"),
    ("apiserver-kubelet-client", "pki/apiserver-kubelet-client.crt", "kube-apiserver"),
    ("apiserver-etcd-client", "pki/apiserver-etcd-client.crt", "kube-apiserver"),
    ("front-proxy-client", "pki/front-proxy-client.crt", "kube-apiserver"),
    ("etcd-server", "pki/etcd/server.crt", "etcd"),
    ("etcd-peer", "pki/etcd/peer.crt", "etcd"),
    # Only the liveness probes of older kubeadm releases used it; 1.23's probe reads etcd's metrics port.
    ("etcd-healthcheck-client", "pki/etcd/healthcheck-client.crt", None),
    ("admin.conf", "admin.conf", None),
    ("controller-manager.conf", "controller-manager.conf", "kube-controller-manager"),
    ("scheduler.conf", "scheduler.conf", "kube-scheduler"),
)
CERTIFICATE_AUTHORITIES = (
    ("ca", "pki/ca.crt"),
    ("front-proxy-ca", "pki/front-proxy-ca.crt"),
    ("etcd-ca", "pki/etcd/ca.crt"),
)
# etcd first: the API server cannot serve without it. One at a time, each healthy before the next.
RESTART_ORDER = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler")


class CertsError(Exception):
    """A certificate could not be read, renewed, or a component did not come back: one line for the log."""


@dataclass
class Certificate:
    name: str
    path: str
    # kubeadm (kubeadm certs renew), ca (never renewed), kubelet (it rotates its own), or --file-kind
    kind: str
    subject: str = ""
    issuer: str = ""
    serial: str = ""
    not_after: str = ""  # ISO 8601, UTC
    days_left: float = 0.0
    component: str | None = None


@dataclass
class Config:
    """What role certs writes to CONFIG_FILE (JSON): the node's runtime and what a renewal refreshes."""

    runtime_endpoint: str = "unix:///var/run/dockershim.sock"
    before_days: int = 90
    api_port: int = 6443
    restart_timeout: int = 300
    # Copies of admin.conf to refresh after its renewal: the Ansible user's ~/.kube/config, root's.
    admin_kubeconfig_copies: list[str] = field(default_factory=list)
    # Other certificates the toolkit deploys on this node: NAME -> PATH (kind "file", reported only).
    files: dict[str, str] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> Config:
        if not path.exists():
            return cls()
        try:
            data = json.loads(path.read_text())
            return cls(**data)
        except (OSError, ValueError, TypeError) as error:
            raise CertsError(f"configuration {path}: {error}") from error


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def parse_pem(pem: bytes, source: str, at: dt.datetime) -> dict[str, object]:
    """Subject, issuer, serial, not-after and days left of the first certificate of PEM, read by openssl."""
    result = subprocess.run(
        ["openssl", "x509", "-noout", "-serial", "-enddate", "-subject", "-issuer", "-nameopt", "RFC2253"],
        input=pem,
        capture_output=True,
        check=False,
    )
    if result.returncode != 0:
        raise CertsError(f"{source}: not a certificate openssl can read: {result.stderr.decode().strip()}")
    fields = {}
    for line in result.stdout.decode().splitlines():
        key, _sep, value = line.partition("=")
        fields[key.strip()] = value.strip()
    try:
        expiry = dt.datetime.strptime(fields["notAfter"], "%b %d %H:%M:%S %Y GMT").replace(tzinfo=dt.UTC)
    except (KeyError, ValueError) as error:
        raise CertsError(f"{source}: openssl printed no readable notAfter ({error})") from error
    return {
        "subject": fields.get("subject", ""),
        "issuer": fields.get("issuer", ""),
        "serial": fields.get("serial", "").upper(),
        "not_after": expiry.isoformat(),
        "days_left": round((expiry - at).total_seconds() / 86400, 2),
    }


_CLIENT_DATA = re.compile(r"^\s*client-certificate-data:\s*(\S+)\s*$", re.MULTILINE)
_CLIENT_FILE = re.compile(r"^\s*client-certificate:\s*(\S+)\s*$", re.MULTILINE)


def kubeconfig_certificate(path: Path) -> tuple[bytes, str]:
    """The client certificate of a kubeconfig kubeadm wrote: embedded (admin.conf) or a file (kubelet.conf,
    whose file the kubelet rotates). kubeadm writes one user per file, one key per line."""
    text = path.read_text()
    if match := _CLIENT_DATA.search(text):
        return base64.b64decode(match.group(1)), str(path)
    if match := _CLIENT_FILE.search(text):
        certificate = (path.parent / match.group(1).strip("\"'")).resolve()
        return certificate.read_bytes(), str(path.parent / match.group(1).strip("\"'"))
    raise CertsError(f"{path}: no client certificate in it")


def read_certificates(
    config: Config,
    base: Path = KUBERNETES_DIR,
    at: dt.datetime | None = None,
    *,
    only_files: bool = False,
    file_kind: str = "file",
) -> list[Certificate]:
    """Every certificate of this node that exists (a worker has the cluster CA and the kubelet's alone), and
    the configuration's files, which must exist."""
    at = at or now()
    found: list[tuple[str, Path, str, str | None]] = []
    if not only_files:
        for name, relative in CERTIFICATE_AUTHORITIES:
            found.append((name, base / relative, "ca", None))
        for name, relative, component in KUBEADM_CERTIFICATES:
            found.append((name, base / relative, "kubeadm", component))
        found.append(("kubelet-client", base / "kubelet.conf", "kubelet", None))
    for name, path in sorted(config.files.items()):
        found.append((name, Path(path), file_kind, None))
    certificates = []
    for name, path, kind, component in found:
        if not path.exists():
            if name in config.files:
                raise CertsError(f"{name}: {path} does not exist")
            continue
        try:
            if path.suffix == ".conf":
                pem, shown = kubeconfig_certificate(path)
            else:
                pem, shown = path.read_bytes(), str(path)
        except OSError as error:
            raise CertsError(f"{name}: {path}: {error.strerror}") from error
        details = parse_pem(pem, f"{name} ({shown})", at)
        certificates.append(Certificate(name, shown, kind, component=component, **details))  # type: ignore[arg-type]
    return certificates


def due(certificates: list[Certificate], before_days: float, force: bool) -> list[Certificate]:
    """The kubeadm certificates a renewal renews: all with force, else those within BEFORE_DAYS days."""
    return [c for c in certificates if c.kind == "kubeadm" and (force or c.days_left <= before_days)]


def components_to_restart(renewed: list[Certificate]) -> list[str]:
    """The components that read a renewed certificate, in RESTART_ORDER, each once."""
    wanted = {c.component for c in renewed if c.component}
    return [component for component in RESTART_ORDER if component in wanted]


def run(argv: list[str], timeout: float = 120) -> str:
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise CertsError(f"{' '.join(argv)}: {error}") from error
    if result.returncode != 0:
        raise CertsError(f"{' '.join(argv)} exited {result.returncode}: {result.stderr.strip()[-500:]}")
    return result.stdout


class Runtime:
    """The control plane's static pod containers, through crictl (docker's dockershim or containerd)."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint

    def running(self, component: str) -> str:
        """The id of COMPONENT's running container in kube-system ('' when none runs)."""
        output = run(
            [
                "crictl",
                "--runtime-endpoint",
                self.endpoint,
                "ps",
                "--quiet",
                "--state",
                "running",
                "--name",
                f"^{component}$",
                "--label",
                "io.kubernetes.pod.namespace=kube-system",
            ]
        )
        ids = output.split()
        return ids[0] if ids else ""

    def stop(self, container: str) -> None:
        run(["crictl", "--runtime-endpoint", self.endpoint, "stop", container])


def _unverified() -> ssl.SSLContext:
    # Health endpoints on the loopback: the point is whether they answer, not whom they prove to be.
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5, context=_unverified()) as response:
            body = response.read().decode(errors="replace").strip()
    except (OSError, ValueError):
        return False
    return response.status == 200 and body in ("ok", '{"health":"true"}', '{"health":"true","reason":""}')


def served_serial(port: int) -> str:
    """The serial of the certificate the API server serves on PORT."""
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        _unverified().wrap_socket(raw) as tls,
    ):
        der = tls.getpeercert(binary_form=True) or b""
    return str(parse_pem(ssl.DER_cert_to_PEM_cert(der).encode(), "served", now())["serial"])


def healthy(component: str, config: Config, base: Path) -> bool:
    if component == "etcd":
        return answers("http://127.0.0.1:2381/health")
    if component == "kube-controller-manager":
        return answers("https://127.0.0.1:10257/healthz")
    if component == "kube-scheduler":
        return answers("https://127.0.0.1:10259/healthz")
    # The API server: ready, and serving the certificate now on disk.
    if not answers(f"https://127.0.0.1:{config.api_port}/readyz"):
        return False
    try:
        on_disk = parse_pem((base / "pki/apiserver.crt").read_bytes(), "apiserver", now())["serial"]
        return served_serial(config.api_port) == on_disk
    except (OSError, CertsError):
        return False


def restart(component: str, runtime: Runtime, config: Config, base: Path, log) -> float:
    """Stop COMPONENT's container (the kubelet starts a new one at once: static pods restart always), wait
    until another container runs and the component is healthy; return the seconds it took."""
    started = time.monotonic()
    old = runtime.running(component)
    if not old:
        raise CertsError(f"{component}: no running container to restart")
    runtime.stop(old)
    deadline = started + config.restart_timeout
    while time.monotonic() < deadline:
        current = runtime.running(component)
        if current and current != old and healthy(component, config, base):
            seconds = time.monotonic() - started
            log(f"{component} restarted and healthy in {seconds:.1f} s")
            return seconds
        time.sleep(1)
    raise CertsError(
        f"{component} was not healthy within {config.restart_timeout} s of its restart; see "
        f"`crictl ps -a --name {component}` and its log"
    )


def refresh_copies(config: Config, base: Path, log) -> list[str]:
    """Copy admin.conf over each copy the configuration names that differs, keeping its owner and mode."""
    source = base / "admin.conf"
    refreshed = []
    for copy in config.admin_kubeconfig_copies:
        target = Path(copy)
        if not target.parent.is_dir() or (target.exists() and target.read_bytes() == source.read_bytes()):
            continue
        stat = target.stat() if target.exists() else None
        descriptor, temporary = tempfile.mkstemp(dir=target.parent, prefix=".config.")
        os.close(descriptor)
        shutil.copyfile(source, temporary)
        os.chmod(temporary, stat.st_mode & 0o777 if stat else 0o600)
        if stat:
            os.chown(temporary, stat.st_uid, stat.st_gid)
        os.replace(temporary, target)
        refreshed.append(copy)
        log(f"refreshed {copy}")
    return refreshed


def renew(config: Config, before_days: int, force: bool, dry_run: bool, base: Path, log) -> dict:
    """Renew what is due; return the result as recorded (renewed, restarted, refreshed, new expiry)."""
    started = now()
    before = read_certificates(config, base, started)
    chosen = due(before, before_days, force)
    result: dict = {
        "time": started.isoformat(),
        "before_days": before_days,
        "force": force,
        "due": [c.name for c in chosen],
        "renewed": [],
        "restarted": [],
        "refreshed": [],
        "not_after": {},
        "error": None,
    }
    if dry_run or not chosen:
        log("nothing is due" if not chosen else f"would renew {', '.join(result['due'])}")
        return result
    try:
        for certificate in chosen:
            run(["kubeadm", "certs", "renew", certificate.name])
            result["renewed"].append(certificate.name)
        log(f"renewed {', '.join(result['renewed'])}")
        runtime = Runtime(config.runtime_endpoint)
        for component in components_to_restart(chosen):
            restart(component, runtime, config, base, log)
            result["restarted"].append(component)
        after = {c.name: c for c in read_certificates(config, base)}
        previous = {c.name: c.not_after for c in chosen}
        result["not_after"] = {name: after[name].not_after for name in previous}
        stale = [name for name in previous if after[name].not_after <= previous[name]]
        if stale:
            raise CertsError(f"not-after did not move forward for {', '.join(stale)}")
        result["refreshed"] = refresh_copies(config, base, log)
    except CertsError as error:
        result["error"] = str(error)
    return result


def record(result: dict, state_dir: Path = STATE_DIR) -> None:
    """Keep RESULT as the last check, and as the last renewal when it renewed something or failed."""
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o755)
    names = ["last-check.json"] + (["last-renewal.json"] if result["renewed"] or result["error"] else [])
    for name in names:
        temporary = state_dir / f".{name}.tmp"
        temporary.write_text(json.dumps(result, indent=2) + "\n")
        os.chmod(temporary, 0o644)
        os.replace(temporary, state_dir / name)


def recorded(state_dir: Path = STATE_DIR) -> dict:
    """The last check and the last renewal this node recorded (None where there is none)."""
    found: dict = {}
    for key in ("last_check", "last_renewal"):
        try:
            found[key] = json.loads((state_dir / f"{key.replace('_', '-')}.json").read_text())
        except (OSError, ValueError):
            found[key] = None
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="appliance-certs", description=__doc__.split("\n", maxsplit=1)[0])
    parser.add_argument("--config", type=Path, default=CONFIG_FILE)
    commands = parser.add_subparsers(dest="command", required=True)
    status = commands.add_parser("status", help="every certificate of this node (JSON)")
    status.add_argument(
        "--file", action="append", default=[], metavar="NAME=PATH", help="another certificate"
    )
    status.add_argument("--file-kind", default="file", help="the kind the --file certificates are listed as")
    status.add_argument("--only-files", action="store_true", help="the --file certificates alone")
    renewal = commands.add_parser("renew", help="renew the kubeadm certificates that are due")
    renewal.add_argument("--before-days", type=int, help="renew what expires within this many days")
    renewal.add_argument("--force", action="store_true", help="renew every kubeadm certificate")
    renewal.add_argument("--dry-run", action="store_true", help="say what is due; change nothing")
    args = parser.parse_args(argv)

    def log(line: str) -> None:
        print(f"appliance-certs: {line}", file=sys.stderr, flush=True)

    try:
        config = Config.load(args.config)
        if args.command == "status":
            for entry in args.file:
                name, separator, path = entry.partition("=")
                if not separator or not name or not path:
                    parser.error(f"--file {entry!r}: give NAME=PATH")
                config.files[name] = path
            certificates = read_certificates(config, only_files=args.only_files, file_kind=args.file_kind)
            print(json.dumps({"certificates": [asdict(c) for c in certificates], **recorded()}))
            return 0
        before_days = config.before_days if args.before_days is None else args.before_days
        result = renew(config, before_days, args.force, args.dry_run, KUBERNETES_DIR, log)
        if not args.dry_run:
            record(result)
        print(json.dumps(result))
        if result["error"]:
            log(f"error: {result['error']}")
            return 1
        return 0
    except CertsError as error:
        log(f"error: {error}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
