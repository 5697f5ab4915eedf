#!/usr/bin/python3 -I
"""appliance-backup: one encrypted archive of what a lost control plane needs (Ansible role backup).

    appliance-backup take [--config FILE] [--out DIR] [--bundle-sha256 HEX] [--inventory-sha256 HEX]
    appliance-backup list [--config FILE] [--dir DIR]
    appliance-backup verify ARCHIVE [--passphrase-file FILE]
    appliance-backup extract ARCHIVE --to DIR [--passphrase-file FILE]

`take` writes DIR/CLUSTER-YYYYMMDDTHHMMSSZ.backup (mode 0600) holding: an etcd snapshot (checked with
`etcdutl snapshot status`), /etc/kubernetes/pki, the kubeadm ClusterConfiguration and the toolkit's
kubeadm configuration, the kubelet's configuration, the values (and the stored release record) of every
Helm release, a dump of the Run:ai control plane's PostgreSQL database (`pg_dump --format=custom` in its
pod), and manifest.json with the sha256 of each of them, the etcd snapshot's status, the CA's sha256, the
bundle manifest's sha256 and the inventory's checksum. Then it keeps the newest `keep` archives of the
cluster in DIR and removes older ones. `list` shows the archives of DIR; `verify` checks an archive
against the passphrase, its authentication code and its manifest; `extract` verifies, then unpacks.

The archive: a clear header (two lines: magic, and JSON with the cluster, the time, and the key
derivation's salt) that `list` reads without the passphrase; then the tar, encrypted by `openssl enc
-aes-256-ctr -pbkdf2`; then an HMAC-SHA256 of everything before it. PBKDF2-SHA256 of the passphrase gives
a check value (a wrong passphrase is told apart from a damaged archive) and the HMAC key. CTR mode keeps
a damaged byte a damaged byte, so verification names the member it falls in.

It runs on the first control-plane node from a systemd timer, with Debian's python3 and openssl, the
bundle's etcdctl/etcdutl and helm, and the node's kubectl: nothing of the toolkit's controller is needed.
The passphrase is read from a file (0600) or standard input, never from the command line.

Exit codes: 0 done, 1 the backup or verification failed (one line on stderr, JSON on stdout), 2 bad usage.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import hmac
import io
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

CONFIG_FILE = Path("/etc/appliance/backup/config.json")
MAGIC = b"APPLIANCE-BACKUP 1\n"
SUFFIX = ".backup"
ITERATIONS = 200_000
MAC_BYTES = 32
CIPHER = ["-aes-256-ctr", "-pbkdf2", "-md", "sha256"]
NAME = re.compile(r"^(?P<cluster>[a-z0-9]([a-z0-9-]*[a-z0-9])?)-(?P<time>\d{8}T\d{6}Z)\.backup$")
CHUNK = 1 << 20


class BackupError(Exception):
    """One line for the user: what failed, and where."""


def log(message: str) -> None:
    print(f"appliance-backup: {message}", file=sys.stderr, flush=True)


def run(argv: list[str], timeout: float = 600, **kwargs) -> subprocess.CompletedProcess:
    try:
        result = subprocess.run(argv, capture_output=True, timeout=timeout, check=False, **kwargs)
    except FileNotFoundError as error:
        raise BackupError(f"{argv[0]} is not installed on this node") from error
    except subprocess.TimeoutExpired as error:
        raise BackupError(f"{' '.join(argv[:3])} did not finish within {timeout:.0f} s") from error
    if result.returncode != 0:
        stderr = result.stderr.decode(errors="replace") if isinstance(result.stderr, bytes) else result.stderr
        lines = [line for line in (stderr or "").splitlines() if line.strip()]
        raise BackupError(f"{' '.join(argv[:3])} failed (exit {result.returncode}): {' | '.join(lines[-3:])}")
    return result


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


# --- the archive's encryption ------------------------------------------------------------------------


def derive(passphrase: bytes, salt: bytes, iterations: int) -> tuple[bytes, bytes]:
    """(check value, HMAC key) from the passphrase."""
    key = hashlib.pbkdf2_hmac("sha256", passphrase, salt, iterations, 64)
    return key[:32], key[32:]


def _openssl(args: list[str], passphrase: bytes, stdin, stdout) -> None:
    """openssl enc with the passphrase through a pipe (fd:N), never in argv or the environment."""
    read_end, write_end = os.pipe()
    try:
        os.write(write_end, passphrase + b"\n")
    finally:
        os.close(write_end)
    try:
        result = subprocess.run(
            ["openssl", "enc", *CIPHER, "-iter", str(ITERATIONS), *args, "-pass", f"fd:{read_end}"],
            stdin=stdin,
            stdout=stdout,
            stderr=subprocess.PIPE,
            pass_fds=(read_end,),
            check=False,
        )
    except FileNotFoundError as error:
        raise BackupError("openssl is not installed") from error
    finally:
        os.close(read_end)
    if result.returncode != 0:
        message = result.stderr.decode(errors="replace").strip().splitlines()
        raise BackupError(
            f"openssl enc failed: {message[-1] if message else 'exit ' + str(result.returncode)}"
        )


def encrypt(tar_path: Path, out_path: Path, passphrase: bytes, cluster: str, created: str) -> None:
    salt = secrets.token_bytes(16)
    check, mac_key = derive(passphrase, salt, ITERATIONS)
    header = {
        "format": 1,
        "cluster": cluster,
        "created": created,
        "kdf": "pbkdf2-sha256",
        "iterations": ITERATIONS,
        "salt": salt.hex(),
        "check": check.hex(),
        "cipher": "openssl enc -aes-256-ctr -pbkdf2 -md sha256",
    }
    fd = os.open(out_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(MAGIC + json.dumps(header, sort_keys=True).encode() + b"\n")
        out.flush()
        with open(tar_path, "rb") as plain:
            _openssl(["-e", "-salt"], passphrase, plain, out)
        out.flush()
    mac = hmac.new(mac_key, digestmod="sha256")
    with open(out_path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            mac.update(chunk)
    with open(out_path, "ab") as out:
        out.write(mac.digest())
        out.flush()
        os.fsync(out.fileno())


def read_header(path: Path) -> tuple[dict, int]:
    """The clear header and its length in bytes; BackupError when PATH is not an archive."""
    try:
        with open(path, "rb") as handle:
            magic = handle.readline(64)
            line = handle.readline(4096)
    except OSError as error:
        raise BackupError(f"cannot read {path}: {error.strerror}") from error
    if magic != MAGIC:
        raise BackupError(f"{path} is not an appliance backup archive (no {MAGIC.decode().strip()} header)")
    try:
        header = json.loads(line)
        missing = [key for key in ("cluster", "created", "salt", "check", "iterations") if key not in header]
    except (ValueError, TypeError) as error:
        raise BackupError(f"{path}: its header is damaged") from error
    if missing:
        raise BackupError(f"{path}: its header is damaged (no {', '.join(missing)})")
    return header, len(magic) + len(line)


def chunks(handle, count: int):
    """The next COUNT bytes of HANDLE (fewer at its end), a megabyte at a time."""
    while count > 0:
        chunk = handle.read(min(CHUNK, count))
        if not chunk:
            return
        yield chunk
        count -= len(chunk)


def open_archive(path: Path, passphrase: bytes) -> tuple[dict, int, bool]:
    """Check the passphrase and the authentication code: (header, header length, authentic)."""
    header, header_length = read_header(path)
    check, mac_key = derive(passphrase, bytes.fromhex(header["salt"]), int(header["iterations"]))
    if not hmac.compare_digest(check.hex(), header["check"]):
        raise BackupError(f"the passphrase does not open {path.name} (wrong backup_passphrase)")
    size = path.stat().st_size
    if size < header_length + MAC_BYTES + 16:
        raise BackupError(f"{path.name} is truncated ({size} bytes)")
    mac = hmac.new(mac_key, digestmod="sha256")
    with open(path, "rb") as handle:
        for chunk in chunks(handle, size - MAC_BYTES):
            mac.update(chunk)
        stored = handle.read(MAC_BYTES)
    return header, header_length, hmac.compare_digest(mac.digest(), stored)


def decrypt(path: Path, header_length: int, passphrase: bytes, tar_path: Path) -> None:
    size = path.stat().st_size
    with tempfile.TemporaryFile(dir=tar_path.parent) as cipher:
        with open(path, "rb") as handle:
            handle.seek(header_length)
            for chunk in chunks(handle, size - header_length - MAC_BYTES):
                cipher.write(chunk)
        cipher.seek(0)
        fd = os.open(tar_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as plain:
            _openssl(["-d"], passphrase, cipher, plain)


def check_members(tar_path: Path, archive_name: str) -> dict:
    """The manifest, once every member matches it; BackupError naming the first that does not."""
    try:
        with tarfile.open(tar_path, "r:") as tar:
            first = tar.next()
            if first is None or first.name != "manifest.json":
                raise BackupError(f"{archive_name}: manifest.json is not its first member (damaged archive)")
            manifest = json.load(tar.extractfile(first))
            expected = dict(manifest["members"])
            for member in tar:
                if not member.isfile() or member is first:
                    continue
                want = expected.pop(member.name, None)
                if want is None:
                    raise BackupError(f"{archive_name}: member {member.name} is not in the manifest")
                digest = hashlib.sha256()
                source = tar.extractfile(member)
                while chunk := source.read(CHUNK):
                    digest.update(chunk)
                if digest.hexdigest() != want["sha256"]:
                    raise BackupError(
                        f"{archive_name}: member {member.name} does not match its sha256 in the manifest "
                        "(the archive was altered or damaged)"
                    )
    except (tarfile.TarError, ValueError, KeyError, TypeError, EOFError) as error:
        raise BackupError(f"{archive_name}: its content is damaged ({error})") from error
    if expected:
        raise BackupError(f"{archive_name}: member {sorted(expected)[0]} of the manifest is missing")
    return manifest


def verify(path: Path, passphrase: bytes, work: Path) -> tuple[dict, Path]:
    """(manifest, decrypted tar in WORK) of a sound archive; BackupError otherwise."""
    header, header_length, authentic = open_archive(path, passphrase)
    tar_path = work / "archive.tar"
    decrypt(path, header_length, passphrase, tar_path)
    manifest = check_members(tar_path, path.name)
    if not authentic:
        raise BackupError(
            f"{path.name}: its authentication code does not match although every member does "
            "(the header or the end of the archive was altered)"
        )
    if manifest.get("cluster") != header["cluster"] or manifest.get("created") != header["created"]:
        raise BackupError(f"{path.name}: its header and its manifest disagree (altered)")
    return manifest, tar_path


# --- taking a backup -------------------------------------------------------------------------------


def load_config(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except OSError as error:
        raise BackupError(f"cannot read the configuration {path}: {error.strerror}") from error
    except ValueError as error:
        raise BackupError(f"the configuration {path} is not JSON: {error}") from error


def read_passphrase(path: str | None) -> bytes:
    if path in (None, "-"):
        data = sys.stdin.buffer.readline()
    else:
        try:
            data = Path(path).read_bytes()
        except OSError as error:
            raise BackupError(f"cannot read the passphrase file {path}: {error.strerror}") from error
    passphrase = data.split(b"\n", 1)[0]
    if len(passphrase) < 12:
        raise BackupError("the backup passphrase is missing or shorter than 12 characters")
    return passphrase


class Collector:
    """Members of the archive, written into a 0600 tar in a private work directory."""

    def __init__(self, tar_path: Path) -> None:
        self.members: dict[str, dict] = {}
        # Closed by finish(); take() removes the whole work directory when anything fails before.
        self.tar = tarfile.open(tar_path, "w:", format=tarfile.PAX_FORMAT)  # noqa: SIM115
        self.tar_path = tar_path
        self.staging = tar_path.parent / "staging"
        self.staging.mkdir(mode=0o700)

    def add_file(self, name: str, path: Path) -> None:
        self.members[name] = {"sha256": sha256_file(path), "size": path.stat().st_size}
        info = self.tar.gettarinfo(str(path), arcname=name)
        info.uid = info.gid = 0
        info.uname = info.gname = "root"
        with open(path, "rb") as handle:
            self.tar.addfile(info, handle)

    def add_bytes(self, name: str, data: bytes, mode: int = 0o600) -> None:
        self.members[name] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
        info = tarfile.TarInfo(name)
        info.size, info.mode, info.mtime = len(data), mode, int(time.time())
        self.tar.addfile(info, io.BytesIO(data))

    def add_tree(self, prefix: str, root: Path) -> None:
        for path in sorted(p for p in root.rglob("*") if p.is_file() and not p.is_symlink()):
            self.add_file(f"{prefix}/{path.relative_to(root).as_posix()}", path)

    def finish(self, manifest: dict) -> None:
        """Close the tar with manifest.json as its first member (rewritten in front of the others)."""
        self.tar.close()
        body = self.tar_path.with_suffix(".body")
        self.tar_path.rename(body)
        data = json.dumps({**manifest, "members": self.members}, indent=2, sort_keys=True).encode()
        with (
            tarfile.open(body, "r:") as source,
            tarfile.open(self.tar_path, "w:", format=tarfile.PAX_FORMAT) as out,
        ):
            info = tarfile.TarInfo("manifest.json")
            info.size, info.mode, info.mtime = len(data), 0o600, int(time.time())
            out.addfile(info, io.BytesIO(data))
            for member in source:
                out.addfile(member, source.extractfile(member) if member.isfile() else None)
        body.unlink()


def kubectl(
    config: dict, *args: str, timeout: float = 120, check_existing: bool = False, **kwargs
) -> subprocess.CompletedProcess | None:
    """kubectl with the admin kubeconfig; check_existing: an AlreadyExists answer is no error."""
    try:
        return run(["kubectl", f"--kubeconfig={config['kubeconfig']}", *args], timeout=timeout, **kwargs)
    except BackupError as error:
        if check_existing and "AlreadyExists" in str(error):
            return None
        raise


def etcd_snapshot(config: dict, collector: Collector) -> dict:
    etcd = config["etcd"]
    snapshot = collector.staging / "snapshot.db"
    tls = [f"--cacert={etcd['cacert']}", f"--cert={etcd['cert']}", f"--key={etcd['key']}"]
    run(
        ["etcdctl", f"--endpoints={etcd['endpoint']}", *tls, "snapshot", "save", str(snapshot)],
        env={**os.environ, "ETCDCTL_API": "3"},
    )
    status = json.loads(run(["etcdutl", "snapshot", "status", str(snapshot), "--write-out=json"]).stdout)
    if not status.get("totalKey"):
        raise BackupError("the etcd snapshot holds no keys (etcdutl snapshot status)")
    collector.add_file("etcd/snapshot.db", snapshot)
    snapshot.unlink()
    return status


def etcd_member(manifest: Path) -> dict:
    """The local etcd member's name and peer URL, from its static pod manifest (a restore needs them)."""
    try:
        text = manifest.read_text()
    except OSError as error:
        raise BackupError(f"cannot read etcd's manifest {manifest}: {error.strerror}") from error
    found = dict(re.findall(r"--(name|initial-advertise-peer-urls)=(\S+)", text))
    if len(found) != 2:
        raise BackupError(f"{manifest} names no etcd member (--name, --initial-advertise-peer-urls)")
    return {"member": found["name"], "peer_url": found["initial-advertise-peer-urls"]}


