"""The synthetic Run:ai air-gapped tarball: its layout, images, charts and CLI, the backend's login and
projects API, module runai_admin_password against that backend, and its PostgreSQL image (dump, restore,
restart on a volume).

Builds with go and docker (about two minutes the first time, then from the cache); skipped without them.
The backend runs against a real PostgreSQL: a throwaway cluster made here with the server programs of
Debian's postgresql-15 (scripts/setup-host.sh installs it), as user postgres when the tests run as root.
"""

from __future__ import annotations

import base64
import datetime
import glob
import hashlib
import ipaddress
import json
import os
import pwd
import secrets
import shutil
import socket
import ssl
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from appliance.lab import docker, runai_tarball

VERSION = "2.9.0"
HELM = Path.home() / ".local/state/appliance/bundle/bin/helm"
REGISTRY = "registry.lab:5000/run-ai-prod"
DEPLOY_FILES = {
    "SYNTHETIC",
    "images.tar",
    "images.txt",
    "prepare_installation.sh",
    f"runai-backend-{VERSION}.tgz",
    f"runai-cli-{VERSION}-linux-amd64.tar.gz",
    f"runai-cluster-{VERSION}.tgz",
}
IMAGES = [
    f"gcr.io/run-ai-prod/backend:{VERSION}",
    f"gcr.io/run-ai-prod/nginx-ingress-controller:{VERSION}",
    f"gcr.io/run-ai-prod/agent:{VERSION}",
    f"gcr.io/run-ai-prod/postgresql:{VERSION}",
]
SYNTHETIC_IMAGES = IMAGES[:3]


def _can_build() -> str | None:
    if shutil.which("go") is None and not Path("/usr/local/go/bin/go").exists():
        return "no Go toolchain"
    if shutil.which("docker") is None or not docker.engine_answers():
        return "no docker engine"
    return None


@pytest.fixture(scope="module")
def tarball(tmp_path_factory: pytest.TempPathFactory) -> Path:
    reason = _can_build()
    if reason:
        pytest.skip(f"cannot build the synthetic tarball: {reason}")
    return runai_tarball.build(VERSION, tmp_path_factory.mktemp("out"))


