"""The rebuilt apt.kubernetes.io packages and the apt repository index, read back with dpkg's own tools."""

from __future__ import annotations

import copy
import gzip
import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from appliance.bundle import debs, signing, versions
from appliance.errors import ApplianceError
from appliance.lab import docker

pytestmark = pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="needs dpkg-deb (Debian's dpkg)")

DATA = versions.load()
KUBE = {"kubelet", "kubeadm", "kubectl", "crictl"}
PLUGINS = ("bridge", "host-local", "loopback")
DEB_NAMES = [
    "kubelet_1.23.5-00_amd64.deb",
    "kubeadm_1.23.5-00_amd64.deb",
    "kubectl_1.23.5-00_amd64.deb",
    "kubernetes-cni_1.1.1-00_amd64.deb",
    "cri-tools_1.23.0-00_amd64.deb",
]
KUBELET_UNIT = """\
[Unit]
Description=kubelet: The Kubernetes Node Agent
Documentation=https://kubernetes.io/docs/home/
Wants=network-online.target
After=network-online.target

[Service]
ExecStart=/usr/bin/kubelet
Restart=always
StartLimitInterval=0
RestartSec=10

[Install]
WantedBy=multi-user.target
"""
KUBEADM_DROP_IN = """\
# Note: This dropin only works with kubeadm and kubelet v1.11+
[Service]
Environment="KUBELET_KUBECONFIG_ARGS=--bootstrap-kubeconfig=/etc/kubernetes/bootstrap-kubelet.conf \
--kubeconfig=/etc/kubernetes/kubelet.conf"
Environment="KUBELET_CONFIG_ARGS=--config=/var/lib/kubelet/config.yaml"
# This is a file that "kubeadm init" and "kubeadm join" generates at runtime, populating the \
KUBELET_KUBEADM_ARGS variable dynamically
EnvironmentFile=-/var/lib/kubelet/kubeadm-flags.env
# This is a file that the user can use for overrides of the kubelet args as a last resort. Preferably, \
the user should use
# the .NodeRegistration.KubeletExtraArgs object in the configuration files instead. KUBELET_EXTRA_ARGS \
should be sourced from this file.
EnvironmentFile=-/etc/default/kubelet
ExecStart=
ExecStart=/usr/bin/kubelet $KUBELET_KUBECONFIG_ARGS $KUBELET_CONFIG_ARGS $KUBELET_KUBEADM_ARGS \
$KUBELET_EXTRA_ARGS
"""


def stand_in_binaries(directory: Path) -> dict[str, Path]:
    """Small executables in place of the release binaries: packaging does not look inside them."""
    binaries: dict[str, Path] = {}
    for name in sorted(KUBE):
        path = directory / name
        path.write_text(f"#!/bin/sh\necho '{name} stand-in'\n")
        path.chmod(0o755)
        binaries[name] = path
    plugins = directory / "cni-plugins"
    plugins.mkdir()
    for name in PLUGINS:
        shutil.copyfile("/bin/true", plugins / name)
        (plugins / name).chmod(0o755)
    binaries["cni-plugins"] = plugins
    return binaries


def dpkg_deb(*args: str) -> str:
    return subprocess.run(
        ["dpkg-deb", *args], capture_output=True, text=True, check=True, env={**os.environ, "TZ": "UTC"}
    ).stdout


def field(deb: Path, name: str) -> str:
    return dpkg_deb("--field", str(deb), name).strip()


def contents(deb: Path) -> list[tuple[str, str, str, str]]:
    """(mode, owner, time stamp, path) of every entry, as `dpkg-deb --contents` lists them."""
    rows = []
    for line in dpkg_deb("--contents", str(deb)).splitlines():
        mode, owner, _size, day, time, path = line.split(maxsplit=5)
        rows.append((mode, owner, f"{day} {time}", path))
    return rows


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    work = tmp_path_factory.mktemp("debs")
    paths = debs.package_kubernetes_debs(stand_in_binaries(work), DATA, work / "out")
    return {path.name: path for path in paths}


