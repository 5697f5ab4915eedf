"""The bundle's apt repository alone installs a Kubernetes 1.23.5 node: OS packages downloaded in the node
image, the five rebuilt Kubernetes packages, the index; then a node with no network and no other apt
source installs kubeadm, kubelet, kubectl, docker.io and containerd from it and holds the Kubernetes ones.

Needs a docker engine and Debian's archive (`make setup`); builds the node image when its recipe changed.
"""

from __future__ import annotations

import copy
import os
import secrets
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from appliance.bundle import debs, signing, versions
from appliance.lab import docker, image, nodes
from tests.conftest import PROJECT

pytestmark = pytest.mark.lab

DATA = versions.load()
HELD = ("kubeadm", "kubelet", "kubectl")
PINNED = [f"{name}={DATA['kubernetes']['deb_version']}" for name in HELD]


def stand_in_binaries(directory: Path, version: str) -> dict[str, Path]:
    """Small executables in place of the release binaries; each says which package it came from."""
    directory.mkdir(parents=True)
    binaries: dict[str, Path] = {}
    for name in ("crictl", "kubeadm", "kubectl", "kubelet"):
        path = directory / name
        path.write_text(f"#!/bin/sh\necho '{name} {version} stand-in'\n")
        binaries[name] = path
    plugins = directory / "cni-plugins"
    plugins.mkdir()
    for name in ("bridge", "host-local", "loopback"):
        shutil.copyfile("/bin/true", plugins / name)
    binaries["cni-plugins"] = plugins
    return binaries


def next_patch_release(data: dict) -> dict:
    """versions data for 1.23.6: a newer kubeadm/kubelet/kubectl for `apt-mark hold` to hold back."""
    newer = copy.deepcopy(data)
    newer["kubernetes"].update(version="v1.23.6", deb_version="1.23.6-00")
    for name in HELD:
        newer["binaries"][name]["version"] = "v1.23.6"
    return newer


@pytest.fixture(scope="module")
def node_image() -> str:
    return image.ensure_image(log=lambda *_: None)


