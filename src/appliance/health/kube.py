"""The few Kubernetes API calls the GPU health agent and controller make, over the standard library.

Why not a client library: the agent runs on every GPU node of an air-gapped appliance with Debian's
python3, and is measured for CPU and memory while idle; the official client would add a dozen Debian
packages to the bundle and tens of MiB to each agent for six REST calls. Authentication is whatever the
kubeconfig holds: a client certificate (inline or as files, as kubeadm writes admin.conf and kubelet.conf)
or a bearer token (inline or a tokenFile); the server is verified against the kubeconfig's CA.

Credentials rotate under a running service: the kubelet replaces its client certificate
(kubelet-client-current.pem) well before it expires, and the controller's ServiceAccount token is
short-lived and rewritten by a timer. The client notices when the kubeconfig or a file it names changed
(at most one look a second), or when the API server answers 401, and reads them again.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import logging
import os
import ssl
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("appliance.health.kube")

PATCH_TYPES = {
    "strategic": "application/strategic-merge-patch+json",
    "merge": "application/merge-patch+json",
    "json": "application/json-patch+json",
}


class KubeError(Exception):
    """An API call failed; `status` is the HTTP status (0 when the server could not be reached)."""

    def __init__(self, message: str, status: int = 0, reason: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason


@dataclass(frozen=True)
class Credentials:
    server: str
    ca_pem: bytes | None
    cert_pem: bytes | None
    key_pem: bytes | None
    token: str | None
    # The files these came from (the kubeconfig and those it names): a change in any means new credentials.
    sources: tuple[Path, ...] = ()


def signature(paths: tuple[Path, ...]) -> tuple[tuple[int, int, int] | None, ...]:
    """What identifies each file's current content cheaply: inode, size, modification time (following
    symlinks: the kubelet swaps kubelet-client-current.pem to a new file)."""
    marks: list[tuple[int, int, int] | None] = []
    for path in paths:
        try:
            stat = path.stat()
        except OSError:
            marks.append(None)
            continue
        marks.append((stat.st_ino, stat.st_size, stat.st_mtime_ns))
    return tuple(marks)


def read_kubeconfig(path: Path) -> Credentials:
    """The current context's server and credentials; relative file paths resolve from the kubeconfig."""
    import yaml  # python3-yaml on the nodes; imported here so that the parser needs nothing

    try:
        config = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as error:
        raise KubeError(f"kubeconfig {path}: {error}") from error
    try:
        context_name = config.get("current-context") or config["contexts"][0]["name"]
        context = _named(config, "contexts", context_name)["context"]
        cluster = _named(config, "clusters", context["cluster"])["cluster"]
        user = _named(config, "users", context["user"])["user"]
    except (KeyError, IndexError, TypeError) as error:
        raise KubeError(f"kubeconfig {path}: no usable current context ({error})") from error

    sources = [path]

    def material(data_key: str, file_key: str, section: dict[str, Any]) -> bytes | None:
        if section.get(data_key):
            return base64.b64decode(section[data_key])
        if section.get(file_key):
            named = path.parent / section[file_key]
            sources.append(named)
            return named.read_bytes()
        return None

    try:
        token = user.get("token")
        if not token and user.get("tokenFile"):  # a short-lived token a timer rewrites (the controller's)
            named = path.parent / user["tokenFile"]
            sources.append(named)
            token = named.read_text().strip()
        return Credentials(
            server=cluster["server"].rstrip("/"),
            ca_pem=material("certificate-authority-data", "certificate-authority", cluster),
            cert_pem=material("client-certificate-data", "client-certificate", user),
            key_pem=material("client-key-data", "client-key", user),
            token=token,
            sources=tuple(sources),
        )
    except OSError as error:
        raise KubeError(f"kubeconfig {path}: {error}") from error


def _named(config: dict[str, Any], section: str, name: str) -> dict[str, Any]:
    for item in config.get(section) or []:
        if item.get("name") == name:
            return item
    raise KeyError(f"{section}: no {name!r}")