def test_five_packages_named_and_versioned_as_upstream(built):
    assert list(built) == DEB_NAMES
    assert {(field(p, "Package"), field(p, "Version"), field(p, "Architecture")) for p in built.values()} == {
        ("kubelet", "1.23.5-00", "amd64"),
        ("kubeadm", "1.23.5-00", "amd64"),
        ("kubectl", "1.23.5-00", "amd64"),
        ("kubernetes-cni", DATA["binaries"]["cni-plugins"]["deb_version"], "amd64"),
        ("cri-tools", DATA["binaries"]["crictl"]["deb_version"], "amd64"),
    }


def test_depends_lines_are_upstreams(built):
    depends = {name.split("_")[0]: field(path, "Depends") for name, path in built.items()}
    assert depends == {
        "kubelet": "iptables (>= 1.4.21), kubernetes-cni (>= 0.8.7), iproute2, socat, util-linux, mount, "
        "ebtables, ethtool, conntrack",
        "kubeadm": "kubelet (>= 1.19.0), kubectl (>= 1.19.0), kubernetes-cni (>= 0.8.7), "
        "cri-tools (>= 1.13.0)",
        "kubectl": "",
        "kubernetes-cni": "",
        "cri-tools": "",
    }


def test_control_says_who_made_it_and_that_it_was_rebuilt(built):
    for path in built.values():
        assert field(path, "Maintainer").startswith("Kubernetes Authors <kubernetes-dev")
        assert "Rebuilt by the appliance toolkit" in field(path, "Description")
        assert (field(path, "Section"), field(path, "Priority")) == ("misc", "optional")
        assert int(field(path, "Installed-Size")) > 0


def test_file_lists_owners_modes_and_times(built):
    stamp = "2022-03-16 15:58"  # kubernetes.build_date
    directory = "drwxr-xr-x"

    def tree(*entries: tuple[str, str]) -> list[tuple[str, str, str, str]]:
        return [(mode, "root/root", stamp, path) for mode, path in entries]

    def dirs(*paths: str) -> list[tuple[str, str]]:
        return [(directory, path) for path in paths]

    assert contents(built["kubelet_1.23.5-00_amd64.deb"]) == tree(
        *dirs("./", "./lib/", "./lib/systemd/", "./lib/systemd/system/"),
        ("-rw-r--r--", "./lib/systemd/system/kubelet.service"),
        *dirs("./usr/", "./usr/bin/"),
        ("-rwxr-xr-x", "./usr/bin/kubelet"),
    )
    assert contents(built["kubeadm_1.23.5-00_amd64.deb"]) == tree(
        *dirs(
            "./",
            "./etc/",
            "./etc/systemd/",
            "./etc/systemd/system/",
            "./etc/systemd/system/kubelet.service.d/",
        ),
        ("-rw-r--r--", "./etc/systemd/system/kubelet.service.d/10-kubeadm.conf"),
        *dirs("./usr/", "./usr/bin/"),
        ("-rwxr-xr-x", "./usr/bin/kubeadm"),
    )
    assert contents(built["kubectl_1.23.5-00_amd64.deb"]) == tree(
        *dirs("./", "./usr/", "./usr/bin/"), ("-rwxr-xr-x", "./usr/bin/kubectl")
    )
    assert contents(built["cri-tools_1.23.0-00_amd64.deb"]) == tree(
        *dirs("./", "./usr/", "./usr/bin/"), ("-rwxr-xr-x", "./usr/bin/crictl")
    )
    assert contents(built["kubernetes-cni_1.1.1-00_amd64.deb"]) == tree(
        *dirs("./", "./opt/", "./opt/cni/", "./opt/cni/bin/"),
        *[("-rwxr-xr-x", f"./opt/cni/bin/{name}") for name in PLUGINS],
    )


def extract(deb: Path, tmp_path: Path) -> Path:
    root = tmp_path / deb.name
    subprocess.run(["dpkg-deb", "--raw-extract", str(deb), str(root)], check=True)
    return root