def bundle_manifest_sha256(config: dict) -> str:
    path = Path(config.get("bundle_manifest", ""))
    return sha256_file(path) if path.is_file() else ""


def helm_releases(config: dict, collector: Collector) -> list[dict]:
    env = {**os.environ, "KUBECONFIG": config["kubeconfig"]}
    listed = json.loads(run(["helm", "list", "--all-namespaces", "--output=json"], env=env).stdout or "[]")
    releases = []
    for release in sorted(listed, key=lambda r: (r["namespace"], r["name"])):
        name, namespace = release["name"], release["namespace"]
        values = run(["helm", "get", "values", name, f"--namespace={namespace}", "--output=yaml"], env=env)
        collector.add_bytes(f"helm/{namespace}/{name}.values.yaml", values.stdout)
        # The release record helm keeps (chart, values, manifest): a release lost later is re-created from it.
        record = kubectl(
            config, "--namespace", namespace, "get", "secret",
            f"sh.helm.release.v1.{name}.v{release['revision']}", "--output=json",
        ).stdout  # fmt: skip
        collector.add_bytes(f"helm/{namespace}/{name}.release.json", record)
        releases.append(
            {
                "name": name,
                "namespace": namespace,
                "chart": release["chart"],
                "revision": int(release["revision"]),
                "status": release["status"],
            }
        )
    return releases


