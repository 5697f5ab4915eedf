"""The bundle's apt repository: the Kubernetes packages, rebuilt; the OS packages, downloaded; the index.

apt.kubernetes.io, where kubeadm, kubelet and kubectl 1.23.5-00 were published, is gone (pkgs.k8s.io
starts at 1.24), so the five packages a kubeadm node installs are rebuilt here from the release
binaries with upstream's files, systemd unit, kubeadm drop-in, dependencies and versions. Beside them
go the Debian packages those depend on and the ones versions.yml lists, with every dependency a fresh
Debian 12 node lacks, so the repository alone is enough for
`apt-get install kubeadm kubelet kubectl docker.io containerd` on a machine with no other source.
"""

from __future__ import annotations

import email.utils
import gzip
import hashlib
import os
import re
import secrets
import shutil
import subprocess
import tempfile
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path, PurePosixPath
from typing import Any

from appliance.bundle import signing
from appliance.errors import ApplianceError
from appliance.lab import docker

KUBERNETES_MAINTAINER = "Kubernetes Authors <kubernetes-dev+release@googlegroups.com>"
TOOLS_MAINTAINER = "Kubernetes Authors <kubernetes-dev@googlegroups.com>"
REBUILT_NOTE = (
    "Rebuilt by the appliance toolkit (appliance.bundle.debs) from the release binaries, "
    "with the files, systemd units, dependencies and version of the package apt.kubernetes.io published."
)
MAINTAINER_SCRIPTS = frozenset({"preinst", "postinst", "prerm", "postrm"})


@dataclass(frozen=True)
class KubeDeb:
    """One package of the former apt.kubernetes.io repository, as it was for Kubernetes 1.23."""

    component: str  # its entry under `binaries` in versions.yml, which names the package and its version
    install_as: str  # where the binary goes in the package; ending in "/": every file of a directory
    summary: str
    description: str
    maintainer: str = KUBERNETES_MAINTAINER
    # Upstream's Depends, in upstream's order; "{component}" stands for the package built from it here.
    depends: tuple[str, ...] = ()


KUBE_DEBS = (
    KubeDeb(
        "kubelet",
        "usr/bin/kubelet",
        "Kubernetes Node Agent",
        "The node agent of Kubernetes, the container cluster manager",
        depends=(
            "iptables (>= 1.4.21)",
            "{cni-plugins} (>= 0.8.7)",
            "iproute2",
            "socat",
            "util-linux",
            "mount",
            "ebtables",
            "ethtool",
            "conntrack",
        ),
    ),
    KubeDeb(
        "kubeadm",
        "usr/bin/kubeadm",
        "Kubernetes Cluster Bootstrapping Tool",
        "The Kubernetes command line tool for bootstrapping a Kubernetes cluster.",
        depends=(
            "{kubelet} (>= 1.19.0)",
            "{kubectl} (>= 1.19.0)",
            "{cni-plugins} (>= 0.8.7)",
            "{crictl} (>= 1.13.0)",
        ),
    ),
    KubeDeb(
        "kubectl",
        "usr/bin/kubectl",
        "Kubernetes Command Line Tool",
        "The Kubernetes command line tool for interacting with the Kubernetes API.",
    ),
    KubeDeb(
        "cni-plugins",
        "opt/cni/bin/",
        "Kubernetes CNI",
        "The binaries required to provision container networking",
        maintainer=TOOLS_MAINTAINER,
    ),
    KubeDeb(
        "crictl",
        "usr/bin/crictl",
        "Container Runtime Interface Tools",
        "Binaries that interact with the container runtime through the container runtime interface",
        maintainer=TOOLS_MAINTAINER,
    ),
)

_PACKAGE_NAME = re.compile(r"[a-z0-9][a-z0-9+.-]+")


def os_dependencies() -> list[str]:
    """The Debian packages the Kubernetes packages depend on, taken from the Depends written into them."""
    names = {
        match.group()
        for deb in KUBE_DEBS
        for dependency in deb.depends
        if not dependency.startswith("{") and (match := _PACKAGE_NAME.match(dependency))
    }
    return sorted(names)


