"""`bundle build --source upstream`: the real download code against a local HTTP server and a local
registry that serve fixture files, since no release host or registry is reachable here.

The fixtures are small stand-ins (shell scripts for the binaries, one tiny image under every upstream
name); the HTTP server is Python's http.server and the registry is the distribution registry from the
lab bundle's docker-registry package. Nothing in the code under test is mocked: it downloads, checks
sha256 pins, copies images with skopeo and packages the .debs as for a real release.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import socket
import subprocess
import tarfile
import time
from pathlib import Path

import pytest
import yaml

from appliance.bundle import images, versions
from tests.conftest import PROJECT, run_cli

pytestmark = pytest.mark.lab

ARCH = "amd64"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(port: int) -> None:
    for _ in range(100):
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise AssertionError(f"nothing listens on port {port}")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def tarball(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o755
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def script(name: str, version: str) -> bytes:
    return f"#!/bin/sh\n# fixture {name}\necho {version}\n".encode()


class Upstream:
    """The fixture release hosts under one HTTP root, and the versions file that pins them."""

    def __init__(self, root: Path, data: dict) -> None:
        self.root = root
        self.data = json.loads(json.dumps(data))
        self.files: dict[str, bytes] = {}

    def publish(self, url: str, content: bytes) -> None:
        path = self.root / url.split("://", 1)[1]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        self.files[url] = content

    def binary(self, name: str, content: bytes) -> None:
        entry = self.data["binaries"][name]
        url = entry["upstream_url"].format(version=entry["version"], arch=ARCH)
        self.publish(url, content)
        entry["sha256"] = {ARCH: sha256(content)}


@pytest.fixture(scope="module")
def lab_bundle() -> Path:
    built = run_cli("lab", "bundle", timeout=4 * 3600)
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr
    return Path(re.search(r"bundle (\S+): \d+ files", built.stdout).group(1))


@pytest.fixture(scope="module")
def registry(tmp_path_factory, lab_bundle):
    """The distribution registry of the lab bundle's docker-registry package, on a free port."""
    work = tmp_path_factory.mktemp("registry")
    (deb,) = (lab_bundle / "debs").glob("docker-registry_*.deb")
    subprocess.run(["dpkg-deb", "-x", str(deb), str(work / "pkg")], check=True)
    port = free_port()
    config = work / "config.yml"
    config.write_text(
        yaml.safe_dump(
            {
                "version": 0.1,
                "storage": {"filesystem": {"rootdirectory": str(work / "storage")}},
                "http": {"addr": f"127.0.0.1:{port}"},
            }
        )
    )
    process = subprocess.Popen(
        [str(work / "pkg" / "usr" / "bin" / "docker-registry"), "serve", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(port)
        yield f"127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture(scope="module")
def upstream(tmp_path_factory, registry, lab_bundle):
    """Fixture releases behind python's http.server, one small image under every upstream name in the
    registry, and a versions file pinning the fixtures' checksums."""
    root = tmp_path_factory.mktemp("upstream")
    fixture = Upstream(root / "srv", versions.load(versions.versions_file(PROJECT)))
    for name in ("kubeadm", "kubelet", "kubectl"):
        fixture.binary(name, script(name, "v1.23.5"))
    fixture.binary("crictl", tarball({"crictl": script("crictl", "v1.23.0")}))
    fixture.binary(
        "helm", tarball({"linux-amd64/helm": script("helm", "v3.8.2"), "linux-amd64/LICENSE": b"x"})
    )
    fixture.binary(
        "cni-plugins", tarball({"./bridge": script("bridge", "v1.1.1"), "./loopback": script("lo", "v1.1.1")})
    )
    # etcd's one release archive holds both tools (and the server): both entries pin it.
    etcd = tarball(
        {
            f"etcd-v3.5.1-linux-{ARCH}/etcd": script("etcd", "v3.5.1"),
            f"etcd-v3.5.1-linux-{ARCH}/etcdctl": script("etcdctl", "v3.5.1"),
            f"etcd-v3.5.1-linux-{ARCH}/etcdutl": script("etcdutl", "v3.5.1"),
        }
    )
    fixture.binary("etcdctl", etcd)
    fixture.binary("etcdutl", etcd)
    chart = tarball({"gpu-operator/Chart.yaml": b"apiVersion: v2\nname: gpu-operator\nversion: v1.11.1\n"})
    repository = fixture.data["charts"]["gpu-operator"]["repository"]
    fixture.publish(f"{repository}/gpu-operator-v1.11.1.tgz", chart)
    index = {
        "apiVersion": "v1",
        "entries": {
            "gpu-operator": [
                {"name": "gpu-operator", "version": "v1.11.2", "urls": ["gpu-operator-v1.11.2.tgz"]},
                {
                    "name": "gpu-operator",
                    "version": "v1.11.1",
                    "urls": ["gpu-operator-v1.11.1.tgz"],
                    "digest": sha256(chart),
                },
            ]
        },
    }
    fixture.publish(f"{repository}/index.yaml", yaml.safe_dump(index).encode())
    flannel = fixture.data["manifests"]["kube-flannel"]
    manifest_text = b"# fixture kube-flannel.yml\napiVersion: v1\nkind: Namespace\n"
    fixture.publish(flannel["upstream_url"].format(version=flannel["version"]), manifest_text)
    flannel["sha256"] = sha256(manifest_text)

    pause = lab_bundle / "images" / "k8s.gcr.io_pause_3.6.tar"
    wanted = [entry["image"] for entry in fixture.data["images"].values()]
    wanted += versions.operand_image_names(fixture.data)
    for image in wanted:
        path = image.split("/", 1)[1]
        subprocess.run(
            ["skopeo", "copy", "--quiet", "--dest-tls-verify=false",
             f"docker-archive:{pause}:k8s.gcr.io/pause:3.6", f"docker://{registry}/{path}"],
            check=True,
        )  # fmt: skip

    port = free_port()
    log = (root / "http.log").open("w")
    server = subprocess.Popen(
        ["python3", "-m", "http.server", "--bind", "127.0.0.1", "--directory", str(root / "srv"), str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    wait_for(port)
    hosts = {url.split("/")[2] for url in fixture.files}
    mirrors = [f"https://{host}=http://127.0.0.1:{port}/{host}" for host in sorted(hosts)]
    # Every registry the images come from (k8s.gcr.io, docker.io, nvcr.io) is the local one.
    mirrors += [f"{host}=http://{registry}" for host in sorted({image.split("/", 1)[0] for image in wanted})]
    fixture_versions = root / "versions.yml"
    fixture_versions.write_text(yaml.safe_dump(fixture.data, sort_keys=False))
    yield fixture, fixture_versions, mirrors, root / "http.log"
    server.terminate()
    server.wait(timeout=10)
    log.close()


def build(out: Path, fixture_versions: Path, mirrors: list[str], cache: Path):
    args = ["bundle", "build", "--source", "upstream", "--versions", str(fixture_versions), "--out", str(out)]
    for mirror in mirrors:
        args += ["--mirror", mirror]
    return run_cli(*args, env={"APPLIANCE_CACHE_DIR": str(cache)}, timeout=1800)


@pytest.fixture(scope="module")
def bundle(upstream, tmp_path_factory):
    _, fixture_versions, mirrors, _ = upstream
    work = tmp_path_factory.mktemp("upstream-bundle")
    result = build(work / "bundle", fixture_versions, mirrors, work / "cache")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr
    return work / "bundle"


def test_the_bundle_verifies_and_says_where_it_came_from(bundle):
    result = run_cli("bundle", "verify", str(bundle))
    assert result.returncode == 0, result.stderr
    assert json.loads((bundle / "manifest.json").read_text())["source"] == "upstream"


def test_every_download_went_through_the_http_server(bundle, upstream):
    fixture, _, _, http_log = upstream
    requests = http_log.read_text()
    for url in fixture.files:
        path = "/" + url.split("://", 1)[1]
        assert f'"GET {path} HTTP/1.1" 200' in requests, path


def test_binaries_and_packages_hold_exactly_the_downloaded_files(bundle, upstream, tmp_path):
    fixture, *_ = upstream
    kubeadm = next(content for url, content in fixture.files.items() if url.endswith("/kubeadm"))
    assert (bundle / "bin" / "kubeadm").read_bytes() == kubeadm
    assert os.access(bundle / "bin" / "kubeadm", os.X_OK)
    assert (bundle / "bin" / "helm").read_bytes() == script("helm", "v3.8.2")
    assert (bundle / "bin" / "etcdctl").read_bytes() == script("etcdctl", "v3.5.1")
    assert (bundle / "bin" / "etcdutl").read_bytes() == script("etcdutl", "v3.5.1")
    subprocess.run(
        ["dpkg-deb", "-x", str(bundle / "debs" / "kubeadm_1.23.5-00_amd64.deb"), str(tmp_path)], check=True
    )
    assert (tmp_path / "usr" / "bin" / "kubeadm").read_bytes() == kubeadm
    (cni,) = (bundle / "debs").glob("kubernetes-cni_1.1.1-00_*.deb")
    contents = subprocess.run(["dpkg-deb", "-c", str(cni)], capture_output=True, text=True, check=True).stdout
    assert "./opt/cni/bin/bridge" in contents and "./opt/cni/bin/loopback" in contents


def test_images_chart_and_manifest_come_from_the_registry_and_repositories(bundle, upstream):
    fixture, *_ = upstream
    with tarfile.open(bundle / "images" / "k8s.gcr.io_coredns_coredns_v1.8.6.tar") as tar:
        (entry,) = json.load(tar.extractfile("manifest.json"))
    assert entry["RepoTags"] == ["k8s.gcr.io/coredns/coredns:v1.8.6"]
    # Every image of versions.yml, node-feature-discovery's, the GPU operator's and its operands' too.
    names = {path.name for path in (bundle / "images").iterdir()}
    wanted = [*versions.image_names(fixture.data), *versions.operand_image_names(fixture.data)]
    assert names == {images.archive_name(image) for image in wanted}
    for file_name in (
        "k8s.gcr.io_nfd_node-feature-discovery_v0.10.1.tar",
        "nvcr.io_nvidia_gpu-operator_v1.11.1.tar",
        "nvcr.io_nvidia_k8s-device-plugin_v0.12.2-ubi8.tar",
    ):
        assert file_name in names, names
    chart_url = next(url for url in fixture.files if url.endswith("gpu-operator-v1.11.1.tgz"))
    assert (bundle / "charts" / "gpu-operator-v1.11.1.tgz").read_bytes() == fixture.files[chart_url]
    assert (bundle / "manifests" / "kube-flannel.yml").read_bytes().startswith(b"# fixture kube-flannel.yml")


def test_a_download_that_does_not_match_its_pin_is_refused(upstream, tmp_path):
    _, fixture_versions, mirrors, _ = upstream
    tampered = yaml.safe_load(fixture_versions.read_text())
    tampered["binaries"]["kubelet"]["sha256"][ARCH] = "0" * 64
    tampered_versions = tmp_path / "versions.yml"
    tampered_versions.write_text(yaml.safe_dump(tampered, sort_keys=False))
    result = build(tmp_path / "bundle", tampered_versions, mirrors, tmp_path / "cache")
    assert result.returncode == 1
    assert "kubelet: http://127.0.0.1:" in result.stderr
    assert f"not the {'0' * 64} that versions.yml pins; refusing it" in result.stderr
    assert not (tmp_path / "bundle").exists() and not (tmp_path / "bundle.partial").exists()


def test_an_image_missing_from_the_registry_is_named(upstream, tmp_path):
    _, fixture_versions, mirrors, _ = upstream
    other = yaml.safe_load(fixture_versions.read_text())
    other["images"]["pause"]["image"] = "k8s.gcr.io/pause:9.9"
    other_versions = tmp_path / "versions.yml"
    other_versions.write_text(yaml.safe_dump(other, sort_keys=False))
    result = build(tmp_path / "bundle", other_versions, mirrors, tmp_path / "cache")
    assert result.returncode == 1
    assert "k8s.gcr.io/pause:9.9: skopeo cannot copy it from 127.0.0.1:" in result.stderr