def test_kubelet_unit_and_maintainer_scripts(built, tmp_path):
    root = extract(built["kubelet_1.23.5-00_amd64.deb"], tmp_path)
    assert (root / "lib/systemd/system/kubelet.service").read_text() == KUBELET_UNIT
    assert (root / "usr/bin/kubelet").read_text() == "#!/bin/sh\necho 'kubelet stand-in'\n"
    assert sorted(p.name for p in (root / "DEBIAN").iterdir()) == [
        "control",
        "md5sums",
        "postinst",
        "postrm",
        "prerm",
    ]
    postinst = (root / "DEBIAN/postinst").read_text()
    assert "deb-systemd-helper enable kubelet.service" in postinst  # enabled on installation, as upstream
    assert not (root / "DEBIAN/conffiles").exists()
    for script in ("postinst", "prerm", "postrm"):
        subprocess.run(["sh", "-n", str(root / "DEBIAN" / script)], check=True)


def test_kubeadm_drop_in_is_upstreams_and_a_conffile(built, tmp_path):
    deb = built["kubeadm_1.23.5-00_amd64.deb"]
    root = extract(deb, tmp_path)
    assert (root / "etc/systemd/system/kubelet.service.d/10-kubeadm.conf").read_text() == KUBEADM_DROP_IN
    assert (
        dpkg_deb("--info", str(deb), "conffiles") == "/etc/systemd/system/kubelet.service.d/10-kubeadm.conf\n"
    )
    assert "systemctl restart kubelet" in dpkg_deb("--info", str(deb), "postinst")


def test_md5sums_match_the_payload(built, tmp_path):
    for deb in built.values():
        root = extract(deb, tmp_path)
        for line in (root / "DEBIAN/md5sums").read_text().splitlines():
            digest, relative = line.split("  ", 1)
            assert hashlib.md5((root / relative).read_bytes()).hexdigest() == digest, (deb.name, relative)


def test_same_inputs_give_byte_identical_debs(built, tmp_path):
    binaries = stand_in_binaries(tmp_path)
    for path in [*binaries.values(), *binaries["cni-plugins"].iterdir()]:
        os.utime(path, (1_000_000_000, 1_000_000_000))  # older than build_date: not clamped by dpkg-deb
    old_umask = os.umask(0o077)
    try:
        again = debs.package_kubernetes_debs(binaries, DATA, tmp_path / "again")
    finally:
        os.umask(old_umask)
    assert [p.name for p in again] == list(built)
    for path in again:
        assert path.read_bytes() == built[path.name].read_bytes(), path.name


def test_versions_and_names_come_from_versions_data(tmp_path):
    data = copy.deepcopy(DATA)
    data["kubernetes"]["deb_version"] = "1.23.5-01"
    data["binaries"]["crictl"]["deb_version"] = "1.23.0-07"
    data["binaries"]["cni-plugins"]["deb"] = "cni-plugins-renamed"
    paths = debs.package_kubernetes_debs(stand_in_binaries(tmp_path), data, tmp_path / "out")
    assert [p.name for p in paths] == [
        "kubelet_1.23.5-01_amd64.deb",
        "kubeadm_1.23.5-01_amd64.deb",
        "kubectl_1.23.5-01_amd64.deb",
        "cni-plugins-renamed_1.1.1-00_amd64.deb",
        "cri-tools_1.23.0-07_amd64.deb",
    ]
    assert "cni-plugins-renamed (>= 0.8.7)" in field(paths[0], "Depends")


def test_os_dependencies_are_the_non_kubernetes_names_of_the_depends_lines():
    assert debs.os_dependencies() == [
        "conntrack",
        "ebtables",
        "ethtool",
        "iproute2",
        "iptables",
        "mount",
        "socat",
        "util-linux",
    ]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda b: b.pop("kubeadm"), "no kubeadm binary was given to package"),
        (lambda b: b.update(kubelet=b["kubelet"].parent / "missing"), "kubelet: "),
        (lambda b: b.update({"cni-plugins": b["kubectl"]}), "is not a directory of plugin binaries"),
    ],
)
def test_bad_binaries_are_one_line_errors(tmp_path, change, message):
    binaries = stand_in_binaries(tmp_path)
    change(binaries)
    with pytest.raises(ApplianceError, match=message) as raised:
        debs.package_kubernetes_debs(binaries, DATA, tmp_path / "out")
    assert "\n" not in str(raised.value)