@pytest.fixture(scope="module")
def deploy(tarball: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("extracted")
    with tarfile.open(tarball) as archive:
        archive.extractall(root, filter="data")
    return root / "deploy"


@pytest.fixture(scope="module")
def binary(deploy: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The CLI archive's `runai`, the one binary every image runs."""
    directory = tmp_path_factory.mktemp("cli")
    with tarfile.open(deploy / f"runai-cli-{VERSION}-linux-amd64.tar.gz") as archive:
        assert archive.getnames() == ["runai"]
        assert archive.getmember("runai").mode == 0o755
        archive.extractall(directory, filter="data")
    return directory / "runai"


def test_layout(tarball: Path, deploy: Path) -> None:
    assert tarball.name == f"runai-airgapped-{VERSION}.tar.gz"
    with tarfile.open(tarball) as archive:
        names = archive.getnames()
        assert names == sorted(names)
        assert {member.mtime for member in archive.getmembers()} == {runai_tarball.MTIME}
    assert {path.name for path in deploy.iterdir()} == DEPLOY_FILES
    assert (deploy / "images.txt").read_text().splitlines() == IMAGES
    assert (deploy / "prepare_installation.sh").stat().st_mode & 0o777 == 0o755
    assert "NOT Run:ai's software" in (deploy / "SYNTHETIC").read_text()


def test_a_second_build_comes_from_the_cache_and_is_identical(tarball: Path, tmp_path: Path) -> None:
    started = time.monotonic()
    again = runai_tarball.build(VERSION, tmp_path)
    assert time.monotonic() - started < 5
    assert hashlib.sha256(again.read_bytes()).digest() == hashlib.sha256(tarball.read_bytes()).digest()


def test_the_cache_key_changes_with_any_source(tmp_path: Path) -> None:
    sources = tmp_path / "runai"
    shutil.copytree(runai_tarball.SOURCES, sources)
    before = runai_tarball.source_digest(sources)
    assert runai_tarball.source_digest(sources) == before
    seen = {before}
    for changed in ("charts/runai-cluster/values.yaml", "synthetic/go.sum", "postgresql/entrypoint.sh"):
        with open(sources / changed, "a") as source:
            source.write("# changed\n")
        digest = runai_tarball.source_digest(sources)
        assert digest not in seen, changed
        seen.add(digest)


def test_images_tar_holds_the_synthetic_image_under_three_references_and_postgresql(deploy: Path) -> None:
    with tarfile.open(deploy / "images.tar") as archive:
        manifest = json.load(archive.extractfile("manifest.json"))
        assert sorted(sorted(entry["RepoTags"]) for entry in manifest) == [
            sorted(SYNTHETIC_IMAGES),
            [f"gcr.io/run-ai-prod/postgresql:{VERSION}"],
        ]
        configs = {
            entry["RepoTags"][0].split("/")[-1].split(":")[0]: json.load(archive.extractfile(entry["Config"]))
            for entry in manifest
        }
    synthetic = configs["backend"]["config"]
    assert synthetic["User"] == "65534"
    assert synthetic["Entrypoint"] == ["/runai-synthetic"]
    postgresql = configs["postgresql"]["config"]
    assert postgresql["User"] == "999:999"
    assert postgresql["Entrypoint"] == ["/usr/local/bin/runai-postgresql-entrypoint"]
    environment = dict(line.split("=", 1) for line in postgresql["Env"])
    assert environment["PATH"].startswith("/usr/lib/postgresql/15/bin:")
    assert environment["PGDATA"] == "/var/lib/postgresql/data/pgdata"


def test_the_cli_reports_its_version_completion_and_user(binary: Path, tmp_path: Path) -> None:
    assert _run(binary, "version").stdout == f"Version: {VERSION}\n"
    completion = _run(binary, "completion", "bash").stdout
    assert "_runai()" in completion
    assert "complete -F _runai runai" in completion
    kubeconfig = tmp_path / "config"
    kubeconfig.write_text(
        "apiVersion: v1\ncontexts:\n- context:\n    cluster: lab\n    user: alice\n  name: alice@lab\n"
        "- context:\n    cluster: lab\n    user: admin\n  name: admin@lab\ncurrent-context: alice@lab\n"
    )
    assert _run(binary, "whoami", env={"KUBECONFIG": str(kubeconfig)}).stdout == "alice\n"


def _run(binary: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [str(binary), *args], capture_output=True, text=True, env={**os.environ, **(env or {})}, check=False
    )
    assert result.returncode == 0, result.stderr
    return result


def test_chart_archives_carry_the_version(deploy: Path) -> None:
    for chart in runai_tarball.CHARTS:
        with tarfile.open(deploy / f"{chart}-{VERSION}.tgz") as archive:
            assert {name.split("/")[0] for name in archive.getnames()} == {chart}
            metadata = yaml.safe_load(archive.extractfile(f"{chart}/Chart.yaml"))
        assert (metadata["name"], metadata["version"], metadata["appVersion"]) == (chart, VERSION, VERSION)


# --- the charts, rendered by helm ------------------------------------------------------------------------


def _helm(chart: Path, values: dict, namespace: str) -> subprocess.CompletedProcess[str]:
    if not HELM.exists():
        pytest.skip(f"no helm at {HELM} (appliance lab bundle builds it)")
    values_file = chart.parent / f"values-{os.getpid()}-{time.monotonic_ns()}.yaml"
    values_file.write_text(yaml.safe_dump(values))
    try:
        return subprocess.run(
            [str(HELM), "template", "release", str(chart), "-n", namespace, "-f", str(values_file)],
            capture_output=True,
            text=True,
            check=False,
        )
    finally:
        values_file.unlink()


def _objects(result: subprocess.CompletedProcess[str]) -> dict[tuple[str, str], dict]:
    assert result.returncode == 0, result.stderr
    documents = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    return {(doc["kind"], doc["metadata"]["name"]): doc for doc in documents}


BACKEND_VALUES = {
    "global": {"image": {"registry": REGISTRY}, "domain": "runai.lab.local"},
    "externalIPs": ["10.10.0.2"],
    "tls": {"cert": "CERT", "key": "KEY"},
    "nfs": {"server": "10.10.0.9", "path": "/export/runai"},
    "airgapped": True,
}


def test_backend_chart_renders_its_deployments_from_the_given_registry(deploy: Path) -> None:
    objects = _objects(_helm(deploy / f"runai-backend-{VERSION}.tgz", BACKEND_VALUES, "runai-backend"))
    images = {
        name: doc["spec"]["template"]["spec"]["containers"][0]["image"]
        for (kind, name), doc in objects.items()
        if kind == "Deployment"
    }
    assert images == {
        "runai-backend-backend": f"{REGISTRY}/backend:{VERSION}",
        "runai-backend-nginx-ingress-controller": f"{REGISTRY}/nginx-ingress-controller:{VERSION}",
    }
    ingress = objects[("Service", "runai-backend-ingress")]["spec"]
    assert ingress["externalIPs"] == ["10.10.0.2"]
    assert ingress["ports"] == [{"name": "https", "port": 443, "targetPort": 8443}]
    assert objects[("Secret", "runai-backend-tls")]["type"] == "kubernetes.io/tls"
    assert objects[("ConfigMap", "runai-backend-config")]["data"]["airgapped"] == "true"
    namespaced = [doc for (kind, _), doc in objects.items() if kind != "PersistentVolume"]
    assert all(doc["metadata"]["namespace"] == "runai-backend" for doc in namespaced)
    assert not [key for key in objects if key[0] in ("Role", "RoleBinding")]
    pod = objects[("Deployment", "runai-backend-backend")]["spec"]["template"]
    assert pod["spec"]["nodeSelector"] == {"node-role.kubernetes.io/runai-system": "true"}
    assert pod["spec"]["securityContext"]["runAsUser"] == 65534
    changed = {**BACKEND_VALUES, "tls": {"cert": "OTHER", "key": "KEY"}}
    rolled = _objects(_helm(deploy / f"runai-backend-{VERSION}.tgz", changed, "runai-backend"))
    rolled_pod = rolled[("Deployment", "runai-backend-backend")]["spec"]["template"]
    checksum = "checksum/tls"
    assert rolled_pod["metadata"]["annotations"][checksum] != pod["metadata"]["annotations"][checksum]


def test_backend_chart_runs_postgresql_on_a_claim_of_the_storage_class(deploy: Path) -> None:
    values = {**BACKEND_VALUES, "nfs": {"server": "", "path": ""}, "storageClass": "x"}
    objects = _objects(_helm(deploy / f"runai-backend-{VERSION}.tgz", values, "runai-backend"))
    assert not [key for key in objects if key[0] == "PersistentVolume"]
    statefulset = objects[("StatefulSet", "runai-backend-postgresql")]["spec"]
    assert statefulset["replicas"] == 1
    assert statefulset["serviceName"] == "runai-backend-postgresql"
    [claim] = statefulset["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == "data"
    assert claim["spec"]["storageClassName"] == "x"
    assert claim["spec"]["resources"]["requests"]["storage"] == "2Gi"
    pod = statefulset["template"]["spec"]
    [container] = pod["containers"]
    assert container["image"] == f"{REGISTRY}/postgresql:{VERSION}"
    assert {"name": "data", "mountPath": "/var/lib/postgresql/data"} in container["volumeMounts"]
    assert pod["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": 999,
        "runAsGroup": 999,
        "fsGroup": 999,
        "fsGroupChangePolicy": "OnRootMismatch",
    }
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    service = objects[("Service", "runai-backend-postgresql")]["spec"]
    assert service["ports"] == [{"name": "postgresql", "port": 5432, "targetPort": 5432}]
    # A random password when none is given (helm template cannot read the installed Secret back).
    password = base64.b64decode(objects[("Secret", "runai-backend-postgresql")]["data"]["password"]).decode()
    assert len(password) == 32 and password.isalnum()
    secret_ref = {"secretKeyRef": {"name": "runai-backend-postgresql", "key": "password"}}
    database_env = {env["name"]: env.get("value", env.get("valueFrom")) for env in container["env"]}
    assert database_env == {
        "POSTGRES_USER": "runai", "POSTGRES_DB": "runai", "POSTGRES_PASSWORD": secret_ref,
        "PGDATA": "/var/lib/postgresql/data/pgdata",
    }  # fmt: skip
    backend = objects[("Deployment", "runai-backend-backend")]["spec"]["template"]["spec"]["containers"][0]
    backend_env = {env["name"]: env.get("value", env.get("valueFrom")) for env in backend["env"]}
    assert backend_env == {
        "PGHOST": "runai-backend-postgresql.runai-backend.svc", "PGPORT": "5432", "PGDATABASE": "runai",
        "PGUSER": "runai", "PGPASSWORD": secret_ref, "PGSSLMODE": "disable", "PGCONNECT_TIMEOUT": "5",
    }  # fmt: skip
    assert backend["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert backend["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert not [arg for arg in backend["args"] if "secret" in arg or "namespace" in arg]
    given = {**values, "postgresql": {"password": "Given-pw-1", "storage": "5Gi"}}
    rendered = _objects(_helm(deploy / f"runai-backend-{VERSION}.tgz", given, "runai-backend"))
    secret = rendered[("Secret", "runai-backend-postgresql")]["data"]["password"]
    assert base64.b64decode(secret) == b"Given-pw-1"
    claim = rendered[("StatefulSet", "runai-backend-postgresql")]["spec"]["volumeClaimTemplates"][0]
    assert claim["spec"]["resources"]["requests"]["storage"] == "5Gi"


def test_backend_chart_puts_postgresql_on_the_nfs_export(deploy: Path) -> None:
    objects = _objects(_helm(deploy / f"runai-backend-{VERSION}.tgz", BACKEND_VALUES, "runai-backend"))
    volume = objects[("PersistentVolume", "runai-backend-postgresql-runai-backend")]["spec"]
    assert volume["nfs"] == {"server": "10.10.0.9", "path": "/export/runai"}
    assert volume["claimRef"] == {"namespace": "runai-backend", "name": "data-runai-backend-postgresql-0"}
    assert (volume["storageClassName"], volume["persistentVolumeReclaimPolicy"]) == ("", "Retain")
    [claim] = objects[("StatefulSet", "runai-backend-postgresql")]["spec"]["volumeClaimTemplates"]
    assert claim["spec"]["storageClassName"] == ""
    assert claim["spec"]["volumeName"] == "runai-backend-postgresql-runai-backend"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"global": {"image": {"registry": REGISTRY}}}, "global.domain is required"),
        ({"postgresql": {"storage": "2G"}}, 'postgresql.storage "2G" must be a size like 2Gi'),
        ({"postgresql": {"user": "Run-ai"}}, 'postgresql.user "Run-ai" must be a lower-case SQL name'),
        ({"nfs": {"server": "", "path": ""}}, "storage is required: set nfs.server and nfs.path, or storage"),
        ({"externalIPs": []}, "externalIPs is required"),
        ({"tls": {"cert": "", "key": "KEY"}}, "tls.cert is required"),
    ],
)
def test_backend_chart_refuses_missing_values(deploy: Path, change: dict, message: str) -> None:
    result = _helm(deploy / f"runai-backend-{VERSION}.tgz", {**BACKEND_VALUES, **change}, "runai-backend")
    assert result.returncode != 0
    assert message in result.stderr