def runai_database(config: dict, collector: Collector) -> dict | None:
    """pg_dump of the Run:ai control plane's database in its pod; None where Run:ai is not installed."""
    database = config.get("runai_database")
    if not database:
        return None
    found = kubectl(
        config, "--namespace", database["namespace"], "get", "pods", "--ignore-not-found",
        f"--selector={database['selector']}", "--output=jsonpath={.items[*].metadata.name}",
    ).stdout.decode().split()  # fmt: skip
    if not found:
        return None
    pod = sorted(found)[0]
    dump = collector.staging / "database.dump"
    fd = os.open(dump, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        argv = [
            "kubectl", f"--kubeconfig={config['kubeconfig']}", "--namespace", database["namespace"],
            "exec", pod, f"--container={database['container']}", "--",
            "pg_dump", "--format=custom", f"--username={database['user']}", database["database"],
        ]  # fmt: skip
        result = subprocess.run(argv, stdout=out, stderr=subprocess.PIPE, timeout=1800, check=False)
    if result.returncode != 0:
        message = result.stderr.decode(errors="replace").strip().splitlines()
        raise BackupError(
            f"pg_dump in {database['namespace']}/{pod} failed: {message[-1] if message else ''}"
        )
    with open(dump, "rb") as handle:
        if handle.read(5) != b"PGDMP":
            raise BackupError(f"pg_dump in {database['namespace']}/{pod} wrote no custom-format dump")
    collector.add_file("runai/database.dump", dump)
    dump.unlink()
    return {**database, "pod": pod}


def take(config: dict, out_dir: Path, bundle_sha256: str, inventory_sha256: str) -> dict:
    started = time.monotonic()
    passphrase = read_passphrase(config["passphrase_file"])
    cluster = config["cluster"]
    created = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    name = f"{cluster}-{created}{SUFFIX}"
    try:
        out_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as error:
        raise BackupError(f"cannot create {out_dir}: {error.strerror}") from error
    # Everything is written inside a private directory of OUT_DIR and renamed into place at the end: a
    # failure (a full disk, a command that failed) leaves no partial archive behind.
    try:
        work = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=out_dir))
    except OSError as error:
        raise BackupError(f"cannot write in {out_dir}: {error.strerror}") from error
    try:
        collector = Collector(work / "archive.tar")
        etcd = etcd_snapshot(config, collector)
        pki = Path(config["pki_dir"])
        collector.add_tree("pki", pki)
        cluster_configuration = kubectl(
            config, "--namespace=kube-system", "get", "configmap", "kubeadm-config",
            "--output=jsonpath={.data.ClusterConfiguration}",
        ).stdout  # fmt: skip
        collector.add_bytes("kubeadm/cluster-configuration.yaml", cluster_configuration)
        for member, path in sorted(config.get("files", {}).items()):
            if Path(path).is_file():
                collector.add_file(member, Path(path))
        releases = helm_releases(config, collector)
        database = runai_database(config, collector)
        manifest = {
            "format": 1,
            "cluster": cluster,
            "created": created,
            "node": socket.gethostname(),
            "etcd": {"status": etcd, **etcd_member(Path(config["etcd"]["manifest"]))},
            "ca_sha256": sha256_file(pki / "ca.crt"),
            "kubernetes_version": config.get("kubernetes_version", ""),
            "bundle_manifest_sha256": bundle_sha256 or bundle_manifest_sha256(config),
            "inventory_sha256": inventory_sha256 or config.get("inventory_sha256", ""),
            "helm_releases": releases,
            "runai_database": database,
        }
        collector.finish(manifest)
        encrypt(work / "archive.tar", work / name, passphrase, cluster, created)
        final = out_dir / name
        os.replace(work / name, final)
    except OSError as error:
        raise BackupError(f"writing the archive in {out_dir} failed: {error.strerror or error}") from error
    finally:
        shutil.rmtree(work, ignore_errors=True)
    removed = prune(out_dir, cluster, int(config.get("keep", 7)))
    return {
        "archive": str(final),
        "name": name,
        "bytes": final.stat().st_size,
        "sha256": sha256_file(final),
        "seconds": round(time.monotonic() - started, 1),
        "etcd_keys": etcd.get("totalKey"),
        "helm_releases": [f"{r['namespace']}/{r['name']}" for r in releases],
        "runai_database": bool(database),
        "removed": removed,
    }