def test_a_component_without_its_own_deb_version_must_be_at_the_kubernetes_version(tmp_path):
    data = copy.deepcopy(DATA)
    data["binaries"]["kubectl"]["version"] = "v1.24.0"
    with pytest.raises(ApplianceError, match=r"binaries.kubectl has no deb_version"):
        debs.package_kubernetes_debs(stand_in_binaries(tmp_path), data, tmp_path / "out")


def parse_index(text: str) -> dict[str, dict[str, str]]:
    """Packages paragraphs by file name; continuation lines kept under their field."""
    entries = {}
    for paragraph in text.strip().split("\n\n"):
        fields: dict[str, str] = {}
        last = ""
        for line in paragraph.splitlines():
            if line.startswith(" "):
                fields[last] += "\n" + line
            else:
                last, value = line.split(": ", 1)
                fields[last] = value
        entries[fields["Filename"]] = fields
    return entries


@pytest.fixture
def repository(built, tmp_path) -> Path:
    directory = tmp_path / "repo"
    directory.mkdir()
    for path in built.values():
        shutil.copyfile(path, directory / path.name)
    debs.index_repository(directory, epoch=debs.source_date_epoch(DATA))
    return directory


def test_packages_index_lists_every_deb_with_size_and_checksums(repository):
    entries = parse_index((repository / "Packages").read_text())
    assert sorted(entries) == sorted(f"./{name}" for name in DEB_NAMES)
    for name in DEB_NAMES:
        content = (repository / name).read_bytes()
        entry = entries[f"./{name}"]
        assert entry["Size"] == str(len(content))
        assert entry["SHA256"] == hashlib.sha256(content).hexdigest()
        assert entry["SHA1"] == hashlib.sha1(content).hexdigest()
        assert entry["MD5sum"] == hashlib.md5(content).hexdigest()
        assert entry["Package"] == field(repository / name, "Package")
        assert entry["Version"] == field(repository / name, "Version")
    assert entries["./kubeadm_1.23.5-00_amd64.deb"]["Depends"].startswith("kubelet (>= 1.19.0)")
    assert (
        gzip.decompress((repository / "Packages.gz").read_bytes()) == (repository / "Packages").read_bytes()
    )


def test_release_file_carries_the_indexes_checksums(repository):
    release = (repository / "Release").read_text()
    assert "Date: Wed, 16 Mar 2022 15:58:47 GMT\n" in release
    assert "Architectures: amd64\n" in release
    for name in ("Packages", "Packages.gz"):
        content = (repository / name).read_bytes()
        assert f" {hashlib.sha256(content).hexdigest()} {len(content):>16} {name}\n" in release
        assert f" {hashlib.md5(content).hexdigest()} {len(content):>16} {name}\n" in release


def test_index_is_deterministic(repository):
    before = {name: (repository / name).read_bytes() for name in ("Packages", "Packages.gz", "Release")}
    for path in repository.iterdir():
        os.utime(path, (2_000_000_000, 2_000_000_000))
    debs.index_repository(repository, epoch=debs.source_date_epoch(DATA))
    assert {name: (repository / name).read_bytes() for name in before} == before