@pytest.fixture(scope="module")
def repository(node_image: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("bundle") / "debs"
    started = time.monotonic()
    downloaded = debs.download_os_packages(DATA["os_packages"]["debian-12"], node_image, root)
    seconds = time.monotonic() - started
    size = sum(path.stat().st_size for path in downloaded)
    print(f"\ndownload_os_packages: {len(downloaded)} debs, {size / 1e6:.1f} MB in {seconds:.1f} s")

    work = tmp_path_factory.mktemp("binaries")
    debs.package_kubernetes_debs(stand_in_binaries(work / "current", "v1.23.5"), DATA, root)
    newer = next_patch_release(DATA)
    for path in debs.package_kubernetes_debs(
        stand_in_binaries(work / "newer", "v1.23.6"), newer, work / "out"
    ):
        if path.name.split("_")[0] in HELD:
            shutil.copyfile(path, root / path.name)
    key = signing.ensure_default_key(print)  # this machine's bundle signing key, as `bundle build` uses
    debs.index_repository(root, epoch=debs.source_date_epoch(DATA), key_file=key)
    return root


@pytest.fixture(scope="module")
def offline_node(node_image: str, repository: Path):
    """A node booted with systemd, as in the lab, but with no network and the repository mounted."""
    platform = nodes.platform_settings(PROJECT)
    name = f"appliance-debs-test-{secrets.token_hex(4)}"
    args = ["run", "--detach", "--name", name, "--hostname", "offline", "--network", "none"]
    args += ["--cgroupns", platform["cgroupns_mode"], "--stop-signal", platform["stop_signal"]]
    args += [f"--cap-add={cap}" for cap in platform["capabilities"]]
    args += [f"--security-opt={opt}" for opt in platform["security_opts"]]
    args += [f"--tmpfs={path}" for path in platform["tmpfs"]]
    args += [f"--volume={volume}" for volume in platform["volumes"]]
    args += [f"--env={key}={value}" for key, value in platform["env"].items()]
    args += ["--device-cgroup-rule=a *:* rwm", f"--volume={repository}:/bundle/debs:ro"]
    try:
        docker.docker(*args, node_image, platform["command"])
        deadline = time.monotonic() + 60
        state = ""
        while time.monotonic() < deadline:
            state = sh(name, "systemctl is-system-running").stdout.strip()
            if state in ("running", "degraded"):
                break
            time.sleep(1)
        assert state in ("running", "degraded"), f"systemd did not come up: {state}"
        yield name
    finally:
        docker.docker("rm", "--force", "--volumes", name, check=False)


def sh(container: str, script: str) -> subprocess.CompletedProcess[str]:
    return docker.docker("exec", container, "sh", "-c", script, check=False)


def test_downloaded_debs_hold_the_named_packages_and_kubelets_dependencies(repository):
    names = {path.name.split("_")[0] for path in repository.glob("*.deb")}
    assert set(DATA["os_packages"]["debian-12"]) <= names
    assert set(debs.os_dependencies()) <= names
    assert "python3" in names  # nfs-common needs it; the node image has it, a minimal Debian 12 has not
    assert not [path.name for path in repository.glob("*%3a*")]  # epochs left out of file names
    assert {(path.stat().st_uid, path.stat().st_gid) for path in repository.iterdir()} == {
        (os.getuid(), os.getgid())
    }


def test_offline_node_installs_kubernetes_and_runtimes_from_the_repository_alone(offline_node):
    assert sh(offline_node, "getent ahosts deb.debian.org").returncode != 0  # no network at all
    update = sh(
        offline_node,
        "rm -f /etc/apt/sources.list.d/* && "
        f"echo 'deb [signed-by=/bundle/debs/{signing.KEYRING}] file:/bundle/debs ./' > /etc/apt/sources.list"
        " && apt-get update",
    )
    assert update.returncode == 0, update.stdout + update.stderr
    assert "W:" not in update.stderr, update.stderr  # a Release file apt finds complete, and signed

    started = time.monotonic()
    install = sh(
        offline_node,
        f"DEBIAN_FRONTEND=noninteractive apt-get install -y {' '.join(PINNED)} docker.io containerd",
    )
    assert install.returncode == 0, install.stdout[-3000:] + install.stderr
    print(f"\napt-get install on the offline node: {time.monotonic() - started:.1f} s")

    status = sh(offline_node, "dpkg -s kubeadm kubelet kubectl kubernetes-cni cri-tools docker.io containerd")
    assert status.returncode == 0, status.stderr
    assert "Package: kubeadm\nStatus: install ok installed" in status.stdout
    assert "Version: 1.23.5-00" in sh(offline_node, "dpkg -s kubeadm").stdout
    assert sh(offline_node, "test -f /etc/systemd/system/kubelet.service.d/10-kubeadm.conf").returncode == 0
    assert sh(offline_node, "kubeadm").stdout == "kubeadm v1.23.5 stand-in\n"
    assert sh(offline_node, "systemctl is-enabled kubelet").stdout.strip() == "enabled"  # as upstream's
    assert "10-kubeadm.conf" in sh(offline_node, "systemctl cat kubelet").stdout


def test_a_machine_with_only_the_base_system_finds_every_dependency_in_the_repository(offline_node):
    wanted = " ".join([*PINNED, *DATA["os_packages"]["debian-12"]])
    simulated = sh(
        offline_node,
        debs.BASE_SYSTEM_STATUS_SCRIPT
        + f"apt-get -s -o Dir::State::status=/tmp/base-status install {wanted}",
    )
    assert simulated.returncode == 0, simulated.stdout[-3000:] + simulated.stderr
    assert "Inst python3 " in simulated.stdout


def test_held_kubernetes_packages_stay_at_1_23_5(offline_node):
    upgradable = sh(offline_node, "apt-get -s upgrade").stdout
    assert "Inst kubeadm [1.23.5-00] (1.23.6-00" in upgradable  # 1.23.6 is there to be held back

    hold = sh(offline_node, f"apt-mark hold {' '.join(HELD)}")
    assert hold.returncode == 0, hold.stderr
    assert sh(offline_node, "apt-mark showhold").stdout.split() == sorted(HELD)
    simulated = sh(offline_node, "apt-get -s upgrade")
    assert simulated.returncode == 0, simulated.stderr
    installs = [line for line in simulated.stdout.splitlines() if line.startswith(("Inst ", "Conf "))]
    assert not [line for line in installs if line.split()[1] in HELD], installs
    assert "kept back" in simulated.stdout
