"""appliance.bundle.upstream: mirror rules and release archives (downloads run in tests/lab)."""

from __future__ import annotations

import hashlib
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
    assert "--mirror applies to --source upstream and to site images (--image)" in result.stderr
    result = run_cli("bundle", "build", "--out", str(tmp_path / "b"), "--source", "ftp")
    assert result.returncode == 2
    assert "--source ftp: this toolkit builds bundles from: build, upstream" in result.stderr


def test_etcd_tools_come_from_one_release_archive_downloaded_once(tmp_path, monkeypatch):
    """etcdctl and etcdutl are two targets pinning the same archive: one download, each takes its own
    binary (not etcd, not README-etcdctl.md)."""
    monkeypatch.setenv("APPLIANCE_CACHE_DIR", str(tmp_path / "cache"))
    release = tmp_path / "release"
    release.mkdir()
    archive = release / "etcd-v3.5.1-linux-amd64.tar.gz"
    top = "etcd-v3.5.1-linux-amd64/"
    _tgz(archive, {top + name: name.encode() for name in ("etcd", "etcdctl", "etcdutl", "README-etcdctl.md")})
    pin = {"amd64": hashlib.sha256(archive.read_bytes()).hexdigest()}
    url = f"{release.as_uri()}/etcd-{{version}}-linux-{{arch}}.tar.gz"
    entry = {"version": "v3.5.1", "upstream_url": url, "sha256": pin}
    data = {**DATA, "binaries": {"etcdctl": entry, "etcdutl": entry}}
    logged: list[str] = []
    fetcher = upstream.Fetcher(data, {}, log=logged.append)
    for tool in ("etcdctl", "etcdutl"):
        out = fetcher.binaries(tool)
        assert [p.name for p in out.iterdir()] == [tool]
        assert (out / tool).read_bytes() == tool.encode()
    assert len([line for line in logged if "downloading" in line]) == 1


def test_a_release_archive_that_is_not_the_pinned_one_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("APPLIANCE_CACHE_DIR", str(tmp_path / "cache"))
    archive = tmp_path / "etcd-v3.5.1-linux-amd64.tar.gz"
    _tgz(archive, {"etcd-v3.5.1-linux-amd64/etcdctl": b"tampered"})
    entry = {"version": "v3.5.1", "upstream_url": archive.as_uri(), "sha256": {"amd64": "0" * 64}}
    fetcher = upstream.Fetcher({**DATA, "binaries": {"etcdctl": entry}}, {}, log=lambda _: None)
    with pytest.raises(
        ApplianceError, match=r"etcdctl: .* has sha256 \w+, not the 0{64} that versions.yml pins"
    ):
        fetcher.binaries("etcdctl")