@pytest.mark.skipif(shutil.which("dpkg-scanpackages") is None, reason="dpkg-dev is not installed")
def test_index_agrees_with_dpkg_scanpackages(repository):
    scanned = subprocess.run(
        ["dpkg-scanpackages", "--multiversion", "."],
        cwd=repository,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert parse_index((repository / "Packages").read_text()) == parse_index(scanned)


def test_indexing_an_empty_directory_is_an_error(tmp_path):
    with pytest.raises(ApplianceError, match=r"holds no \.deb to index"):
        debs.index_repository(tmp_path)


def test_download_container_is_removed_when_apt_fails(monkeypatch, tmp_path):
    calls: list[tuple[str, ...]] = []

    def fake_docker(*args: str, check: bool = True, **_: object) -> subprocess.CompletedProcess[str]:
        calls.append(args)
        if args[0] == "run":
            return subprocess.CompletedProcess(args, 100, "", "E: Unable to locate package no-such-package\n")
        return subprocess.CompletedProcess(args, 0, "", "")

    monkeypatch.setattr(docker, "docker", fake_docker)
    with pytest.raises(ApplianceError, match="E: Unable to locate package no-such-package"):
        debs.download_os_packages(["no-such-package"], "appliance-node:test", tmp_path / "out")
    run, remove = calls
    container = run[run.index("--name") + 1]
    assert remove == ("rm", "--force", container)
    assert "no-such-package" in run and "conntrack" in run  # kubelet's Depends come along
    assert f"{os.getuid()}:{os.getgid()}" in run  # the files are given to the caller


@pytest.fixture(scope="module")
def signing_key(tmp_path_factory) -> Path:
    """A key as `bundle build` generates one (ed25519, unprotected, in the state directory)."""
    state = tmp_path_factory.mktemp("state")
    previous = os.environ.get("APPLIANCE_STATE_DIR")
    os.environ["APPLIANCE_STATE_DIR"] = str(state)
    try:
        key = signing.ensure_default_key(lambda line: None)
        assert signing.ensure_default_key(lambda line: None) == key  # generated once, then reused
    finally:
        if previous is None:
            os.environ.pop("APPLIANCE_STATE_DIR")
        else:
            os.environ["APPLIANCE_STATE_DIR"] = previous
    assert key.stat().st_mode & 0o777 == 0o600
    return key


def gpgv(repository: Path, *files: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["gpgv", "--keyring", str(repository / signing.KEYRING), *(str(repository / f) for f in files)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip


def test_a_signed_repository_verifies_with_its_keyring_alone_and_an_altered_release_does_not(
    repository, signing_key
):
    fingerprint = debs.index_repository(repository, epoch=debs.source_date_epoch(DATA), key_file=signing_key)
    assert fingerprint and len(fingerprint) == 40
    assert gpgv(repository, "InRelease").returncode == 0
    assert gpgv(repository, "Release.gpg", "Release").returncode == 0
    inline = (repository / "InRelease").read_text()
    assert (repository / "Release").read_text() in inline.replace("\n- ", "\n")
    (repository / "Release").write_text((repository / "Release").read_text().replace("amd64", "arm64"))
    assert gpgv(repository, "Release.gpg", "Release").returncode != 0


def test_the_signatures_are_reproducible(repository, signing_key):
    epoch = debs.source_date_epoch(DATA)
    debs.index_repository(repository, epoch=epoch, key_file=signing_key)
    names = ("Release", "InRelease", "Release.gpg", signing.KEYRING)
    before = {name: (repository / name).read_bytes() for name in names}
    debs.index_repository(repository, epoch=epoch, key_file=signing_key)
    assert {name: (repository / name).read_bytes() for name in names} == before


def test_an_unsigned_index_leaves_no_stale_signature(repository, signing_key):
    debs.index_repository(repository, epoch=debs.source_date_epoch(DATA), key_file=signing_key)
    assert debs.index_repository(repository, epoch=debs.source_date_epoch(DATA)) is None
    assert not any((repository / name).exists() for name in ("InRelease", "Release.gpg", signing.KEYRING))


def test_a_signing_key_file_without_a_secret_key_is_refused(repository, tmp_path, signing_key):
    debs.index_repository(repository, epoch=0, key_file=signing_key)
    public = tmp_path / "public.gpg"
    public.write_bytes((repository / signing.KEYRING).read_bytes())
    with pytest.raises(ApplianceError, match="secret signing keys"):
        debs.index_repository(repository, epoch=0, key_file=public)
    with pytest.raises(ApplianceError, match="no such file"):
        debs.index_repository(repository, epoch=0, key_file=tmp_path / "missing.asc")