CLUSTER_VALUES = {
    "global": {"image": {"registry": REGISTRY}},
    "controlPlane": {"url": "https://runai.lab.local", "caCert": "CA", "ip": "10.10.0.2"},
    "cluster": {"uid": "8a7c3b1e-0000-4000-8000-000000000001", "url": "https://cluster.lab.local"},
}


def test_cluster_chart_renders_the_agent_from_the_given_registry(deploy: Path) -> None:
    objects = _objects(_helm(deploy / f"runai-cluster-{VERSION}.tgz", CLUSTER_VALUES, "runai"))
    pod = objects[("Deployment", "runai-agent")]["spec"]["template"]["spec"]
    assert pod["containers"][0]["image"] == f"{REGISTRY}/agent:{VERSION}"
    assert "--backend-url=https://runai.lab.local" in pod["containers"][0]["args"]
    assert pod["hostAliases"] == [{"ip": "10.10.0.2", "hostnames": ["runai.lab.local"]}]
    assert objects[("ConfigMap", "runai-cluster-ca")]["data"]["ca.crt"] == "CA"
    assert ("Service", "runai-agent") in objects


def test_cluster_chart_refuses_a_missing_control_plane_url(deploy: Path) -> None:
    values = {**CLUSTER_VALUES, "controlPlane": {"caCert": "CA"}}
    result = _helm(deploy / f"runai-cluster-{VERSION}.tgz", values, "runai")
    assert result.returncode != 0
    assert "controlPlane.url is required" in result.stderr


