"""The bundle's images, built for real in the local docker engine and run as Kubernetes would run them.

Builds every image of versions.yml (except the GPU ones of a later issue) into a temporary directory.
The kube-* images need the `kubernetes` gobuild target, about 15 minutes of both CPUs: they are built
only when it is already in the cache, and their tests are skipped otherwise.
"""

from __future__ import annotations

import io
import json
import subprocess
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from appliance.bundle import gobuild, images, versions
from appliance.lab import docker as lab_docker

pytestmark = pytest.mark.lab

KUBE_IMAGES = ("kube-apiserver", "kube-controller-manager", "kube-proxy", "kube-scheduler")


@dataclass
class Built:
    data: dict[str, Any]
    out: Path
    archives: dict[str, Path]
    targets: dict[str, gobuild.GoTarget]
    seconds: float
    kube_skip_reason: str | None

    def image(self, key: str) -> str:
        name = self.data["images"][key]["image"]
        if name not in self.archives:
            pytest.skip(self.kube_skip_reason or f"{name} was not built")
        return name

    def binaries(self, target: str) -> Path:
        return gobuild.build(self.targets[target])


def cached(target: gobuild.GoTarget) -> bool:
    """Whether gobuild.build(TARGET) would find every binary in its cache and build nothing."""
    output = gobuild.cache_root() / "out" / f"{target.name}-{target.version}-{gobuild.recipe_digest(target)}"
    return all((output / name).is_file() for name in target.binaries)


def docker(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=300, check=False)
    if check:
        assert result.returncode == 0, f"docker {' '.join(args)}: {result.stderr}"
    return result


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    if not lab_docker.engine_answers():
        pytest.skip("no docker engine answers (make setup)")
    data = versions.load()
    targets = gobuild.targets(data)
    reason = None
    wanted = dict(data["images"])
    if not cached(targets["kubernetes"]):
        reason = (
            "the kubernetes gobuild target is not in the cache yet (building it takes ~15 minutes: "
            "gobuild.build(gobuild.targets(versions.load())['kubernetes'])), so kube-* images were not built"
        )
        wanted = {key: entry for key, entry in wanted.items() if key not in KUBE_IMAGES}
    out = tmp_path_factory.mktemp("images")
    started = time.monotonic()
    archives = images.build_images(
        {**data, "images": wanted}, lambda name: gobuild.build(targets[name]), out, log=print
    )
    return Built(data, out, archives, targets, time.monotonic() - started, reason)


@pytest.mark.parametrize("key", sorted(images.RECIPES))
def test_archive_loads_under_the_exact_upstream_name(built: Built, key: str) -> None:
    name = built.image(key)
    archive = built.archives[name]
    assert archive == built.out / images.archive_name(name)
    with tarfile.open(archive) as tar:
        handle = tar.extractfile("manifest.json")
        assert handle is not None
        repo_tags = json.load(io.TextIOWrapper(handle))[0]["RepoTags"]
    # Docker writes docker.io names in their short form; containerd's import restores the long one.
    assert repo_tags == [name.removeprefix("docker.io/")]
    docker("image", "rm", name)
    assert docker("image", "inspect", name, check=False).returncode != 0
    docker("load", "--input", str(archive))
    labels = json.loads(docker("image", "inspect", "--format", "{{json .Config.Labels}}", name).stdout)
    assert labels["org.opencontainers.image.version"] == name.rsplit(":", 1)[1]
    assert "appliance toolkit" in labels["org.opencontainers.image.source"]
    assert labels[images.RECIPE_LABEL]


def test_pause_runs_as_65535_and_exits_0_on_sigterm(built: Built) -> None:
    name = built.image("pause")
    container = docker("run", "--detach", name).stdout.strip()
    try:
        assert "pause 3.6" in docker("exec", container, "/pause", "-v").stdout
        started = time.monotonic()
        docker("stop", "--time", "20", container)  # SIGTERM, then SIGKILL after 20 s
        assert time.monotonic() - started < 10
        state = json.loads(docker("inspect", "--format", "{{json .State}}", container).stdout)
        assert state["ExitCode"] == 0
        assert docker("inspect", "--format", "{{.Config.User}}", container).stdout.strip() == "65535:65535"
    finally:
        docker("rm", "--force", container, check=False)


