"""appliance-csr-approver (roles/kube_control_plane/files/appliance_csr_approver.py): which kubelet serving
certificate requests it approves, judged on requests made here with cryptography and read by the real
openssl; and its check of a kubelet's certificate, against a TLS server here. Approving through kubectl runs
on the lab (tests/lab/test_containerd.py)."""

from __future__ import annotations

import base64
import contextlib
import datetime
import importlib.util
import ipaddress
import socket
import ssl
import sys
import threading

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.conftest import PROJECT

PROGRAM = PROJECT / "roles" / "kube_control_plane" / "files" / "appliance_csr_approver.py"
_spec = importlib.util.spec_from_file_location("appliance_csr_approver", PROGRAM)
approver = importlib.util.module_from_spec(_spec)
sys.modules["appliance_csr_approver"] = approver
_spec.loader.exec_module(approver)

KEY = ec.generate_private_key(ec.SECP256R1())
NODES = {
    "worker-1": {
        "metadata": {"name": "worker-1"},
        "status": {
            "addresses": [
                {"type": "InternalIP", "address": "172.28.6.11"},
                {"type": "InternalIP", "address": "fd00::11"},
                {"type": "Hostname", "address": "worker-1"},
            ]
        },
    }
}
SERVING = ["digital signature", "key encipherment", "server auth"]


def request_pem(cn: str = "system:node:worker-1", org: str = "system:nodes", names=None) -> bytes:
    if names is None:
        names = [x509.DNSName("worker-1"), x509.IPAddress(ipaddress.ip_address("172.28.6.11"))]
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name(
            [x509.NameAttribute(NameOID.ORGANIZATION_NAME, org), x509.NameAttribute(NameOID.COMMON_NAME, cn)]
        )
    )
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(KEY, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def csr(pem: bytes, user: str = "system:node:worker-1", usages=None, groups=None) -> dict:
    return {
        "metadata": {"name": "csr-abc"},
        "spec": {
            "signerName": approver.SIGNER,
            "username": user,
            "groups": groups if groups is not None else ["system:nodes", "system:authenticated"],
            "usages": usages if usages is not None else SERVING,
            "request": base64.b64encode(pem).decode(),
        },
    }


def judged(pem: bytes | None = None, **kwargs) -> str | None:
    pem = pem or request_pem()
    return approver.judge(csr(pem, **kwargs), NODES, approver.read_request(pem))


def test_a_nodes_own_serving_request_is_approved():
    assert judged() is None


def test_openssl_reads_the_subject_and_every_name():
    pem = request_pem(
        names=[
            x509.DNSName("worker-1"),
            x509.IPAddress(ipaddress.ip_address("172.28.6.11")),
            x509.IPAddress(ipaddress.ip_address("fd00::11")),
            x509.RFC822Name("a@b.c"),
        ]
    )
    request = approver.read_request(pem)
    assert request.verified
    assert sorted(request.subject.split(",")) == ["CN=system:node:worker-1", "O=system:nodes"]
    assert request.dns == ["worker-1"]
    assert [str(ipaddress.ip_address(ip)) for ip in request.ips] == ["172.28.6.11", "fd00::11"]
    assert request.others == ["email:a@b.c"]


def test_an_ipv6_address_of_the_node_is_accepted_in_any_spelling():
    pem = request_pem(names=[x509.IPAddress(ipaddress.ip_address("fd00:0:0::11"))])
    assert judged(pem) is None


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"user": "system:serviceaccount:default:x"}, "not by a node"),
        ({"groups": ["system:authenticated"]}, "not by a node"),
        ({"user": "system:node:worker-9"}, "worker-9 is not a node of the cluster"),
        ({"usages": ["digital signature", "client auth"]}, "are not a serving certificate's"),
        ({"usages": [*SERVING, "client auth"]}, "are not a serving certificate's"),
    ],
)
def test_a_request_not_from_the_node_itself_or_not_for_serving_is_left(kwargs, reason):
    assert reason in judged(**kwargs)


def test_a_node_asking_for_another_nodes_name_is_left():
    assert "is not CN=system:node:worker-1" in judged(request_pem(cn="system:node:cp-1"))
    assert "is not CN=system:node:worker-1" in judged(request_pem(org="system:masters"))