# --- prepare_installation.sh, with a docker that records its calls ---------------------------------------


def test_prepare_installation_loads_tags_and_pushes_every_image(deploy: Path, tmp_path: Path) -> None:
    calls = tmp_path / "calls"
    fake = tmp_path / "bin" / "docker"
    fake.parent.mkdir()
    fake.write_text(f'#!/bin/sh\necho "$*" >> {calls}\n')
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{fake.parent}:{os.environ['PATH']}", "REGISTRY_URL": "registry.lab:5000"}
    script = str(deploy / "prepare_installation.sh")
    subprocess.run([script], env=env, capture_output=True, text=True, check=True)
    lines = calls.read_text().splitlines()
    assert lines[0] == f"load -i {deploy}/images.tar"
    backend = f"run-ai-prod/backend:{VERSION}"
    assert f"tag gcr.io/{backend} registry.lab:5000/{backend}" in lines
    assert f"push registry.lab:5000/run-ai-prod/agent:{VERSION}" in lines
    assert len(lines) == 1 + 2 * len(IMAGES)
    for bad in ({"REGISTRY_URL": "https://registry.lab:5000"}, {"REGISTRY_URL": ""}):
        refused = subprocess.run([script], env={**env, **bad}, capture_output=True, text=True, check=False)
        assert refused.returncode == 2
        assert "REGISTRY_URL" in refused.stderr


# --- a throwaway PostgreSQL, Debian's server programs ------------------------------------------------------


def _server_programs() -> Path | None:
    """Debian's newest /usr/lib/postgresql/N/bin (initdb, pg_ctl, psql, pg_dump), or None."""
    found = glob.glob("/usr/lib/postgresql/*/bin/initdb")
    found.sort(key=lambda path: int(Path(path).parent.parent.name))
    return Path(found[-1]).parent if found else None


