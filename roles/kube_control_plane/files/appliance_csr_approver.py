#!/usr/bin/python3 -I
"""appliance-csr-approver: approve the kubelets' serving certificates, nothing else (role kube_control_plane).

    appliance-csr-approver [--kubeconfig FILE] [--wait NODE] [--timeout SECONDS]

With kubelet's serverTLSBootstrap, each kubelet asks the cluster CA for its serving certificate with a
CertificateSigningRequest (signer kubernetes.io/kubelet-serving), at start and again before the certificate
expires. Kubernetes approves none of these by itself (kubeadm's documentation leaves it to the operator), and
the API server, which checks the kubelets' certificates against the cluster CA
(--kubelet-certificate-authority), cannot reach a kubelet for logs, exec or port-forward until it has one.

Each run looks at every pending request of that signer and approves it only when all of these hold:
the requester is the node itself (user system:node:NAME, group system:nodes) and NAME is a node of the
cluster; the request's subject is exactly O=system:nodes, CN=system:node:NAME; its usages are server auth and
at most digital signature and key encipherment besides; each name it asks for is one of the node's own
addresses (Hostname, InternalIP, ExternalIP, InternalDNS, ExternalDNS in the Node's status), with no e-mail
or URI names; its signature verifies. A request that fails is left pending (Kubernetes removes it after a
day) and the reason printed. Requests of other signers are never touched. It prints one line per decision
(the journal, when its timer runs it).

--wait NODE: run until NODE's kubelet serves a certificate of the cluster CA (--ca) for its address, as
the API server checks it, or --timeout seconds pass (exit 1). site.yml uses it after a kubelet starts.

It runs on the control-plane node with Debian's python3, openssl and kubectl alone.
Exit codes: 0 done, 1 --wait timed out or kubectl failed, 2 bad usage.
"""

from __future__ import annotations

import argparse
import base64
import ipaddress
import json
import socket
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass, field

SIGNER = "kubernetes.io/kubelet-serving"
ALLOWED_USAGES = {"digital signature", "key encipherment", "server auth"}
HOST_ADDRESS_TYPES = {"Hostname", "InternalDNS", "ExternalDNS"}
IP_ADDRESS_TYPES = {"InternalIP", "ExternalIP"}
KUBELET_PORT = 10250


class ApproverError(Exception):
    pass


@dataclass
class Request:
    """What openssl reads in a certificate signing request."""

    subject: str = ""
    dns: list[str] = field(default_factory=list)
    ips: list[str] = field(default_factory=list)
    others: list[str] = field(default_factory=list)
    verified: bool = False


def parse_openssl(subject_line: str, text: str, verified: bool) -> Request:
    """`openssl req -noout -subject -nameopt RFC2253` and `-text`: the subject and the names asked for."""
    request = Request(subject=subject_line.strip().removeprefix("subject=").strip(), verified=verified)
    lines = text.splitlines()
    for index, line in enumerate(lines):
        if "X509v3 Subject Alternative Name" in line and index + 1 < len(lines):
            for entry in lines[index + 1].split(","):
                kind, _sep, value = entry.strip().partition(":")
                if kind == "DNS":
                    request.dns.append(value)
                elif kind == "IP Address":
                    request.ips.append(value)
                else:
                    request.others.append(entry.strip())
    return request


def read_request(pem: bytes) -> Request:
    def openssl(*args: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            ["openssl", "req", "-noout", *args], input=pem, capture_output=True, check=False
        )

    subject = openssl("-subject", "-nameopt", "RFC2253")
    if subject.returncode != 0:
        return Request()
    verify = openssl("-verify")
    return parse_openssl(subject.stdout.decode(), openssl("-text").stdout.decode(), verify.returncode == 0)


def pending(csr: dict) -> bool:
    conditions = (csr.get("status") or {}).get("conditions") or []
    return csr["spec"].get("signerName") == SIGNER and not conditions


def node_addresses(node: dict) -> tuple[set[str], set[str]]:
    """The node's host names and its IP addresses (normalised), from its status."""
    names, ips = set(), set()
    for address in (node.get("status") or {}).get("addresses") or []:
        if address.get("type") in HOST_ADDRESS_TYPES:
            names.add(address["address"].lower())
        elif address.get("type") in IP_ADDRESS_TYPES:
            ips.add(str(ipaddress.ip_address(address["address"])))
    return names, ips