def source_date_epoch(data: dict[str, Any]) -> int:
    """kubernetes.build_date as seconds since 1970: the time stamp of every file the bundle builds."""
    build_date = data["kubernetes"]["build_date"]
    try:
        return int(datetime.fromisoformat(str(build_date)).timestamp())
    except ValueError as error:
        raise ApplianceError(
            f"versions.yml: kubernetes.build_date {build_date!r} is not an ISO 8601 time ({error})"
        ) from error


def deb_name(data: dict[str, Any], component: str) -> str:
    return _binary_field(data, component, "deb")


def deb_version(data: dict[str, Any], component: str) -> str:
    """A component's own deb_version, or kubernetes.deb_version for the binaries of Kubernetes itself."""
    entry = data["binaries"].get(component) or {}
    if "deb_version" in entry:
        return str(entry["deb_version"])
    kubernetes = data["kubernetes"]
    if entry.get("version") != kubernetes["version"]:
        raise ApplianceError(
            f"versions.yml: binaries.{component} has no deb_version and its version {entry.get('version')!r} "
            f"is not kubernetes.version {kubernetes['version']!r}; add binaries.{component}.deb_version"
        )
    return str(kubernetes["deb_version"])


def _binary_field(data: dict[str, Any], component: str, field: str) -> str:
    value = (data["binaries"].get(component) or {}).get(field)
    if not value:
        raise ApplianceError(f"versions.yml: binaries.{component}.{field} is missing; the debs need it")
    return str(value)


def package_kubernetes_debs(
    binaries: dict[str, Path], data: dict[str, Any], out: Path, *, architecture: str | None = None
) -> list[Path]:
    """Build kubelet, kubeadm, kubectl, kubernetes-cni and cri-tools .debs into OUT and return their paths.

    BINARIES maps each component (kubelet, kubeadm, kubectl, crictl: a file; cni-plugins: a directory of
    plugins) to what goes into its package; DATA is the parsed versions.yml. The same inputs give
    byte-identical packages: modes, owners and times are fixed and entries sorted.
    """
    architecture = architecture or _only_architecture(data)
    epoch = source_date_epoch(data)
    names = {deb.component: deb_name(data, deb.component) for deb in KUBE_DEBS}
    out.mkdir(parents=True, exist_ok=True)
    built = []
    with tempfile.TemporaryDirectory(prefix="appliance-debs-") as tmp:
        for deb in KUBE_DEBS:
            package, version = names[deb.component], deb_version(data, deb.component)
            root = Path(tmp) / package
            _stage(deb, _source(binaries, deb), root)
            depends = ", ".join(dependency.format(**names) for dependency in deb.depends)
            _write_control(root, deb, package, version, architecture, depends)
            _fix_modes_and_times(root, epoch)
            target = out / f"{package}_{version}_{architecture}.deb"
            _run_dpkg_deb(
                ["--root-owner-group", "-Zxz", "--threads-max=1", "--build", str(root), str(target)],
                f"building {target.name}",
                epoch,
            )
            built.append(target)
    return built


def _only_architecture(data: dict[str, Any]) -> str:
    architectures = data.get("architectures") or []
    if len(architectures) != 1:
        raise ApplianceError(
            f"versions.yml lists architectures {architectures}; name the one to package (architecture=...)"
        )
    return str(architectures[0])


def _source(binaries: dict[str, Path], deb: KubeDeb) -> Path:
    source = binaries.get(deb.component)
    if source is None:
        raise ApplianceError(f"no {deb.component} binary was given to package (binaries[{deb.component!r}])")
    source = Path(source)
    wants_directory = deb.install_as.endswith("/")
    if wants_directory and not (source.is_dir() and any(p.is_file() for p in source.iterdir())):
        raise ApplianceError(f"{deb.component}: {source} is not a directory of plugin binaries")
    if not wants_directory and not source.is_file():
        raise ApplianceError(f"{deb.component}: {source} is not a file")
    return source


def _stage(deb: KubeDeb, source: Path, root: Path) -> None:
    """Lay out the package's tree in ROOT: upstream's extra files (deb-templates/), then the binaries."""
    for relative, content in _template_files(deb.component):
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    if deb.install_as.endswith("/"):
        directory = root / deb.install_as
        directory.mkdir(parents=True, exist_ok=True)
        for plugin in sorted(p for p in source.iterdir() if p.is_file()):
            shutil.copyfile(plugin, directory / plugin.name)
    else:
        path = root / deb.install_as
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, path)
    (root / "DEBIAN").mkdir(exist_ok=True)