@dataclass(frozen=True)
class PostgreSQL:
    """A running throwaway cluster: role runai_test (CREATEDB) with PASSWORD over TCP on 127.0.0.1:PORT."""

    bindir: Path
    port: int
    password: str

    def psql(self, database: str, sql: str) -> str:
        result = subprocess.run(
            [str(self.bindir / "psql"), "--no-psqlrc", "-X", "-At", "-v", "ON_ERROR_STOP=1", "-c", sql],
            env={**os.environ, **self.libpq(database)},
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        return result.stdout

    def libpq(self, database: str) -> dict[str, str]:
        return {
            "PGHOST": "127.0.0.1", "PGPORT": str(self.port), "PGUSER": "runai_test",
            "PGPASSWORD": self.password, "PGDATABASE": database, "PGSSLMODE": "disable",
        }  # fmt: skip


@dataclass(frozen=True)
class Database:
    """One test's database: its name and the backend's environment (libpq's variables) to reach it."""

    server: PostgreSQL
    name: str

    @property
    def env(self) -> dict[str, str]:
        return self.server.libpq(self.name)

    def query(self, sql: str) -> str:
        return self.server.psql(self.name, sql)


@pytest.fixture(scope="module")
def postgresql() -> Iterator[PostgreSQL]:
    """initdb and pg_ctl in a temporary directory (as user postgres when this runs as root: the server
    refuses root), a free port of 127.0.0.1, scram-sha-256 over TCP; removed afterwards."""
    bindir = _server_programs()
    if bindir is None:
        pytest.skip("no PostgreSQL server programs: run `make setup` (Debian's postgresql-15)")
    as_postgres: list[str] = []
    directory = Path(tempfile.mkdtemp(prefix="appliance-test-pg-"))
    if os.geteuid() == 0:
        account = pwd.getpwnam("postgres")
        directory.chmod(0o755)
        os.chown(directory, account.pw_uid, account.pw_gid)
        as_postgres = ["runuser", "-u", "postgres", "--"]
    data, port, password = directory / "data", _free_port(), secrets.token_urlsafe(12)

    def run(program: str, *args: str) -> None:
        result = subprocess.run(
            [*as_postgres, str(bindir / program), *args], capture_output=True, text=True, check=False
        )
        assert result.returncode == 0, f"{program}: {result.stdout}{result.stderr}"

    try:
        run("initdb", f"--pgdata={data}", "--username=postgres", "--auth-local=trust",
            "--auth-host=scram-sha-256", "--encoding=UTF8", "--locale=C", "--no-sync")  # fmt: skip
        options = f"-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories={directory}"
        run(
            "pg_ctl",
            f"--pgdata={data}",
            f"--log={directory}/server.log",
            "--wait",
            f"--options={options} -c fsync=off",
            "start",
        )
        try:
            run("psql", "--no-psqlrc", f"--host={directory}", f"--port={port}", "--username=postgres",
                "--dbname=postgres", "-v", "ON_ERROR_STOP=1",
                f"--command=CREATE ROLE runai_test LOGIN CREATEDB PASSWORD '{password}'")  # fmt: skip
            yield PostgreSQL(bindir, port, password)
        finally:
            run("pg_ctl", f"--pgdata={data}", "--mode=immediate", "--wait", "stop")
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def database(postgresql: PostgreSQL) -> Iterator[Database]:
    name = f"test_{secrets.token_hex(6)}"
    postgresql.psql("postgres", f"CREATE DATABASE {name}")
    yield Database(postgresql, name)
    postgresql.psql("postgres", f"DROP DATABASE {name} WITH (FORCE)")


# --- the backend, proxy and agent, run here against that PostgreSQL --------------------------------------


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for localhost and 127.0.0.1 (its own CA), and its key."""
    directory = tmp_path_factory.mktemp("tls")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = directory / "tls.crt", directory / "tls.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_file, key_file


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Process:
    """runai-synthetic SUBCOMMAND running in the background, its log in a file."""

    def __init__(self, binary: Path, log: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.log = log
        with open(log, "ab") as output:
            self.process = subprocess.Popen(
                [str(binary), *args], stdout=output, stderr=output, env={**os.environ, **(env or {})}
            )

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


def _request(
    url: str, certificate: Path, data: bytes | None = None, method: str | None = None, token: str = ""
) -> tuple[int, bytes]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    if data is not None and data.startswith(b"{"):
        headers["Content-Type"] = "application/json"
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    context = ssl.create_default_context(cafile=str(certificate))
    try:
        with urllib.request.urlopen(request, context=context, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def _wait_for(url: str, certificate: Path | None, process: Process, status: int = 200) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert process.process.poll() is None, process.log.read_text()
        try:
            if certificate is None:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == status:
                        return
            elif _request(url, certificate)[0] == status:
                return
        except (OSError, urllib.error.URLError):
            pass
        time.sleep(0.2)
    raise AssertionError(f"{url} did not answer {status}: {process.log.read_text()}")


@pytest.fixture
def server_binary(binary: Path, tmp_path: Path) -> Path:
    """The same binary under its image's name (called `runai`, it is the CLI)."""
    path = tmp_path / "runai-synthetic"
    shutil.copy(binary, path)
    return path


def test_backend_login_reset_password_projects_and_restart(
    server_binary: Path, certificate: tuple[Path, Path], database: Database, tmp_path: Path
) -> None:
    cert, key = certificate
    port = _free_port()
    base = f"https://127.0.0.1:{port}"
    arguments = [
        "backend", f"--listen=127.0.0.1:{port}", f"--tls-cert={cert}", f"--tls-key={key}",
        f"--version={VERSION}",
    ]  # fmt: skip
    log = tmp_path / "backend.log"
    backend = Process(server_binary, log, *arguments, env=database.env)
    try:
        _wait_for(f"{base}/readyz", cert, backend)
        status, page = _request(f"{base}/", cert)
        assert status == 200
        assert f"Run:ai control plane (synthetic) {VERSION}".encode() in page
        assert json.loads(_request(f"{base}/version", cert)[1]) == {"version": VERSION}
        assert database.query("SELECT version FROM schema_version") == "1\n"

        token = _login(base, cert, "password")
        users_url = f"{base}/auth/admin/realms/runai/users?username=test@run.ai"
        assert _request(users_url, cert)[0] == 401
        status, body = _request(users_url, cert, token=token)
        assert status == 200
        [admin] = json.loads(body)
        assert (admin["username"], admin["enabled"]) == ("test@run.ai", True)
        unknown = _request(f"{base}/auth/admin/realms/runai/users?username=nobody", cert, token=token)
        assert json.loads(unknown[1]) == []

        reset_url = f"{base}/auth/admin/realms/runai/users/{admin['id']}/reset-password"
        credential = json.dumps({"type": "password", "value": "S3cret-new", "temporary": False}).encode()
        assert _request(reset_url, cert, credential, "PUT")[0] == 401
        assert _request(reset_url, cert, credential, "PUT", token=token) == (204, b"")
        stored = database.query("SELECT password_hash FROM users WHERE username = 'test@run.ai'")
        assert stored.startswith("pbkdf2-sha256$") and "S3cret-new" not in stored

        assert _login_status(base, cert, "password") == 401
        token = _login(base, cert, "S3cret-new")

        projects = f"{base}/v1/k8s/projects"
        team = json.dumps({"name": "team-a", "gpus": 2}).encode()
        assert _request(projects, cert, team, "POST")[0] == 401
        assert _request(projects, cert, team, "POST", token=token)[0] == 201
        assert _request(projects, cert, team, "POST", token=token)[0] == 409
        bad = json.dumps({"name": "Team_A", "gpus": 1}).encode()
        assert _request(projects, cert, bad, "POST", token=token)[0] == 400
        assert database.query("SELECT name, gpus, created_by FROM projects") == "team-a|2|test@run.ai\n"

        backend.stop()
        backend = Process(server_binary, log, *arguments, env=database.env)
        _wait_for(f"{base}/readyz", cert, backend)
        assert _login_status(base, cert, "password") == 401
        token = _login(base, cert, "S3cret-new")
        status, body = _request(f"{projects}/team-a", cert, token=token)
        assert (status, json.loads(body)["gpus"]) == (200, 2)
        assert _request(f"{projects}/team-a", cert, method="DELETE", token=token) == (204, b"")
        assert json.loads(_request(projects, cert, token=token)[1]) == []
    finally:
        backend.stop()
    logged = log.read_text()
    assert "POST /auth/realms/runai/protocol/openid-connect/token 401" in logged
    assert "S3cret-new" not in logged
    assert token not in logged
    assert database.env["PGPASSWORD"] not in logged


def test_backend_is_alive_but_not_ready_without_its_database(
    server_binary: Path, certificate: tuple[Path, Path], tmp_path: Path
) -> None:
    cert, key = certificate
    port = _free_port()
    nowhere = {"PGHOST": "127.0.0.1", "PGPORT": str(_free_port()), "PGUSER": "runai", "PGPASSWORD": "x",
               "PGDATABASE": "runai", "PGSSLMODE": "disable", "PGCONNECT_TIMEOUT": "2"}  # fmt: skip
    backend = Process(
        server_binary, tmp_path / "backend.log", "backend", f"--listen=127.0.0.1:{port}",
        f"--tls-cert={cert}", f"--tls-key={key}", "--database-retry=200ms", env=nowhere,
    )  # fmt: skip
    try:
        _wait_for(f"https://127.0.0.1:{port}/healthz", cert, backend)
        assert _request(f"https://127.0.0.1:{port}/readyz", cert)[0] == 503
        assert _token_request(f"https://127.0.0.1:{port}", cert, "password")[0] == 503
    finally:
        backend.stop()
    assert "database not ready, retrying every 200ms" in (tmp_path / "backend.log").read_text()


def _login_status(base: str, cert: Path, password: str) -> int:
    return _token_request(base, cert, password)[0]


def _login(base: str, cert: Path, password: str) -> str:
    status, body = _token_request(base, cert, password)
    assert status == 200, body
    answer = json.loads(body)
    assert answer["token_type"] == "Bearer"
    assert answer["expires_in"] == 300
    return answer["access_token"]


def _token_request(base: str, cert: Path, password: str) -> tuple[int, bytes]:
    form = {"grant_type": "password", "client_id": "runai", "username": "test@run.ai", "password": password}
    url = f"{base}/auth/realms/runai/protocol/openid-connect/token"
    status, body = _request(url, cert, urllib.parse.urlencode(form).encode())
    if status == 401:
        assert json.loads(body) == {"error": "invalid_grant", "error_description": "Invalid user credentials"}
    return status, body


def test_agent_is_ready_through_the_proxy_and_not_without_it(
    server_binary: Path, certificate: tuple[Path, Path], database: Database, tmp_path: Path
) -> None:
    cert, key = certificate
    ports = {name: _free_port() for name in ("backend", "proxy", "agent")}
    tls = [f"--tls-cert={cert}", f"--tls-key={key}"]
    backend = Process(
        server_binary, tmp_path / "backend.log", "backend", f"--listen=127.0.0.1:{ports['backend']}", *tls,
        f"--version={VERSION}", env=database.env,
    )  # fmt: skip
    proxy = Process(
        server_binary, tmp_path / "proxy.log", "proxy", f"--listen=127.0.0.1:{ports['proxy']}", *tls,
        f"--upstream=https://127.0.0.1:{ports['backend']}",
    )  # fmt: skip
    agent = Process(
        server_binary, tmp_path / "agent.log", "agent", f"--backend-url=https://localhost:{ports['proxy']}",
        f"--ca-file={cert}", "--cluster-uid=cluster-1", f"--listen=127.0.0.1:{ports['agent']}",
        "--interval=200ms",
    )  # fmt: skip
    try:
        _wait_for(f"https://127.0.0.1:{ports['proxy']}/healthz", cert, proxy)
        _wait_for(f"http://127.0.0.1:{ports['agent']}/readyz", None, agent)
        proxied = _request(f"https://127.0.0.1:{ports['proxy']}/version", cert)
        assert json.loads(proxied[1]) == {"version": VERSION}
        backend.stop()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and _status(f"http://127.0.0.1:{ports['agent']}/readyz") == 200:
            time.sleep(0.2)
        assert _status(f"http://127.0.0.1:{ports['agent']}/readyz") == 503
    finally:
        for process in (agent, proxy, backend):
            if process.process.poll() is None:
                process.stop()
    assert (
        f"connected to control plane https://localhost:{ports['proxy']} (version {VERSION})"
        in (tmp_path / "agent.log").read_text()
    )


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def test_go_tests_pass(postgresql: PostgreSQL) -> None:
    go = shutil.which("go") or "/usr/local/go/bin/go"
    if not Path(go).exists():
        pytest.skip("no Go toolchain")
    env = {
        **runai_tarball.go_env(),
        "RUNAI_TEST_DATABASE": f"host=127.0.0.1 port={postgresql.port} user=runai_test "
        f"password={postgresql.password} sslmode=disable",
    }
    for command in (["vet", "./..."], ["test", "-count=1", "./..."]):
        result = subprocess.run(
            [go, *command],
            cwd=runai_tarball.SOURCES / "synthetic",
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == 0, result.stdout + result.stderr
    assert not (runai_tarball.SOURCES / "synthetic" / "vendor").exists()


def _admin_password(port: int, ca_file: Path, password: str, *extra: str) -> tuple[dict, str]:
    """plugins/modules/runai_admin_password.py, run by ansible on this machine against the backend."""
    args = {
        "url": f"https://localhost:{port}",
        "address": "127.0.0.1",
        "ca_file": str(ca_file),
        "password": password,
        "timeout": 15,
    }
    env = {**os.environ, "ANSIBLE_LOAD_CALLBACK_PLUGINS": "1", "ANSIBLE_STDOUT_CALLBACK": "json"}
    ansible = Path(sys.executable).parent / "ansible"
    module = "appliance.runai.runai_admin_password"
    command = [str(ansible), "localhost", "-c", "local", "-m", module, "-a", json.dumps(args)]
    result = subprocess.run(
        [*command, *extra],
        cwd=Path(__file__).resolve().parents[2], env=env, capture_output=True, text=True, check=False,
    )  # fmt: skip
    return json.loads(result.stdout)["plays"][0]["tasks"][0]["hosts"]["localhost"], result.stdout


def test_the_admin_password_module_replaces_the_default_password_once(
    server_binary: Path, certificate: tuple[Path, Path], database: Database, tmp_path: Path
) -> None:
    """Module runai_admin_password against the synthetic backend: --check reports the change and makes
    none; the run sets the password (the default then refused); a second run changes nothing; a password
    that is neither the current nor the default one, or a CA that did not sign the certificate, fails."""
    cert, key = certificate
    port = _free_port()
    base = f"https://127.0.0.1:{port}"
    backend = Process(
        server_binary, tmp_path / "backend.log", "backend", f"--listen=127.0.0.1:{port}",
        f"--tls-cert={cert}", f"--tls-key={key}", f"--version={VERSION}", env=database.env,
    )  # fmt: skip
    try:
        _wait_for(f"{base}/readyz", cert, backend)
        checked, _ = _admin_password(port, cert, "Vault-pw-1", "--check")
        assert checked["changed"] is True and not checked.get("failed"), checked
        assert _login_status(base, cert, "password") == 200
        done, output = _admin_password(port, cert, "Vault-pw-1")
        assert done["changed"] is True and not done.get("failed"), done
        assert "Vault-pw-1" not in output
        assert _login_status(base, cert, "password") == 401
        _login(base, cert, "Vault-pw-1")
        again, _ = _admin_password(port, cert, "Vault-pw-1")
        assert again["changed"] is False and not again.get("failed"), again
        neither, _ = _admin_password(port, cert, "Other-pw-2")
        assert neither.get("failed") is True and "neither with the given password" in neither["msg"]
        other_ca = tmp_path / "other-ca.crt"
        other_ca.write_bytes(
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "other")]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "other")]))
            .public_key((other := ec.generate_private_key(ec.SECP256R1())).public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=5))
            .not_valid_after(datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(other, hashes.SHA256())
            .public_bytes(serialization.Encoding.PEM)
        )
        untrusted, _ = _admin_password(port, other_ca, "Vault-pw-1")
        assert untrusted.get("failed") is True and "does not verify" in untrusted["msg"], untrusted
    finally:
        backend.stop()


