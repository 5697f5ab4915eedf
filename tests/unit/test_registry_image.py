"""plugins/modules/registry_image.py: how it names images in the registry and reads archives.
The push itself runs against the real registry in tests/lab/test_bundle_serve.py."""

from __future__ import annotations

import base64
import contextlib
import http.server
import importlib.util
import io
import json
import re
import socket
import tarfile
import threading
import time

import pytest
import yaml

from tests.conftest import PROJECT

MODULE = PROJECT / "plugins" / "modules" / "registry_image.py"
_spec = importlib.util.spec_from_file_location("registry_image", MODULE)
registry_image = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(registry_image)


@pytest.mark.parametrize(
    ("image", "expected"),
    [
        ("k8s.gcr.io/coredns/coredns:v1.8.6", ("coredns/coredns", "v1.8.6")),
        ("k8s.gcr.io/pause:3.6", ("pause", "3.6")),
        (
            "docker.io/rancher/mirrored-flannelcni-flannel:v0.19.2",
            ("rancher/mirrored-flannelcni-flannel", "v0.19.2"),
        ),
        ("rancher/mirrored-flannelcni-flannel:v0.19.2", ("rancher/mirrored-flannelcni-flannel", "v0.19.2")),
        ("docker.io/busybox:1.36", ("library/busybox", "1.36")),
        ("busybox:1.36", ("library/busybox", "1.36")),
        ("localhost/tool:1", ("tool", "1")),
        ("registry.local:5000/team/tool:2", ("team/tool", "2")),
        ("nvcr.io/nvidia/gpu-operator:v1.11.1", ("nvidia/gpu-operator", "v1.11.1")),
    ],
)
def test_split_image_gives_the_path_under_the_registry(image, expected):
    assert registry_image.split_image(image) == expected


@pytest.mark.parametrize("image", ["k8s.gcr.io/pause", "registry.local:5000/team/tool", ":3.6"])
def test_split_image_refuses_a_name_without_tag(image):
    with pytest.raises(ValueError, match="has no tag"):
        registry_image.split_image(image)


def _archive(path, entries):
    data = json.dumps(entries).encode()
    with tarfile.open(path, "w") as tar:
        info = tarfile.TarInfo("manifest.json")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))


def test_archive_image_id_is_the_config_digest_of_the_tagged_image(tmp_path):
    archive = tmp_path / "pause.tar"
    _archive(
        archive,
        [
            {"Config": "aa11.json", "RepoTags": ["k8s.gcr.io/other:1"], "Layers": []},
            {"Config": "blobs/sha256/bb22", "RepoTags": ["k8s.gcr.io/pause:3.6"], "Layers": []},
            {"Config": "cc33.json", "RepoTags": ["rancher/flannel:v0.19.2", "busybox:1.36"], "Layers": []},
        ],
    )
    # docker writes docker.io names in their short form
    assert registry_image.archive_image_id(str(archive), "docker.io/rancher/flannel:v0.19.2") == "sha256:cc33"
    assert registry_image.archive_image_id(str(archive), "docker.io/library/busybox:1.36") == "sha256:cc33"
    assert registry_image.archive_image_id(str(archive), "k8s.gcr.io/other:1") == "sha256:aa11"
    assert registry_image.archive_image_id(str(archive), "k8s.gcr.io/pause:3.6") == "sha256:bb22"


def test_archive_image_id_names_what_the_archive_holds_when_the_image_is_not_there(tmp_path):
    archive = tmp_path / "pause.tar"
    _archive(archive, [{"Config": "aa11.json", "RepoTags": ["k8s.gcr.io/pause:3.5"], "Layers": []}])
    with pytest.raises(
        ValueError, match=r"does not hold k8s.gcr.io/pause:3.6 \(it holds k8s.gcr.io/pause:3.5\)"
    ):
        registry_image.archive_image_id(str(archive), "k8s.gcr.io/pause:3.6")


def test_documentation_parses_and_documents_every_option():
    documented = yaml.safe_load(registry_image.DOCUMENTATION)["options"]
    for block in (registry_image.EXAMPLES, registry_image.RETURN):
        assert yaml.safe_load(block)
    source = MODULE.read_text()
    for option in documented:
        assert re.search(rf'"{option}": {{\s*"type"', source), option
    assert set(documented) == {"images", "registry", "username", "password", "wait_timeout"}
    assert re.search(r'"password": {"type": "str", "no_log": True}', source)
    for suboption in documented["images"]["suboptions"]:
        assert re.search(rf'"{suboption}": {{\s*"type"', source), suboption