def archives(directory: Path) -> list[dict]:
    found = []
    for path in sorted(directory.glob(f"*{SUFFIX}")) if directory.is_dir() else []:
        match = NAME.match(path.name)
        if not match:
            continue
        entry = {"name": path.name, "path": str(path), "bytes": path.stat().st_size}
        try:
            header, _offset = read_header(path)
            entry.update(cluster=header["cluster"], created=header["created"])
        except BackupError as error:
            entry.update(cluster=match["cluster"], created=match["time"], error=str(error))
        found.append(entry)
    return sorted(found, key=lambda e: e["created"])


def prune(directory: Path, cluster: str, keep: int) -> list[str]:
    """Remove all but the newest KEEP archives of CLUSTER; return the names removed."""
    mine = [entry for entry in archives(directory) if entry["cluster"] == cluster]
    removed = []
    for entry in mine[: max(len(mine) - keep, 0)]:
        Path(entry["path"]).unlink(missing_ok=True)
        removed.append(entry["name"])
    return removed


def extract(tar_path: Path, to: Path) -> None:
    """Unpack a verified archive's tar into TO (members stay inside it; modes as archived)."""
    with tarfile.open(tar_path, "r:") as tar:
        for member in tar.getmembers():
            if member.name.startswith("/") or ".." in Path(member.name).parts or not member.isfile():
                raise BackupError(f"member {member.name} cannot be unpacked (not a plain relative file)")
        tar.extractall(to)  # every member was checked above, and the archive authenticated