# --- the postgresql image: Debian's server in a container, a volume, pg_dump and pg_restore -------------


class Container:
    """The tarball's postgresql image run as the chart runs it (uid 999, read-only root, the socket and
    /tmp on tmpfs), on a named volume, with 5432 published on a free port of 127.0.0.1."""

    def __init__(self, image: str, volume: str, password: str) -> None:
        self.port = _free_port()
        self.id = docker.docker(
            "run", "--detach", "--user=999:999", "--read-only", "--tmpfs=/run/postgresql:uid=999,gid=999",
            "--tmpfs=/tmp", f"--volume={volume}:/var/lib/postgresql/data",
            f"--publish=127.0.0.1:{self.port}:5432", f"--env=POSTGRES_PASSWORD={password}", image,
        ).stdout.strip()  # fmt: skip
        deadline = time.monotonic() + 60
        while docker.docker("exec", self.id, "pg_isready", "--host=127.0.0.1", check=False).returncode != 0:
            logs = docker.docker("logs", self.id, check=False)
            assert time.monotonic() < deadline, logs.stdout + logs.stderr
            time.sleep(0.5)

    def exec(self, *command: str, stdin: bytes | None = None) -> bytes:
        """COMMAND in the container as its user postgres (the socket's peer authentication: no password)."""
        result = subprocess.run(
            [docker.binary(), "exec", "-i", self.id, *command], input=stdin, capture_output=True, check=False
        )
        assert result.returncode == 0, result.stderr.decode()
        return result.stdout

    def remove(self) -> None:
        docker.docker("rm", "--force", "--volumes", self.id, check=False)