class _Registry(http.server.BaseHTTPRequestHandler):
    """Answers /v2/ like a registry: 503 for the first requests (a registry still starting), then 200."""

    failures_left = 0

    def do_GET(self):
        status = 503 if type(self).failures_left > 0 else 200
        type(self).failures_left -= 1
        self.send_response(status)
        self.end_headers()

    def log_message(self, *_):
        pass


@contextlib.contextmanager
def _serving(handler: type[http.server.BaseHTTPRequestHandler]):
    """HANDLER on a free port of the loopback, in a thread, for the time of the block."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def registry_server():
    with _serving(_Registry) as server:
        yield server


def test_wait_for_registry_returns_once_a_starting_registry_answers(registry_server):
    _Registry.failures_left = 2
    address = f"127.0.0.1:{registry_server.server_address[1]}"
    assert registry_image.wait_for_registry(address, timeout=10) is None
    assert _Registry.failures_left < 0  # it asked until the registry answered 200


def test_wait_for_registry_gives_the_last_error_after_the_timeout(registry_server):
    _Registry.failures_left = 10_000
    address = f"127.0.0.1:{registry_server.server_address[1]}"
    assert "503" in registry_image.wait_for_registry(address, timeout=1)


def test_wait_for_registry_names_a_refused_connection():
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    assert "refused" in registry_image.wait_for_registry(f"127.0.0.1:{port}", timeout=1).lower()


class _AuthRegistry(http.server.BaseHTTPRequestHandler):
    """A registry with htpasswd authentication (user pusher, password s3cret): /v2/ and one manifest."""

    expected = "Basic " + base64.b64encode(b"pusher:s3cret").decode()

    def do_GET(self):
        if self.headers.get("Authorization") != self.expected:
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="appliance"')
            self.end_headers()
            return
        if self.path == "/v2/":
            body = b"{}"
        elif self.path == "/v2/pause/manifests/3.6":
            body = json.dumps({"config": {"digest": "sha256:6270bb"}}).encode()
        else:
            self.send_response(404)
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_):
        pass


@pytest.fixture
def auth_registry():
    with _serving(_AuthRegistry) as server:
        yield f"127.0.0.1:{server.server_address[1]}"


def test_a_registry_with_htpasswd_answers_the_right_credentials(auth_registry):
    credentials = registry_image.Credentials("pusher", "s3cret")
    assert registry_image.wait_for_registry(auth_registry, timeout=5, credentials=credentials) is None
    assert registry_image.registry_image_id(auth_registry, "pause", "3.6", credentials) == "sha256:6270bb"
    assert registry_image.registry_image_id(auth_registry, "pause", "3.7", credentials) is None


@pytest.mark.parametrize(
    ("credentials", "error"),
    [
        (None, "answered HTTP 401: it asks for credentials (set username and password)"),
        (
            registry_image.Credentials(),
            "answered HTTP 401: it asks for credentials (set username and password)",
        ),
        (
            registry_image.Credentials("pusher", "wrong"),
            "answered HTTP 401: it refused the credentials of user pusher",
        ),
    ],
)
def test_missing_or_wrong_credentials_fail_at_once_without_the_password(auth_registry, credentials, error):
    started = time.monotonic()
    assert registry_image.wait_for_registry(auth_registry, timeout=30, credentials=credentials) == error
    assert time.monotonic() - started < 5  # no waiting out the timeout for an answer that will not change


def test_skopeo_reads_the_credentials_from_a_private_auth_file(tmp_path):
    path = registry_image.Credentials("pusher", "s3cret").auth_file("127.0.0.1:5001", str(tmp_path))
    assert oct((tmp_path / "auth.json").stat().st_mode & 0o777) == "0o600" and path == str(
        tmp_path / "auth.json"
    )
    auths = json.loads((tmp_path / "auth.json").read_text())["auths"]
    assert base64.b64decode(auths["127.0.0.1:5001"]["auth"]) == b"pusher:s3cret"
