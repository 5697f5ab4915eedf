"""The synthetic Run:ai air-gapped tarball: its layout, images, charts and CLI, the backend's login, and
module runai_admin_password against that backend.

Builds with go and docker (about a minute the first time, then from the cache); skipped without them.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import tarfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

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
]


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
    with open(sources / "charts" / "runai-cluster" / "values.yaml", "a") as values:
        values.write("# changed\n")
    assert runai_tarball.source_digest(sources) != before


def test_images_tar_holds_one_image_under_the_three_references(deploy: Path) -> None:
    with tarfile.open(deploy / "images.tar") as archive:
        manifest = json.load(archive.extractfile("manifest.json"))
        assert len(manifest) == 1
        assert sorted(manifest[0]["RepoTags"]) == sorted(IMAGES)
        config = json.load(archive.extractfile(manifest[0]["Config"]))["config"]
    assert config["User"] == "65534"
    assert config["Entrypoint"] == ["/runai-synthetic"]


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
    assert all(doc["metadata"]["namespace"] == "runai-backend" for doc in objects.values())
    pod = objects[("Deployment", "runai-backend-backend")]["spec"]["template"]
    assert pod["spec"]["nodeSelector"] == {"node-role.kubernetes.io/runai-system": "true"}
    assert pod["spec"]["securityContext"]["runAsUser"] == 65534
    changed = {**BACKEND_VALUES, "tls": {"cert": "OTHER", "key": "KEY"}}
    rolled = _objects(_helm(deploy / f"runai-backend-{VERSION}.tgz", changed, "runai-backend"))
    rolled_pod = rolled[("Deployment", "runai-backend-backend")]["spec"]["template"]
    checksum = "checksum/tls"
    assert rolled_pod["metadata"]["annotations"][checksum] != pod["metadata"]["annotations"][checksum]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"global": {"image": {"registry": REGISTRY}}}, "global.domain is required"),
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


# --- the backend, proxy and agent, run here against a fake Kubernetes API --------------------------------


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


class FakeKubernetes(BaseHTTPRequestHandler):
    """The secrets of namespace runai-backend, as the API server serves them (GET, POST, PUT)."""

    token = "service-account-token"
    secrets: ClassVar[dict[str, dict]] = {}
    prefix = "/api/v1/namespaces/runai-backend/secrets"

    def _reply(self, status: int, body: dict | None = None) -> None:
        data = json.dumps(body or {"kind": "Status", "code": status}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _authorized(self) -> bool:
        if self.headers.get("Authorization") != f"Bearer {self.token}":
            self._reply(401)
            return False
        return True

    def _body(self) -> dict:
        return json.loads(self.rfile.read(int(self.headers["Content-Length"])))

    def do_GET(self) -> None:
        if self._authorized():
            name = self.path.removeprefix(self.prefix + "/")
            found = self.secrets.get(name)
            self._reply(200, found) if found else self._reply(404)

    def do_POST(self) -> None:
        if self._authorized() and self.path == self.prefix:
            body = self._body()
            self.secrets[body["metadata"]["name"]] = body
            self._reply(201, body)

    def do_PUT(self) -> None:
        if self._authorized():
            name = self.path.removeprefix(self.prefix + "/")
            if name not in self.secrets:
                self._reply(404)
                return
            self.secrets[name] = self._body()
            self._reply(200, self.secrets[name])

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def kubernetes(certificate: tuple[Path, Path]) -> Iterator[str]:
    FakeKubernetes.secrets = {}
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeKubernetes)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*certificate)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"https://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Process:
    """runai-synthetic SUBCOMMAND running in the background, its log in a file."""

    def __init__(self, binary: Path, log: Path, *args: str) -> None:
        self.log = log
        with open(log, "ab") as output:
            self.process = subprocess.Popen([str(binary), *args], stdout=output, stderr=output)

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
    deadline = time.monotonic() + 15
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


def test_backend_login_reset_password_and_restart(
    server_binary: Path, certificate: tuple[Path, Path], kubernetes: str, tmp_path: Path
) -> None:
    cert, key = certificate
    token_file = tmp_path / "token"
    token_file.write_text(FakeKubernetes.token)
    port = _free_port()
    base = f"https://127.0.0.1:{port}"
    arguments = [
        "backend", f"--listen=127.0.0.1:{port}", f"--tls-cert={cert}", f"--tls-key={key}",
        "--namespace=runai-backend", "--admin-secret=runai-backend-admin", f"--version={VERSION}",
        f"--kube-api={kubernetes}", f"--kube-token-file={token_file}", f"--kube-ca-file={cert}",
    ]  # fmt: skip
    log = tmp_path / "backend.log"
    backend = Process(server_binary, log, *arguments)
    try:
        _wait_for(f"{base}/healthz", cert, backend)
        status, page = _request(f"{base}/", cert)
        assert status == 200
        assert f"Run:ai control plane (synthetic) {VERSION}".encode() in page
        assert json.loads(_request(f"{base}/version", cert)[1]) == {"version": VERSION}

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
        stored = FakeKubernetes.secrets["runai-backend-admin"]["data"]
        assert set(stored) == {"salt", "password-sha256"}

        assert _login_status(base, cert, "password") == 401
        _login(base, cert, "S3cret-new")

        backend.stop()
        backend = Process(server_binary, log, *arguments)
        _wait_for(f"{base}/healthz", cert, backend)
        assert _login_status(base, cert, "password") == 401
        _login(base, cert, "S3cret-new")
    finally:
        backend.stop()
    logged = log.read_text()
    assert "POST /auth/realms/runai/protocol/openid-connect/token 401" in logged
    assert "S3cret-new" not in logged
    assert token not in logged


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
    server_binary: Path, certificate: tuple[Path, Path], kubernetes: str, tmp_path: Path
) -> None:
    cert, key = certificate
    ports = {name: _free_port() for name in ("backend", "proxy", "agent")}
    tls = [f"--tls-cert={cert}", f"--tls-key={key}"]
    backend = Process(
        server_binary, tmp_path / "backend.log", "backend", f"--listen=127.0.0.1:{ports['backend']}", *tls,
        f"--version={VERSION}", f"--kube-api={kubernetes}", "--kube-token-file=", f"--kube-ca-file={cert}",
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


def test_go_tests_pass(tmp_path: Path) -> None:
    go = shutil.which("go") or "/usr/local/go/bin/go"
    if not Path(go).exists():
        pytest.skip("no Go toolchain")
    env = {
        **os.environ,
        "CGO_ENABLED": "0",
        "GOTOOLCHAIN": "local",
        "GOFLAGS": "-trimpath",
        "GOPROXY": "off",
        "GOCACHE": str(runai_tarball.cache_root() / "gocache"),
    }
    for command in (["vet", "./..."], ["test", "./..."]):
        result = subprocess.run(
            [go, *command],
            cwd=runai_tarball.SOURCES / "synthetic",
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == 0, result.stdout + result.stderr


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
    command = [str(ansible), "localhost", "-c", "local", "-m", "runai_admin_password", "-a", json.dumps(args)]
    result = subprocess.run(
        [*command, *extra],
        cwd=Path(__file__).resolve().parents[2], env=env, capture_output=True, text=True, check=False,
    )  # fmt: skip
    return json.loads(result.stdout)["plays"][0]["tasks"][0]["hosts"]["localhost"], result.stdout


def test_the_admin_password_module_replaces_the_default_password_once(
    server_binary: Path, certificate: tuple[Path, Path], kubernetes: str, tmp_path: Path
) -> None:
    """Module runai_admin_password against the synthetic backend: --check reports the change and makes
    none; the run sets the password (the default then refused); a second run changes nothing; a password
    that is neither the current nor the default one, or a CA that did not sign the certificate, fails."""
    cert, key = certificate
    token_file = tmp_path / "token"
    token_file.write_text(FakeKubernetes.token)
    port = _free_port()
    base = f"https://127.0.0.1:{port}"
    backend = Process(
        server_binary, tmp_path / "backend.log", "backend", f"--listen=127.0.0.1:{port}",
        f"--tls-cert={cert}", f"--tls-key={key}", "--namespace=runai-backend",
        "--admin-secret=runai-backend-admin", f"--version={VERSION}", f"--kube-api={kubernetes}",
        f"--kube-token-file={token_file}", f"--kube-ca-file={cert}",
    )  # fmt: skip
    try:
        _wait_for(f"{base}/healthz", cert, backend)
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
