"""appliance.bundle.upstream: mirror rules and release archives (downloads run in tests/lab)."""

from __future__ import annotations

import io
import tarfile

import pytest

from appliance.bundle import upstream
from appliance.errors import ApplianceError, UsageError
from tests.conftest import run_cli

DATA = {"architectures": ["amd64"], "binaries": {}, "images": {}}


def test_mirrors_parse_and_the_longest_prefix_wins():
    mirrors = upstream.parse_mirrors(
        [
            "https://github.com=http://m/gh/",
            "https://github.com/flannel-io=http://m/flannel",
            "k8s.gcr.io=http://r:5000",
        ]
    )
    fetcher = upstream.Fetcher(DATA, mirrors, log=lambda _: None)
    assert fetcher.url("https://github.com/x/y/releases/a.tgz") == "http://m/gh/x/y/releases/a.tgz"
    assert fetcher.url("https://github.com/flannel-io/f.yml") == "http://m/flannel/f.yml"
    assert fetcher.url("https://github.community/a") == "https://github.community/a"  # prefix, not substring
    assert fetcher.url("https://dl.k8s.io/release/v1.23.5/bin/linux/amd64/kubeadm").startswith(
        "https://dl.k8s.io/"
    )


@pytest.mark.parametrize("value", ["https://dl.k8s.io", "=http://m", "k8s.gcr.io="])
def test_a_malformed_mirror_is_a_usage_error(value):
    with pytest.raises(UsageError, match="expected FROM=TO"):
        upstream.parse_mirrors([value])


def _tgz(path, members):
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_extract_flattens_and_keeps_only_the_named_binary(tmp_path):
    archive = tmp_path / "helm.tar.gz"
    _tgz(archive, {"linux-amd64/helm": b"helm", "linux-amd64/README.md": b"doc"})
    out = tmp_path / "out"
    out.mkdir()
    upstream._extract(archive, out, only="helm", what="helm")
    assert [p.name for p in out.iterdir()] == ["helm"]
    assert (out / "helm").stat().st_mode & 0o111


def test_extract_names_the_missing_binary(tmp_path):
    archive = tmp_path / "crictl.tar.gz"
    _tgz(archive, {"README": b"x"})
    with pytest.raises(ApplianceError, match=r"crictl: crictl.tar.gz holds no crictl"):
        upstream._extract(archive, tmp_path, only="crictl", what="crictl")


def test_cli_refuses_mirror_without_upstream_and_unknown_sources(tmp_path):
    result = run_cli("bundle", "build", "--out", str(tmp_path / "b"), "--mirror", "a=b")
    assert result.returncode == 2
    assert "--mirror applies to --source upstream only" in result.stderr
    result = run_cli("bundle", "build", "--out", str(tmp_path / "b"), "--source", "ftp")
    assert result.returncode == 2
    assert "--source ftp: this toolkit builds bundles from: build, upstream" in result.stderr