def _ssl_context(credentials: Credentials) -> ssl.SSLContext:
    context = ssl.create_default_context()
    if credentials.ca_pem:
        context.load_verify_locations(cadata=credentials.ca_pem.decode())
    if credentials.cert_pem and credentials.key_pem:
        # ssl loads a certificate chain from files only: a private directory, removed at once.
        with tempfile.TemporaryDirectory(prefix="appliance-kube-") as directory:
            chain = Path(directory) / "client.pem"
            fd = os.open(chain, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as handle:
                handle.write(credentials.cert_pem + b"\n" + credentials.key_pem)
            context.load_cert_chain(chain)
    return context


class Client:
    """JSON requests to one API server over one kept-alive connection (thread-safe); watches stream."""

    # Seconds between two looks at the credentials' files.
    RECHECK = 1.0

    def __init__(self, kubeconfig: Path, timeout: float = 10.0) -> None:
        self.kubeconfig = kubeconfig
        self.timeout = timeout
        self._connection: http.client.HTTPSConnection | None = None
        self._lock = threading.Lock()
        self._load()

    def _load(self) -> None:
        credentials = read_kubeconfig(self.kubeconfig)
        url = urllib.parse.urlsplit(credentials.server)
        if url.scheme != "https" or not url.hostname:
            raise KubeError(
                f"kubeconfig {self.kubeconfig}: server {credentials.server!r} is not an https URL"
            )
        context = _ssl_context(credentials)
        self.host, self.port = url.hostname, url.port or 443
        self.token, self.context = credentials.token, context
        self.sources = credentials.sources
        self._signature = signature(self.sources)
        self._checked = time.monotonic()
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def reload(self, why: str) -> bool:
        """Read the credentials again; keep the ones in use when the new ones cannot be read (a file caught
        half-written is read again at the next look). Call with the lock held."""
        try:
            self._load()
        except (KubeError, ssl.SSLError, ValueError) as error:
            log.error(
                "credentials of %s changed (%s) but cannot be read yet: %s", self.kubeconfig, why, error
            )
            self._signature = None  # look again next time
            return False
        log.info("credentials of %s reloaded: %s", self.kubeconfig, why)
        return True

    def _refresh(self) -> None:
        """Reload when a file of the credentials changed since the last look. Call with the lock held."""
        now = time.monotonic()
        if now - self._checked < self.RECHECK:
            return
        self._checked = now
        if signature(self.sources) != self._signature:
            self.reload("a file changed")

    def _connect(self, timeout: float | None) -> http.client.HTTPSConnection:
        return http.client.HTTPSConnection(self.host, self.port, context=self.context, timeout=timeout)

    def _headers(self, content_type: str | None = None) -> dict[str, str]:
        headers = {"Accept": "application/json", "User-Agent": "appliance-gpu-health"}
        if content_type:
            headers["Content-Type"] = content_type
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        return headers

    def request(
        self, method: str, path: str, body: Any = None, content_type: str = "application/json"
    ) -> dict[str, Any]:
        payload = None if body is None else json.dumps(body).encode()
        with self._lock:
            self._refresh()
            status, data = self._send(method, path, payload, content_type)
            # Refused credentials: the kubelet or the token's timer may have replaced them a moment ago.
            if status == 401 and self.reload("the API server answered 401"):
                status, data = self._send(method, path, payload, content_type)
        return _decode(method, path, status, data)

    def _send(self, method: str, path: str, payload: bytes | None, content_type: str) -> tuple[int, bytes]:
        headers = self._headers(content_type if payload is not None else None)
        for attempt in (1, 2):  # a kept-alive connection the server closed is retried once
            if self._connection is None:
                self._connection = self._connect(self.timeout)
            try:
                self._connection.request(method, path, body=payload, headers=headers)
                response = self._connection.getresponse()
                return response.status, response.read()
            except (OSError, http.client.HTTPException) as error:
                self._connection.close()
                self._connection = None
                if attempt == 2:
                    raise KubeError(f"{method} {path}: {error}") from error
        raise AssertionError("unreachable")

    def get(self, path: str) -> dict[str, Any]:
        return self.request("GET", path)

    def post(self, path: str, body: Any) -> dict[str, Any]:
        return self.request("POST", path, body)

    def patch(self, path: str, body: Any, patch_type: str = "strategic") -> dict[str, Any]:
        return self.request("PATCH", path, body, PATCH_TYPES[patch_type])

    def watch(self, path: str, resource_version: str, timeout_seconds: int = 300) -> Iterator[dict[str, Any]]:
        """The events ({"type": ADDED|MODIFIED|DELETED|ERROR, "object": ...}) of a watch from a version."""
        query = urllib.parse.urlencode(
            {"watch": "1", "resourceVersion": resource_version, "timeoutSeconds": str(timeout_seconds)}
        )
        separator = "&" if "?" in path else "?"
        with self._lock:
            self._refresh()
        connection = self._connect(timeout_seconds + 30)
        try:
            connection.request("GET", f"{path}{separator}{query}", headers=self._headers())
            response = connection.getresponse()
            if response.status != 200:
                _decode("GET", path, response.status, response.read())
            while line := response.readline():
                if line.strip():
                    yield json.loads(line)
        except (OSError, http.client.HTTPException, ValueError) as error:
            raise KubeError(f"watch {path}: {error}") from error
        finally:
            with contextlib.suppress(OSError):
                connection.close()


def _decode(method: str, path: str, status: int, data: bytes) -> dict[str, Any]:
    try:
        document = json.loads(data) if data else {}
    except ValueError:
        document = {"message": data.decode(errors="replace").strip()}
    if status >= 400:
        message = document.get("message") or f"HTTP {status}"
        raise KubeError(f"{method} {path}: {message}", status, document.get("reason", ""))
    return document


def request_token(client: Client, namespace: str, account: str, seconds: int) -> tuple[str, str]:
    """A token of ServiceAccount NAMESPACE/ACCOUNT that expires in SECONDS (the TokenRequest API, as the
    kubelet asks one for a pod's projected token): (token, expirationTimestamp)."""
    answer = client.post(
        f"/api/v1/namespaces/{urllib.parse.quote(namespace)}/serviceaccounts/{urllib.parse.quote(account)}/token",
        {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {"expirationSeconds": seconds},
        },
    )
    status = answer.get("status") or {}
    if not status.get("token"):
        raise KubeError(f"TokenRequest for {namespace}/{account}: the answer holds no token")
    return status["token"], status.get("expirationTimestamp", "")


def write_secret_file(path: Path, text: str) -> None:
    """Write TEXT to PATH readable by root alone, whole or not at all (a reader never sees half of it)."""
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(descriptor, "w") as handle:
            handle.write(text)
        os.chmod(temporary, 0o600)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