# --- restoring what lives in the cluster ---------------------------------------------------------------


def restore_releases(config: dict, extracted: Path, manifest: dict) -> dict:
    """Re-create each Helm release of the archive that the cluster lacks: its stored record back, then
    `helm rollback` to that revision, which applies the record's chart and values again."""
    env = {**os.environ, "KUBECONFIG": config["kubeconfig"]}
    listed = json.loads(run(["helm", "list", "--all-namespaces", "--output=json"], env=env).stdout or "[]")
    present = {(r["namespace"], r["name"]) for r in listed}
    restored, kept = [], []
    for release in manifest.get("helm_releases", []):
        key = (release["namespace"], release["name"])
        if key in present:
            kept.append(f"{key[0]}/{key[1]}")
            continue
        record = json.loads((extracted / "helm" / key[0] / f"{key[1]}.release.json").read_text())
        metadata = record["metadata"]
        for field in ("resourceVersion", "uid", "creationTimestamp", "managedFields", "selfLink"):
            metadata.pop(field, None)
        kubectl(config, "create", "namespace", key[0], check_existing=True)
        kubectl(config, "--namespace", key[0], "apply", "--filename=-", input=json.dumps(record).encode())
        run(
            ["helm", "rollback", key[1], str(release["revision"]), f"--namespace={key[0]}", "--wait",
             "--timeout=10m"],
            env=env, timeout=900,
        )  # fmt: skip
        restored.append(f"{key[0]}/{key[1]}")
    return {"restored": restored, "present": kept}