def test_etcd_runs_by_command_name(built: Built) -> None:
    result = docker("run", "--rm", built.image("etcd"), "etcd", "--version")
    assert "etcd Version: 3.5.1" in result.stdout


def test_static_base_looks_like_distroless(built: Built) -> None:
    container = docker("create", built.image("etcd")).stdout.strip()
    try:
        exported = subprocess.run(["docker", "export", container], capture_output=True, check=True).stdout
    finally:
        docker("rm", container)
    with tarfile.open(fileobj=io.BytesIO(exported)) as tar:
        members = {member.name: member for member in tar.getmembers()}
        assert members["tmp"].isdir() and members["tmp"].mode & 0o7777 == 0o1777
        assert members["usr/local/bin/etcd"].mode & 0o7777 == 0o755
        passwd = tar.extractfile("etc/passwd")
        assert passwd is not None and b"nobody:x:65534:65534:" in passwd.read()
        certificates = tar.extractfile(images.CA_BUNDLE)
        assert certificates is not None and certificates.read().count(b"BEGIN CERTIFICATE") > 100
        assert "bin/sh" not in members  # nothing but the binary runs there


def test_coredns_prints_its_version(built: Built) -> None:
    result = docker("run", "--rm", built.image("coredns"), "-version")
    assert "CoreDNS-1.8.6" in result.stdout


def test_flanneld_prints_its_version_and_has_iptables(built: Built) -> None:
    name = built.image("flannel")
    result = docker("run", "--rm", name, "--version")
    assert "v0.19.2" in result.stdout + result.stderr
    # kube-flannel.yml's install-cni init container runs `cp`; flanneld itself drives iptables.
    tools = docker("run", "--rm", "--entrypoint", "sh", name, "-c", "cp --version; iptables --version")
    assert "iptables v1.8" in tools.stdout


def test_flannel_cni_plugin_copies_itself_into_a_bind_mount(built: Built, tmp_path: Path) -> None:
    name = built.image("flannel-cni-plugin")
    target = tmp_path / "cni-bin"
    target.mkdir()
    docker("run", "--rm", "--volume", f"{target}:/out", name, "cp", "-f", "/flannel", "/out/flannel")
    copied = target / "flannel"
    assert copied.read_bytes() == (built.binaries("flannel-cni-plugin") / "flannel").read_bytes()
    assert copied.stat().st_mode & 0o111


def test_kube_proxy_has_iptables_and_conntrack(built: Built) -> None:
    name = built.image("kube-proxy")
    result = docker(
        "run", "--rm", name, "sh", "-c",
        "iptables --version && ip6tables --version && conntrack --version && ip -V && kube-proxy --version",
    )  # fmt: skip
    assert "iptables v1.8" in result.stdout
    assert "conntrack v1.4" in result.stdout
    assert "Kubernetes v1.23.5" in result.stdout


@pytest.mark.parametrize("key", ["kube-apiserver", "kube-controller-manager", "kube-scheduler"])
def test_control_plane_images_run_by_command_name(built: Built, key: str) -> None:
    result = docker("run", "--rm", built.image(key), key, "--version")
    assert "Kubernetes v1.23.5" in result.stdout


def test_a_second_build_rebuilds_and_saves_nothing(built: Built) -> None:
    lines: list[str] = []
    started = time.monotonic()
    wanted = {key: entry for key, entry in built.data["images"].items() if entry["image"] in built.archives}
    archives = images.build_images(
        {**built.data, "images": wanted}, built.binaries, built.out, log=lines.append
    )
    seconds = time.monotonic() - started
    print(f"cold build {built.seconds:.1f} s, warm build {seconds:.1f} s")
    assert archives == built.archives
    assert lines == []
    assert seconds < 30