def test_postgresql_image_dumps_restores_and_keeps_its_data_on_a_volume(
    deploy: Path, server_binary: Path, certificate: tuple[Path, Path], tmp_path: Path
) -> None:
    """The image saved in images.tar: the backend's data in it over TCP with the role's password, dumped
    with its pg_dump, deleted, restored with its pg_restore, and still there after a new container on
    the same volume; a wrong password is refused."""
    image = runai_tarball.postgresql_image()
    with tarfile.open(deploy / "images.tar") as archive:
        manifest = json.load(archive.extractfile("manifest.json"))
    [saved] = [
        entry for entry in manifest if entry["RepoTags"] == [f"gcr.io/run-ai-prod/postgresql:{VERSION}"]
    ]
    assert saved["Config"].removesuffix(".json") == _image_id(image).removeprefix("sha256:")
    volume = docker.docker("volume", "create").stdout.strip()
    password = secrets.token_urlsafe(12)
    cert, key = certificate
    container = backend = None
    try:
        container = Container(image, volume, password)
        found = container.exec("sh", "-c", "command -v pg_dump; command -v pg_restore; command -v psql")
        assert found.decode().split() == [
            f"/usr/lib/postgresql/15/bin/{p}" for p in ("pg_dump", "pg_restore", "psql")
        ]
        env = {"PGHOST": "127.0.0.1", "PGPORT": str(container.port), "PGUSER": "runai",
               "PGPASSWORD": password, "PGDATABASE": "runai", "PGSSLMODE": "disable"}  # fmt: skip
        port = _free_port()
        base = f"https://127.0.0.1:{port}"
        backend = Process(
            server_binary, tmp_path / "backend.log", "backend", f"--listen=127.0.0.1:{port}",
            f"--tls-cert={cert}", f"--tls-key={key}", env=env,
        )  # fmt: skip
        _wait_for(f"{base}/readyz", cert, backend)
        token = _login(base, cert, "password")
        project = json.dumps({"name": "kept", "gpus": 4}).encode()
        assert _request(f"{base}/v1/k8s/projects", cert, project, "POST", token=token)[0] == 201

        dump = container.exec("pg_dump", "--username=postgres", "--format=custom", "runai")
        assert dump.startswith(b"PGDMP")
        assert _request(f"{base}/v1/k8s/projects/kept", cert, method="DELETE", token=token)[0] == 204
        container.exec(
            "pg_restore", "--username=postgres", "--dbname=runai", "--clean", "--if-exists",
            "--single-transaction", stdin=dump,
        )  # fmt: skip
        assert _request(f"{base}/v1/k8s/projects/kept", cert, token=token)[0] == 200

        container.remove()  # the container, not the named volume
        container = Container(image, volume, password)
        owner = container.exec("psql", "--username=postgres", "--dbname=runai", "-Atc",
                               "SELECT tableowner FROM pg_tables WHERE tablename = 'projects'")  # fmt: skip
        assert owner == b"runai\n"
        env["PGPORT"] = str(container.port)
        backend.stop()
        backend = Process(
            server_binary, tmp_path / "backend.log", "backend", f"--listen=127.0.0.1:{port}",
            f"--tls-cert={cert}", f"--tls-key={key}", env=env,
        )  # fmt: skip
        _wait_for(f"{base}/readyz", cert, backend)
        token = _login(base, cert, "password")
        status, body = _request(f"{base}/v1/k8s/projects", cert, token=token)
        assert (status, [p["name"] for p in json.loads(body)]) == (200, ["kept"])
        refused = _psql_login(env, "wrong")
        assert refused.returncode != 0 and "password authentication failed" in refused.stderr
    finally:
        if backend is not None:
            backend.stop()
        if container is not None:
            container.remove()
        docker.docker("volume", "rm", volume, check=False)


def _psql_login(env: dict[str, str], password: str) -> subprocess.CompletedProcess[str]:
    """A login over TCP (scram-sha-256) with PASSWORD through the published port, as the backend connects,
    by the image's own psql."""
    psql = [
        docker.binary(),
        "run",
        "--rm",
        "--network=host",
        "--entrypoint=psql",
        f"--env=PGPASSWORD={password}",
    ]
    target = [f"--host={env['PGHOST']}", f"--port={env['PGPORT']}", "--username=runai", "--dbname=runai"]
    return subprocess.run(
        [*psql, runai_tarball.postgresql_image(), "-X", *target, "-c", "SELECT 1"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip


def _image_id(reference: str) -> str:
    return docker.docker("image", "inspect", "--format", "{{.Id}}", reference).stdout.strip()