def restore_database(config: dict, extracted: Path, manifest: dict, timeout: int) -> dict:
    """pg_restore of the archive's dump into the Run:ai database's pod, its clients scaled to 0 meanwhile."""
    database = manifest.get("runai_database")
    dump = extracted / "runai" / "database.dump"
    if not database or not dump.is_file():
        return {"restored": False, "reason": "the archive holds no Run:ai database"}
    namespace = database["namespace"]
    kubectl(
        config, "--namespace", namespace, "wait", "pod", f"--selector={database['selector']}",
        "--for=condition=Ready", f"--timeout={timeout}s", timeout=timeout + 30,
    )  # fmt: skip
    pod = kubectl(
        config, "--namespace", namespace, "get", "pods", f"--selector={database['selector']}",
        "--output=jsonpath={.items[0].metadata.name}",
    ).stdout.decode().strip()  # fmt: skip
    deployments = json.loads(
        kubectl(config, "--namespace", namespace, "get", "deployments", "--output=json").stdout
    )
    replicas = {d["metadata"]["name"]: d["spec"].get("replicas", 1) for d in deployments["items"]}
    started = time.monotonic()
    for name in replicas:
        kubectl(config, "--namespace", namespace, "scale", f"deployment/{name}", "--replicas=0")
    try:
        with open(dump, "rb") as source:
            argv = [
                "kubectl", f"--kubeconfig={config['kubeconfig']}", "--namespace", namespace,
                "exec", "-i", pod, f"--container={database['container']}", "--",
                "pg_restore", "--clean", "--if-exists", "--single-transaction", "--exit-on-error",
                f"--username={database['user']}", f"--dbname={database['database']}",
            ]  # fmt: skip
            result = subprocess.run(argv, stdin=source, capture_output=True, timeout=1800, check=False)
        if result.returncode != 0:
            message = result.stderr.decode(errors="replace").strip().splitlines()
            raise BackupError(f"pg_restore in {namespace}/{pod} failed: {message[-1] if message else ''}")
    finally:
        for name, count in replicas.items():
            kubectl(config, "--namespace", namespace, "scale", f"deployment/{name}", f"--replicas={count}")
    for name in replicas:
        kubectl(
            config, "--namespace", namespace, "rollout", "status", f"deployment/{name}",
            f"--timeout={timeout}s", timeout=timeout + 30,
        )  # fmt: skip
    return {"restored": True, "pod": f"{namespace}/{pod}", "seconds": round(time.monotonic() - started, 1)}


