"""appliance.health.kube.Client follows credentials that rotate under it (issue 21): the kubelet's client
certificate swapped behind kubelet-client-current.pem, and the controller's short-lived token file. Against
a real TLS server on the loopback that knows only the newest credential, as the API server refuses an
expired certificate or token with 401."""

from __future__ import annotations

import datetime as dt
import http.server
import ipaddress
import json
import ssl
import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from appliance.health.__main__ import main as gpu_health_main
from appliance.health.kube import Client, KubeError

NOW = dt.datetime.now(dt.UTC)


def _key():
    return ec.generate_private_key(ec.SECP256R1())


def _pem(certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.PEM)


def _key_pem(key) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _issue(name: str, key, ca_name, ca_key, serial: int, server: bool = False):
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(NOW - dt.timedelta(hours=1))
        .not_valid_after(NOW + dt.timedelta(hours=1))
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False
        )
    return builder.sign(ca_key, hashes.SHA256())


class ApiServer:
    """Answers GET /api/v1/nodes/NAME with 200 for the credential it currently accepts, else 401."""

    def __init__(self, directory: Path) -> None:
        self.ca_key = _key()
        self.ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kubernetes")])
        ca = (
            x509.CertificateBuilder()
            .subject_name(self.ca_name)
            .issuer_name(self.ca_name)
            .public_key(self.ca_key.public_key())
            .serial_number(1)
            .not_valid_before(NOW - dt.timedelta(hours=1))
            .not_valid_after(NOW + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.ca_key, hashes.SHA256())
        )
        self.ca_file = directory / "ca.crt"
        self.ca_file.write_bytes(_pem(ca))
        server_key = _key()
        (directory / "server.pem").write_bytes(
            _pem(_issue("kube-apiserver", server_key, self.ca_name, self.ca_key, 2, server=True))
            + _key_pem(server_key)
        )
        self.accepted_serial: int | None = None
        self.accepted_token: str | None = None
        self.seen: list[object] = []
        self.posted: list[tuple[str, dict]] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                peer = self.connection.getpeercert()
                serial = int(peer["serialNumber"], 16) if peer else None
                token = self.headers.get("Authorization", "").removeprefix("Bearer ") or None
                outer.seen.append(serial if serial is not None else token)
                ok = (serial is not None and serial == outer.accepted_serial) or (
                    token is not None and token == outer.accepted_token
                )
                body = json.dumps(
                    {"kind": "Node"} if ok else {"message": "Unauthorized", "reason": "Unauthorized"}
                )
                self.send_response(200 if ok else 401)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body.encode())

            def do_POST(self) -> None:  # TokenRequest, for an admin's certificate
                length = int(self.headers.get("Content-Length", 0))
                outer.posted.append((self.path, json.loads(self.rfile.read(length))))
                body = json.dumps(
                    {"status": {"token": "fresh-token", "expirationTimestamp": "2027-01-01T00:00:00Z"}}
                )
                self.send_response(201)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body.encode())

            def log_message(self, *args) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(directory / "server.pem")
        context.load_verify_locations(self.ca_file)
        context.verify_mode = ssl.CERT_OPTIONAL  # as the API server: a certificate, or a token
        self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        self.url = f"https://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def client_pem(self, serial: int) -> bytes:
        key = _key()
        return _pem(_issue("system:node:worker-1", key, self.ca_name, self.ca_key, serial)) + _key_pem(key)


@pytest.fixture
def api(tmp_path):
    server = ApiServer(tmp_path)
    yield server
    server.httpd.shutdown()


def _kubeconfig(path: Path, api: ApiServer, user: str) -> None:
    path.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: c\n"
        f"clusters:\n- name: k\n  cluster:\n    server: {api.url}\n    certificate-authority: {api.ca_file}\n"
        f"users:\n- name: u\n  user:\n{user}"
        "contexts:\n- name: c\n  context:\n    cluster: k\n    user: u\n"
    )