def test_a_name_the_node_does_not_have_is_left():
    pem = request_pem(names=[x509.DNSName("worker-1"), x509.IPAddress(ipaddress.ip_address("10.0.0.1"))])
    assert judged(pem) == "10.0.0.1 is not an address of node worker-1"
    pem = request_pem(names=[x509.DNSName("kubernetes.default")])
    assert judged(pem) == "kubernetes.default is not an address of node worker-1"


def test_email_or_uri_names_are_left():
    pem = request_pem(names=[x509.DNSName("worker-1"), x509.UniformResourceIdentifier("spiffe://x")])
    assert "names a node does not have" in judged(pem)


def test_a_request_with_no_names_is_left():
    assert judged(request_pem(names=[])) == "it asks for no name at all"


def test_a_request_whose_signature_does_not_verify_is_left():
    pem = request_pem()
    request = approver.read_request(pem)
    request.verified = False
    assert approver.judge(csr(pem), NODES, request) == "the request's signature does not verify"


def test_garbage_is_left():
    assert approver.judge(csr(b"not a request"), NODES, approver.read_request(b"nope")) == (
        "openssl cannot read the request"
    )


def test_only_pending_kubelet_serving_requests_are_looked_at():
    waiting = csr(request_pem())
    assert approver.pending(waiting)
    done = {**waiting, "status": {"conditions": [{"type": "Approved"}]}}
    assert not approver.pending(done)
    client = {
        **waiting,
        "spec": {**waiting["spec"], "signerName": "kubernetes.io/kube-apiserver-client-kubelet"},
    }
    assert not approver.pending(client)


def _certificate(subject_key, issuer_key, issuer_name, cn: str, ip: str | None, ca: bool = False):
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .issuer_name(issuer_name or x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .public_key(subject_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ip:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(ip))]), critical=False
        )
    return builder.sign(issuer_key, hashes.SHA256())


@pytest.fixture
def kubelet(tmp_path):
    """A TLS server on 127.0.0.1 standing in for a kubelet's port, serving the certificate a test picks."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _certificate(ca_key, ca_key, None, "kubernetes", None, ca=True)
    (tmp_path / "ca.crt").write_bytes(ca.public_bytes(serialization.Encoding.PEM))

    def serve(signed_by_ca: bool, ip: str) -> int:
        key = ec.generate_private_key(ec.SECP256R1())
        issuer_key, issuer = (ca_key, ca.subject) if signed_by_ca else (key, None)
        served = _certificate(key, issuer_key, issuer, "system:node:worker-1", ip)
        (tmp_path / "tls.crt").write_bytes(served.public_bytes(serialization.Encoding.PEM))
        (tmp_path / "tls.key").write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(tmp_path / "tls.crt", tmp_path / "tls.key")
        listener = socket.create_server(("127.0.0.1", 0))
        servers.append(listener)

        def accept() -> None:
            with contextlib.suppress(OSError):
                connection, _ = listener.accept()
                with (
                    contextlib.suppress(OSError, ssl.SSLError),
                    context.wrap_socket(connection, server_side=True),
                ):
                    pass

        threading.Thread(target=accept, daemon=True).start()
        return listener.getsockname()[1]

    servers: list[socket.socket] = []
    yield serve, str(tmp_path / "ca.crt")
    for listener in servers:
        listener.close()


def test_a_kubelet_serving_a_certificate_of_the_ca_for_its_address_is_verified(kubelet):
    serve, ca_file = kubelet
    assert approver.serves_verified_at("127.0.0.1", ca_file, serve(signed_by_ca=True, ip="127.0.0.1"))


def test_a_self_signed_kubelet_certificate_is_not(kubelet):
    serve, ca_file = kubelet
    assert not approver.serves_verified_at("127.0.0.1", ca_file, serve(signed_by_ca=False, ip="127.0.0.1"))


def test_a_certificate_of_the_ca_for_another_address_is_not(kubelet):
    serve, ca_file = kubelet
    assert not approver.serves_verified_at("127.0.0.1", ca_file, serve(signed_by_ca=True, ip="10.0.0.9"))


def test_nothing_listening_is_not(kubelet):
    _serve, ca_file = kubelet
    unused = socket.create_server(("127.0.0.1", 0))
    port = unused.getsockname()[1]
    unused.close()
    assert not approver.serves_verified_at("127.0.0.1", ca_file, port)