def judge(csr: dict, nodes: dict[str, dict], request: Request) -> str | None:
    """Why the request must not be approved; None when it is a node's own serving certificate."""
    spec = csr["spec"]
    user = spec.get("username", "")
    if not user.startswith("system:node:") or "system:nodes" not in (spec.get("groups") or []):
        return f"requested by {user or 'nobody'}, not by a node"
    name = user.removeprefix("system:node:")
    if name not in nodes:
        return f"{name} is not a node of the cluster"
    usages = set(spec.get("usages") or [])
    if "server auth" not in usages or not usages <= ALLOWED_USAGES:
        return f"usages {sorted(usages)} are not a serving certificate's"
    if not request.subject:
        return "openssl cannot read the request"
    if not request.verified:
        return "the request's signature does not verify"
    if sorted(request.subject.split(",")) != sorted([f"CN=system:node:{name}", "O=system:nodes"]):
        return f"subject {request.subject} is not CN=system:node:{name}, O=system:nodes"
    if request.others:
        return f"it asks for names a node does not have: {', '.join(request.others)}"
    if not request.dns and not request.ips:
        return "it asks for no name at all"
    names, ips = node_addresses(nodes[name])
    foreign = [dns for dns in request.dns if dns.lower() not in names]
    for ip in request.ips:
        try:
            if str(ipaddress.ip_address(ip)) not in ips:
                foreign.append(ip)
        except ValueError:
            foreign.append(ip)
    if foreign:
        return f"{', '.join(foreign)} {'is' if len(foreign) == 1 else 'are'} not an address of node {name}"
    return None


def kubectl(kubeconfig: str, *args: str) -> str:
    result = subprocess.run(
        ["kubectl", f"--kubeconfig={kubeconfig}", "--request-timeout=30s", *args],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise ApproverError(f"kubectl {' '.join(args)}: {result.stderr.strip()}")
    return result.stdout


def approve_pending(kubeconfig: str, log) -> None:
    """Judge every pending request: approve those of a node for its own serving certificate, and print
    (log) each decision with its reason."""
    csrs = json.loads(kubectl(kubeconfig, "get", "certificatesigningrequests", "--output=json"))["items"]
    waiting = [csr for csr in csrs if pending(csr)]
    if not waiting:
        return
    nodes = {
        node["metadata"]["name"]: node
        for node in json.loads(kubectl(kubeconfig, "get", "nodes", "--output=json"))["items"]
    }
    for csr in waiting:
        name = csr["metadata"]["name"]
        request = read_request(base64.b64decode(csr["spec"].get("request", "")))
        reason = judge(csr, nodes, request)
        if reason is None:
            kubectl(kubeconfig, "certificate", "approve", name)
            log(f"approved {name}: the serving certificate of {csr['spec']['username']}")
        else:
            log(f"left {name} pending: {reason}")


def serves_verified(kubeconfig: str, node: str, ca_file: str, port: int = KUBELET_PORT) -> bool:
    """The node's kubelet serves a certificate the cluster CA signed, for the node's own address: what the
    API server checks with --kubelet-certificate-authority."""
    nodes = json.loads(kubectl(kubeconfig, "get", "nodes", "--output=json"))["items"]
    found = next((item for item in nodes if item["metadata"]["name"] == node), None)
    _names, ips = node_addresses(found) if found else (set(), set())
    return bool(ips) and serves_verified_at(sorted(ips)[0], ca_file, port)


def serves_verified_at(address: str, ca_file: str, port: int) -> bool:
    """ADDRESS:PORT completes a TLS handshake with a certificate the CA signed that names ADDRESS."""
    context = ssl.create_default_context(cafile=ca_file)
    context.check_hostname = False  # an IP address: checked below, against the certificate's names
    try:
        with socket.create_connection((address, port), timeout=5) as raw, context.wrap_socket(raw) as tls:
            served = tls.getpeercert() or {}
    except (OSError, ssl.SSLError):
        return False
    wanted = ipaddress.ip_address(address)
    for kind, value in served.get("subjectAltName", ()):
        if kind == "IP Address" and ipaddress.ip_address(value.strip()) == wanted:
            return True
    return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="appliance-csr-approver", description=__doc__.split("\n\n")[2])
    parser.add_argument("--kubeconfig", default="/etc/kubernetes/admin.conf")
    parser.add_argument("--wait", metavar="NODE", help="run until NODE's serving certificate is issued")
    parser.add_argument("--timeout", type=float, default=300, help="seconds --wait waits (default 300)")
    parser.add_argument("--ca", default="/etc/kubernetes/pki/ca.crt", help="the cluster CA, for --wait")
    args = parser.parse_args(argv)

    def log(line: str) -> None:
        print(line, flush=True)

    deadline = time.monotonic() + args.timeout
    while True:
        try:
            approve_pending(args.kubeconfig, log)
            if not args.wait:
                return 0
            if serves_verified(args.kubeconfig, args.wait, args.ca):
                log(f"the kubelet of {args.wait} serves a certificate of the cluster CA")
                return 0
        except ApproverError as error:
            if not args.wait or time.monotonic() > deadline:
                print(f"appliance-csr-approver: {error}", file=sys.stderr)
                return 1
        if time.monotonic() > deadline:
            print(
                f"appliance-csr-approver: the kubelet of {args.wait} serves no certificate of the cluster CA"
                f" after {args.timeout:.0f} s (is it running, with serverTLSBootstrap?)",
                file=sys.stderr,
            )
            return 1
        time.sleep(2)


if __name__ == "__main__":
    sys.exit(main())
