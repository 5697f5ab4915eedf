"""appliance.bundle.build: what the cached Kubernetes .debs are keyed by (full builds run in tests/lab)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from appliance.bundle import build, versions
from tests.conftest import PROJECT


def test_kubernetes_debs_are_repackaged_only_when_what_they_hold_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A binary that goes in no .deb (helm, etcdctl, etcdutl) must not cost minutes of xz."""
    monkeypatch.setenv("APPLIANCE_CACHE_DIR", str(tmp_path / "cache"))
    packaged: list[str] = []

    def package(inputs: dict[str, Path], data: dict[str, Any], out: Path) -> list[Path]:
        packaged.append(data["binaries"]["kubeadm"]["version"])
        out.mkdir(parents=True)
        deb = out / "kubeadm_1.23.5-00_amd64.deb"
        deb.write_bytes(b"deb")
        return [deb]

    monkeypatch.setattr(build.debs, "package_kubernetes_debs", package)
    kubeadm = tmp_path / "kubeadm"
    kubeadm.write_bytes(b"kubeadm binary")
    data = copy.deepcopy(versions.load(versions.versions_file(PROJECT)))
    first = build._kubernetes_debs({"kubeadm": kubeadm}, data, log=lambda _: None)
    assert [deb.name for deb in first] == ["kubeadm_1.23.5-00_amd64.deb"]

    data["binaries"]["etcdutl"]["version"] = "v3.5.2"
    data["binaries"]["newtool"] = {"version": "v1.0.0"}
    data["os_packages"]["debian-12"].append("jq")
    assert build._kubernetes_debs({"kubeadm": kubeadm}, data, log=lambda _: None) == first
    assert len(packaged) == 1

    data["binaries"]["kubeadm"]["deb_version"] = "1.23.5-01"
    build._kubernetes_debs({"kubeadm": kubeadm}, data, log=lambda _: None)
    kubeadm.write_bytes(b"kubeadm binary, rebuilt")
    build._kubernetes_debs({"kubeadm": kubeadm}, data, log=lambda _: None)
    assert len(packaged) == 3
