"""manifest.json and `appliance bundle verify`: every missing, altered or extra file is named."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from appliance.bundle import manifest
from appliance.errors import ApplianceError


@pytest.fixture
def bundle(tmp_path: Path) -> tuple[Path, str]:
    root = tmp_path / "bundle"
    for relative, content in {
        "bin/kubeadm": b"kubeadm binary",
        "debs/kubeadm_1.23.5-00_amd64.deb": b"a deb",
        "debs/Packages": b"Package: kubeadm\n",
        "images/pause.tar": b"\x00" * 1000,
    }.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    digest = manifest.write(
        root,
        {"bin/kubeadm": ("kubeadm", "v1.23.5"), "debs/": ("apt-repository", "1"), "images/": ("images", "1")},
        {"kubernetes": "v1.23.5"},
    )
    return root, digest


def test_manifest_lists_every_file_with_component_version_size_and_sha256(bundle):
    root, digest = bundle
    document = json.loads((root / "manifest.json").read_text())
    assert sorted(document["files"]) == [
        "bin/kubeadm",
        "debs/Packages",
        "debs/kubeadm_1.23.5-00_amd64.deb",
        "images/pause.tar",
    ]
    assert document["files"]["bin/kubeadm"] == {
        "component": "kubeadm",
        "version": "v1.23.5",
        "size": 14,
        "sha256": hashlib.sha256(b"kubeadm binary").hexdigest(),
    }
    assert document["files"]["debs/Packages"]["component"] == "apt-repository"
    assert manifest.sha256_of(root / "manifest.json") == digest


def test_untouched_bundle_verifies(bundle, cli):
    root, digest = bundle
    result = cli("bundle", "verify", str(root), "--manifest-sha256", digest)
    assert result.returncode == 0, result.stderr
    assert "4 files verified" in result.stdout


@pytest.mark.parametrize("relative", ["bin/kubeadm", "debs/Packages", "images/pause.tar"])
def test_one_altered_byte_is_named(bundle, cli, relative):
    root, _ = bundle
    path = root / relative
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01  # same size, one bit flipped
    path.write_bytes(bytes(data))
    result = cli("bundle", "verify", str(root))
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"appliance: error: bundle {root} failed verification: altered: {relative}"
    ]


def test_missing_and_extra_files_are_named_together(bundle, cli):
    root, _ = bundle
    (root / "images" / "pause.tar").unlink()
    (root / "bin" / "kubectl").write_text("not built by the bundle")
    result = cli("bundle", "verify", str(root), "--json")
    assert result.returncode == 1
    verdict = json.loads(result.stdout)
    assert verdict["missing"] == ["images/pause.tar"]
    assert verdict["extra"] == ["bin/kubectl"]
    assert "missing: images/pause.tar" in result.stderr
    assert "not in the manifest: bin/kubectl" in result.stderr


def test_a_replaced_manifest_is_caught_by_its_pinned_sha256(bundle, cli):
    root, digest = bundle
    (root / "bin" / "kubeadm").write_text("a trojan")
    manifest.write(
        root, {"bin/kubeadm": ("kubeadm", "v1.23.5"), "debs/": ("x", "1"), "images/": ("x", "1")}, {}
    )
    assert cli("bundle", "verify", str(root)).returncode == 0  # consistent, but not the bundle that was built
    result = cli("bundle", "verify", str(root), "--manifest-sha256", digest)
    assert result.returncode == 1
    assert "this is not the bundle that was built" in result.stderr


def test_not_a_bundle(tmp_path, cli):
    result = cli("bundle", "verify", str(tmp_path))
    assert result.returncode == 1
    assert "has no manifest.json" in result.stderr


def test_file_without_component_is_refused(tmp_path):
    (tmp_path / "stray").write_text("x")
    with pytest.raises(ApplianceError, match="stray belongs to no component"):
        manifest.write(tmp_path, {}, {})
