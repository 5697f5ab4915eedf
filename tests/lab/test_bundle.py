"""The offline bundle, built from source with the real builders (cached under ~/.cache/appliance/bundle;
the first build on a machine takes tens of minutes), then checked the way an operator checks it."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from appliance.bundle import versions
from tests.conftest import PROJECT, run_cli

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("bundle") / "bundle"
    result = run_cli("bundle", "build", "--out", str(out), timeout=4 * 3600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr
    digest = re.search(r"manifest sha256 ([0-9a-f]{64})", result.stdout).group(1)
    return out, digest


def test_bundle_has_the_stable_layout_and_every_artifact(bundle):
    out, _ = bundle
    data = versions.load(versions.versions_file(PROJECT))
    files = json.loads((out / "manifest.json").read_text())["files"]
    for name in ("kubeadm", "kubelet", "kubectl", "crictl", "helm"):
        assert f"bin/{name}" in files
    for package in ("kubeadm", "kubelet", "kubectl"):
        assert f"debs/{package}_1.23.5-00_amd64.deb" in files
    assert any(name.startswith("debs/kubernetes-cni_1.1.1-00_") for name in files)
    assert any(name.startswith("debs/cri-tools_1.23.0-00_") for name in files)
    for package in ("docker.io", "containerd", "docker-registry"):
        assert any(name.startswith(f"debs/{package}_") for name in files), package
    for index in ("debs/Packages", "debs/Packages.gz", "debs/Release"):
        assert index in files
    images = {entry["component"] + ":" + entry["version"] for entry in files.values() if entry["component"]}
    for image in versions.image_names(data):  # every one, the GPU operator's and NFD's too
        assert image in images, image
    assert "charts/gpu-operator-v1.11.1.tgz" in files
    assert "manifests/kube-flannel.yml" in files
    # The controller, offline (controller.py): install.sh, the toolkit's and its dependencies' wheels,
    # pip's, and the collections with their dependencies.
    assert files["controller/install.sh"]["component"] == "appliance-controller"
    assert files["controller/wheels/appliance-0.1.0-py3-none-any.whl"]["component"] == "python:appliance"
    for wheel in (
        "pip-",
        "ansible_core-2.19.14-",
        "ansible_runner-2.4.3-",
        "ansible-12.3.0-",
        "cryptography-",
    ):
        assert any(name.startswith(f"controller/wheels/{wheel}") for name in files), wheel
    for collection in (
        "community-crypto-3.0.5",
        "kubernetes-core-6.2.0",
        "community-library_inventory_filtering_v1",
    ):
        assert any(name.startswith(f"controller/collections/{collection}") for name in files), collection
    assert "controller/project.tar.gz" in files


def test_bundle_verifies_against_its_printed_manifest_digest(bundle):
    out, digest = bundle
    result = run_cli("bundle", "verify", str(out), "--manifest-sha256", digest)
    assert result.returncode == 0, result.stderr
    assert "files verified" in result.stdout


def run(*command: object) -> str:
    return subprocess.run([str(c) for c in command], capture_output=True, text=True, check=True).stdout


def test_kubernetes_binaries_report_the_release(bundle):
    out, _ = bundle
    assert run(out / "bin" / "kubeadm", "version", "-o", "short").strip() == "v1.23.5"
    client = json.loads(run(out / "bin" / "kubectl", "version", "--client", "-o", "json"))
    assert client["clientVersion"]["gitCommit"] == "c285e781331a3785a7f436042c65c5641ce8a9e9"
    images = run(
        out / "bin" / "kubeadm", "config", "images", "list", "--kubernetes-version", "v1.23.5"
    ).split()
    files = json.loads((out / "manifest.json").read_text())["files"]
    bundled = {entry["component"] + ":" + entry["version"] for entry in files.values()}
    assert set(images) <= bundled


@pytest.mark.parametrize("kind", ["bin/", "debs/", "images/", "charts/", "manifests/", "controller/wheels/"])
def test_one_altered_byte_in_any_part_is_named(bundle, kind):
    out, _ = bundle
    victim = sorted(p for p in (out / kind).iterdir() if p.is_file())[0]
    original = victim.read_bytes()
    altered = bytearray(original)
    altered[len(altered) // 2] ^= 0x01
    try:
        victim.write_bytes(bytes(altered))
        result = run_cli("bundle", "verify", str(out))
        assert result.returncode == 1
        assert f"altered: {victim.relative_to(out).as_posix()}" in result.stderr
    finally:
        victim.write_bytes(original)
    assert run_cli("bundle", "verify", str(out)).returncode == 0


def test_rebuilding_with_nothing_changed_gives_the_same_bundle(bundle, tmp_path):
    _, digest = bundle
    result = run_cli("bundle", "build", "--out", str(tmp_path / "again"), timeout=3600)
    assert result.returncode == 0, result.stderr
    assert f"manifest sha256 {digest}" in result.stdout