# --- the command line --------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="appliance-backup", description=__doc__.split("\n\n")[1])
    commands = parser.add_subparsers(dest="command", required=True)
    take_parser = commands.add_parser("take", help="write a new archive, then keep the newest")
    take_parser.add_argument("--config", type=Path, default=CONFIG_FILE)
    take_parser.add_argument("--out", type=Path, help="directory (default: the configuration's backup_dir)")
    take_parser.add_argument("--bundle-sha256", default="")
    take_parser.add_argument("--inventory-sha256", default="")
    list_parser = commands.add_parser("list", help="the archives of a directory")
    list_parser.add_argument("--config", type=Path, default=CONFIG_FILE)
    list_parser.add_argument("--dir", type=Path)
    for command in ("restore-releases", "restore-database"):
        sub = commands.add_parser(command, help="after a restore of etcd, from an extracted archive")
        sub.add_argument("extracted", type=Path)
        sub.add_argument("--config", type=Path, default=CONFIG_FILE)
        sub.add_argument("--timeout", type=int, default=900)
    for command in ("verify", "extract"):
        sub = commands.add_parser(command)
        sub.add_argument("archive", type=Path)
        sub.add_argument("--passphrase-file", default="-", help="a file, or - for the first line of stdin")
        if command == "extract":
            sub.add_argument("--to", type=Path, required=True)
    args = parser.parse_args(argv)
    try:
        if args.command == "take":
            config = load_config(args.config)
            result = take(
                config, args.out or Path(config["backup_dir"]), args.bundle_sha256, args.inventory_sha256
            )
            log(f"wrote {result['archive']} ({result['bytes']} bytes) in {result['seconds']} s")
        elif args.command in ("restore-releases", "restore-database"):
            config = load_config(args.config)
            try:
                manifest = json.loads((args.extracted / "manifest.json").read_text())
            except (OSError, ValueError) as error:
                raise BackupError(
                    f"{args.extracted} holds no extracted archive (manifest.json): {error}"
                ) from error
            if args.command == "restore-releases":
                result = restore_releases(config, args.extracted, manifest)
            else:
                result = restore_database(config, args.extracted, manifest, args.timeout)
        elif args.command == "list":
            directory = args.dir or Path(load_config(args.config)["backup_dir"])
            result = {"directory": str(directory), "archives": archives(directory)}
        else:
            passphrase = read_passphrase(args.passphrase_file)
            with tempfile.TemporaryDirectory(
                prefix=".appliance-backup-", dir=args.to if args.command == "extract" else None
            ) as tmp:
                manifest, tar_path = verify(args.archive, passphrase, Path(tmp))
                if args.command == "extract":
                    extract(tar_path, args.to)
            members = sorted(manifest["members"])
            result = {"archive": str(args.archive), "ok": True, "manifest": {**manifest, "members": members}}
    except BackupError as error:
        log(str(error))
        print(json.dumps({"ok": False, "error": str(error)}))
        return 1
    print(json.dumps(result, indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