def _template_files(component: str) -> Iterator[tuple[PurePosixPath, bytes]]:
    top = resources.files("appliance.bundle").joinpath("deb-templates", component)
    if top.is_dir():
        yield from _walk(top, PurePosixPath())


def _walk(node: Traversable, relative: PurePosixPath) -> Iterator[tuple[PurePosixPath, bytes]]:
    for child in sorted(node.iterdir(), key=lambda c: c.name):
        if child.is_dir():
            yield from _walk(child, relative / child.name)
        else:
            yield relative / child.name, child.read_bytes()


def _payload(root: Path) -> list[Path]:
    """Every path of the package's tree except its DEBIAN control directory, sorted."""
    return sorted(p for p in root.rglob("*") if p.relative_to(root).parts[0] != "DEBIAN")


def _write_control(
    root: Path, deb: KubeDeb, package: str, version: str, architecture: str, depends: str
) -> None:
    payload = _payload(root)
    files = [p for p in payload if p.is_file()]
    # As debhelper does: every file under /etc is a conffile, and md5sums lets `dpkg --verify` work.
    relative = {p: p.relative_to(root).as_posix() for p in files}
    conffiles = [f"/{name}\n" for name in relative.values() if name.startswith("etc/")]
    if conffiles:
        (root / "DEBIAN" / "conffiles").write_text("".join(conffiles))
    (root / "DEBIAN" / "md5sums").write_text(
        "".join(f"{_digest(p, 'md5')}  {name}\n" for p, name in relative.items())
    )
    # dpkg-gencontrol's measure: each file rounded up to a KiB, one KiB for each directory.
    installed_size = sum(-(-p.stat().st_size // 1024) if p.is_file() else 1 for p in payload)
    fields = [
        ("Package", package),
        ("Version", version),
        ("Architecture", architecture),
        ("Maintainer", deb.maintainer),
        ("Installed-Size", str(installed_size)),
        ("Depends", depends),
        ("Section", "misc"),
        ("Priority", "optional"),
        ("Homepage", "https://kubernetes.io"),
        ("Description", "\n ".join([deb.summary, deb.description, ".", *textwrap.wrap(REBUILT_NOTE, 78)])),
    ]
    (root / "DEBIAN" / "control").write_text("".join(f"{k}: {v}\n" for k, v in fields if v))


def _fix_modes_and_times(root: Path, epoch: int) -> None:
    """Modes and times that depend on nothing of the build machine (umask, copies' times)."""
    for path in [root, *sorted(root.rglob("*"))]:
        relative = path.relative_to(root)
        if path.is_dir():
            mode = 0o755
        elif relative.parts[0] == "DEBIAN":
            mode = 0o755 if relative.name in MAINTAINER_SCRIPTS else 0o644
        elif relative.parts[0] in ("usr", "opt"):
            mode = 0o755  # the binaries
        else:
            mode = 0o644  # units, drop-ins, configuration
        path.chmod(mode)
        os.utime(path, (epoch, epoch))  # changing a mode or time does not touch the directory's time


def _dpkg_deb() -> str:
    binary = shutil.which("dpkg-deb")
    if binary is None:
        raise ApplianceError("dpkg-deb is not installed; the bundle is built on Debian (package dpkg)")
    return binary


def _run_dpkg_deb(args: list[str], what: str, epoch: int | None = None) -> str:
    env = {**os.environ, "LC_ALL": "C"}
    if epoch is not None:
        env["SOURCE_DATE_EPOCH"] = str(epoch)  # dpkg-deb's time for the ar members and newer files
    result = subprocess.run([_dpkg_deb(), *args], capture_output=True, text=True, env=env, check=False)
    if result.returncode != 0:
        lines = (result.stderr or result.stdout).strip().splitlines() or [f"exit {result.returncode}"]
        raise ApplianceError(f"dpkg-deb failed {what}: {lines[-1]}")
    return result.stdout


def _digest(path: Path, algorithm: str) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, algorithm).hexdigest()


# Writes /tmp/base-status: the dpkg status of a fresh minimal Debian 12 machine, made from a fuller one.
# Such a machine has the base system the installer puts everywhere: the packages of priority required
# and important, with their dependencies. Given to apt as Dir::State::status, it makes apt fetch
# whatever else packages need although this machine has it (the node image carries python3, sudo,
# openssh-server...; nfs-common needs python3).
BASE_SYSTEM_STATUS_SCRIPT = r"""
base=$(dpkg-query -W -f '${Package} ${Priority} ${Essential}\n' |
    awk '$2 == "required" || $2 == "important" || $3 == "yes" { print $1 }')
apt-cache depends --recurse --installed --no-recommends --no-suggests --no-conflicts --no-breaks \
    --no-replaces --no-enhances $base | grep -v '^[ <]' | sort -u > /tmp/base-system
awk 'BEGIN { while ((getline name < "/tmp/base-system") > 0) keep[name] = 1; RS = ""; ORS = "\n\n" }
    { split($0, lines, "\n"); sub(/^Package: /, "", lines[1]); if (lines[1] in keep) print }' \
    /var/lib/dpkg/status > /tmp/base-status
"""

# Runs in a throwaway container of the node image: $1 is the owner to give the files, the rest are
# the packages. `apt-get download` fetches each named package even when the base system has it; the
# sandbox user is root because _apt cannot write to the bind-mounted directory.
_DOWNLOAD_SCRIPT = (
    r"""
set -eu
owner=$1
shift
trap 'chown -R "$owner" /archives' EXIT
apt_get() { apt-get -qq -o APT::Sandbox::User=root "$@"; }
apt_get update
"""
    + BASE_SYSTEM_STATUS_SCRIPT
    + r"""
mkdir -p /archives/partial
cd /archives
apt_get download "$@"
apt_get -y -o Dir::State::status=/tmp/base-status -o Dir::Cache::archives=/archives/ \
    install --download-only --no-install-recommends "$@"
"""
)


def download_os_packages(packages: list[str], image: str, out: Path) -> list[Path]:
    """Download into OUT the .debs of PACKAGES and of the Kubernetes packages' OS dependencies, with
    every dependency a fresh minimal Debian 12 machine lacks; return their paths.

    apt resolves and downloads in a container of IMAGE (the lab's Debian 12 node image), removed
    afterwards whatever happens; the files are copied out under Debian's pool names (no epoch), owned
    by the calling user.
    """
    wanted = sorted(set(packages) | set(os_dependencies()))
    out.mkdir(parents=True, exist_ok=True)
    container = f"appliance-debs-{secrets.token_hex(4)}"
    with tempfile.TemporaryDirectory(prefix="appliance-apt-", dir="/var/tmp") as tmp:
        archives = Path(tmp)
        try:
            result = docker.docker(
                "run",
                "--name",
                container,
                "--volume",
                f"{archives}:/archives",
                "--env",
                "DEBIAN_FRONTEND=noninteractive",
                image,
                "/bin/sh",
                "-c",
                _DOWNLOAD_SCRIPT,
                "download-os-packages",
                f"{os.getuid()}:{os.getgid()}",
                *wanted,
                check=False,
            )
        finally:
            docker.docker("rm", "--force", container, check=False)
        if result.returncode != 0:
            raise ApplianceError(
                f"downloading {len(wanted)} OS packages in a container of {image} failed: "
                f"{_apt_error(result)}"
            )
        downloaded = sorted(archives.glob("*.deb"))
        if not downloaded:
            raise ApplianceError(f"apt in a container of {image} downloaded no package")
        copied = []
        for deb in downloaded:
            target = out / _pool_name(deb)
            shutil.copyfile(deb, target)
            copied.append(target)
    return sorted(copied)


def _apt_error(result: subprocess.CompletedProcess[str]) -> str:
    lines = [line.strip() for line in (result.stderr + "\n" + result.stdout).splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("E:")] or lines[-3:] or [f"exit {result.returncode}"]
    return " | ".join(errors)


def _pool_name(deb: Path) -> str:
    """package_version_arch.deb without the version's epoch, as in Debian's pool: apt names its downloads
    with the epoch's colon escaped (%3a), which a file: or HTTP URI would read back as a colon."""
    fields = _control_fields(deb)
    version = fields["Version"].split(":", 1)[-1]
    return f"{fields['Package']}_{version}_{fields['Architecture']}.deb"


def _control_fields(deb: Path) -> dict[str, str]:
    text = _run_dpkg_deb(["--field", str(deb), "Package", "Version", "Architecture"], f"reading {deb}")
    fields = dict(line.split(": ", 1) for line in text.splitlines() if ": " in line)
    if set(fields) != {"Package", "Version", "Architecture"}:
        raise ApplianceError(f"{deb} has no Package, Version and Architecture fields: not a .deb")
    return fields


def index_repository(debs_dir: Path, *, epoch: int = 0, key_file: Path | None = None) -> str | None:
    """Write Packages, Packages.gz and Release beside the .debs of DEBS_DIR, making it a flat apt
    repository, and with KEY_FILE sign it (signing.py: InRelease, Release.gpg and the public key
    appliance-archive-keyring.gpg, which nodes name in `deb [signed-by=KEYRING] URL ./`); return the
    signing key's fingerprint, or None unsigned.

    EPOCH (seconds, e.g. source_date_epoch(data)) is the Release file's Date and the signatures' time: the
    index holds no other time and lists the packages by file name, so the same .debs and key always give
    the same bytes.
    """
    # The Packages entries are written here: a package's control paragraph as `dpkg-deb --field` prints
    # it, plus its file name, size and checksums, in file-name order (tests/unit/test_bundle_debs.py
    # compares with dpkg-scanpackages). Release is apt-ftparchive's, from Debian's apt-utils.
    debs = sorted(debs_dir.glob("*.deb"))
    if not debs:
        raise ApplianceError(f"{debs_dir} holds no .deb to index")
    paragraphs = []
    architectures = set()
    for deb in debs:
        control = _run_dpkg_deb(["--field", str(deb)], f"reading {deb}").rstrip("\n")
        architectures |= {
            line.split(": ", 1)[1] for line in control.splitlines() if line.startswith("Architecture: ")
        }
        paragraphs.append(
            f"{control}\nFilename: ./{deb.name}\nSize: {deb.stat().st_size}\n"
            f"MD5sum: {_digest(deb, 'md5')}\nSHA1: {_digest(deb, 'sha1')}\nSHA256: {_digest(deb, 'sha256')}\n"
        )
    packages = "\n".join(paragraphs).encode()
    indexes = {"Packages": packages, "Packages.gz": gzip.compress(packages, compresslevel=9, mtime=0)}
    for name in ("Release", "InRelease", "Release.gpg", signing.KEYRING):
        (debs_dir / name).unlink(missing_ok=True)
    for name, content in indexes.items():
        (debs_dir / name).write_bytes(content)
    (debs_dir / "Release").write_bytes(_release(debs_dir, sorted(architectures), epoch))
    return signing.sign_repository(debs_dir, key_file, epoch) if key_file else None


RELEASE_FIELDS = {
    "Origin": "appliance",
    "Label": "appliance offline bundle",
    "Description": "packages of an appliance's offline bundle",
}


def _release(debs_dir: Path, architectures: list[str], epoch: int) -> bytes:
    """`apt-ftparchive release` of DEBS_DIR (it lists Packages and Packages.gz with their checksums)."""
    if shutil.which("apt-ftparchive") is None:
        raise ApplianceError("apt-ftparchive is not installed; run `make setup` (Debian's apt-utils)")
    fields = {
        **RELEASE_FIELDS,
        "Architectures": " ".join(architectures),
        "Date": email.utils.formatdate(epoch, usegmt=True),
    }
    options = [
        arg for field, value in fields.items() for arg in ("-o", f"APT::FTPArchive::Release::{field}={value}")
    ]
    result = subprocess.run(
        ["apt-ftparchive", *options, "release", "."], cwd=debs_dir, capture_output=True, check=False
    )
    if result.returncode != 0:
        raise ApplianceError(
            f"apt-ftparchive release failed: {result.stderr.decode(errors='replace').strip()}"
        )
    return result.stdout