def test_the_agent_follows_the_kubelets_rotated_client_certificate(api, tmp_path):
    pki = tmp_path / "pki"
    pki.mkdir()
    current = pki / "kubelet-client-current.pem"
    (pki / "kubelet-client-1.pem").write_bytes(api.client_pem(101))
    current.symlink_to("kubelet-client-1.pem")
    _kubeconfig(
        tmp_path / "kubelet.conf", api, f"    client-certificate: {current}\n    client-key: {current}\n"
    )
    api.accepted_serial = 101
    client = Client(tmp_path / "kubelet.conf")
    client.RECHECK = 0  # look at the files before every call
    assert client.get("/api/v1/nodes/worker-1") == {"kind": "Node"}

    # The kubelet rotates as it does: a new dated file, then the symlink swapped; the old one is expired.
    (pki / "kubelet-client-2.pem").write_bytes(api.client_pem(102))
    (pki / "next").symlink_to("kubelet-client-2.pem")
    (pki / "next").replace(current)
    api.accepted_serial = 102
    assert client.get("/api/v1/nodes/worker-1") == {"kind": "Node"}
    assert api.seen == [101, 102]


def test_a_401_reads_the_credentials_again_before_the_next_look_is_due(api, tmp_path):
    token = tmp_path / "controller.token"
    token.write_text("token-1\n")
    _kubeconfig(tmp_path / "controller.kubeconfig", api, f"    tokenFile: {token}\n")
    api.accepted_token = "token-1"
    client = Client(tmp_path / "controller.kubeconfig")
    client.RECHECK = 1e9  # never look at the files: only the 401 makes it read them
    assert client.get("/api/v1/nodes/worker-1") == {"kind": "Node"}
    token.write_text("token-2\n")  # the timer's new token; the old one expired
    api.accepted_token = "token-2"
    assert client.get("/api/v1/nodes/worker-1") == {"kind": "Node"}
    assert api.seen == ["token-1", "token-1", "token-2"]


def test_credentials_that_are_refused_even_after_a_reload_are_an_error_not_silence(api, tmp_path, caplog):
    token = tmp_path / "controller.token"
    token.write_text("revoked\n")
    _kubeconfig(tmp_path / "controller.kubeconfig", api, f"    tokenFile: {token}\n")
    client = Client(tmp_path / "controller.kubeconfig")
    with pytest.raises(KubeError) as raised:
        client.get("/api/v1/nodes/worker-1")
    assert raised.value.status == 401 and "Unauthorized" in str(raised.value)


def test_a_half_written_certificate_keeps_the_one_in_use_and_logs_an_error(api, tmp_path, caplog):
    pem = tmp_path / "client.pem"
    pem.write_bytes(api.client_pem(201))
    _kubeconfig(tmp_path / "kubelet.conf", api, f"    client-certificate: {pem}\n    client-key: {pem}\n")
    api.accepted_serial = 201
    client = Client(tmp_path / "kubelet.conf")
    client.RECHECK = 0
    assert client.get("/api/v1/nodes/worker-1") == {"kind": "Node"}
    pem.write_bytes(api.client_pem(202)[:100])  # caught half-written
    assert client.get("/api/v1/nodes/worker-1") == {"kind": "Node"}  # still the old, valid one
    assert any(r.levelname == "ERROR" and "cannot be read yet" in r.getMessage() for r in caplog.records)
    pem.write_bytes(api.client_pem(203))  # written whole: taken at the next look
    api.accepted_serial = 203
    assert client.get("/api/v1/nodes/worker-1") == {"kind": "Node"}
    assert api.seen == [201, 201, 203], api.seen


def test_the_token_command_writes_a_fresh_expiring_token_readable_by_root_alone(api, tmp_path):
    admin = tmp_path / "admin.pem"
    admin.write_bytes(api.client_pem(301))
    _kubeconfig(tmp_path / "admin.conf", api, f"    client-certificate: {admin}\n    client-key: {admin}\n")
    out = tmp_path / "controller.token"
    out.write_text("old-token\n")
    code = gpu_health_main(
        [
            "token",
            "--account",
            "appliance-gpu-health-controller",
            "--seconds",
            "3600",
            "--out",
            str(out),
            "--kubeconfig",
            str(tmp_path / "admin.conf"),
        ]
    )
    assert code == 0
    assert out.read_text() == "fresh-token\n" and out.stat().st_mode & 0o777 == 0o600
    [(path, body)] = api.posted
    assert path == "/api/v1/namespaces/kube-system/serviceaccounts/appliance-gpu-health-controller/token"
    assert body["kind"] == "TokenRequest" and body["spec"] == {"expirationSeconds": 3600}
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".controller.token")] == []
