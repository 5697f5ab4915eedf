"""A SYNTHETIC Run:ai air-gapped tarball, laid out as Run:ai's, for testing the roles that install it.

Run:ai's tarball is proprietary and cannot be in this repository. This one has its layout (deploy/ with
images.tar, images.txt, prepare_installation.sh, the two charts and the CLI), but its charts run
runai-synthetic (lab/runai/synthetic, Go standard library only): a control plane with a Keycloak-like
login for the default admin, a TLS proxy and a cluster agent. Every image is the same scratch image
holding that binary.

The result is cached under <cache>/runai-synthetic/<version>-<digest of the sources> and linked or copied
to the output directory; a change to any source (or to this builder) builds anew.

The image is built with a temporary tag and tagged gcr.io/run-ai-prod/...:VERSION only for `docker save`;
afterwards those tags are removed again, or moved back to the image they named before, so the local
docker is left as it was.
"""

from __future__ import annotations

import fcntl
import gzip
import hashlib
import io
import os
import shutil
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import yaml

from appliance import paths
from appliance.errors import ApplianceError
from appliance.lab import docker

SOURCES = Path(__file__).resolve().parent / "runai"
DEFAULT_VERSION = "2.9.0"
REGISTRY = "gcr.io/run-ai-prod"
IMAGES = ("backend", "nginx-ingress-controller", "agent")
CHARTS = ("runai-backend", "runai-cluster")
MTIME = 1_640_995_200  # 2022-01-01T00:00:00Z: fixed member times make the archives reproducible
FORMAT = 1  # bump when the tarball's layout changes without a change in the sources

SYNTHETIC_NOTE = """\
SYNTHETIC Run:ai air-gapped tarball, version {version}.

This is a stand-in built by the appliance project (`appliance lab runai-tarball`) for testing its Ansible
roles. It is NOT Run:ai's software and contains none of it: it has the layout of Run:ai's air-gapped
tarball, and its charts run one small synthetic binary (runai-synthetic) that answers a few of the
questions the roles ask (a web page, /version, a Keycloak-like login for the default admin test@run.ai,
the cluster's connection to its control plane).
"""

Log = Callable[[str], None]


def image_references(version: str) -> list[str]:
    """The tarball's images, as images.txt lists them."""
    return [f"{REGISTRY}/{name}:{version}" for name in IMAGES]


def tarball_name(version: str) -> str:
    return f"runai-airgapped-{version}.tar.gz"


def source_digest(sources: Path = SOURCES) -> str:
    """First 12 hex of a sha256 over every source file (path and content) and this builder."""
    digest = hashlib.sha256(f"format {FORMAT}\n".encode())
    files = sorted(path for path in sources.rglob("*") if path.is_file() and "__pycache__" not in path.parts)
    for path in [*files, Path(__file__).resolve()]:
        name = path.relative_to(sources).as_posix() if path.is_relative_to(sources) else path.name
        digest.update(f"{name}\n{path.stat().st_mode & 0o111:o}\n".encode())
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()[:12]


def cache_root() -> Path:
    return paths.cache_dir() / "runai-synthetic"


def default_out_dir() -> Path:
    return paths.state_dir() / "runai"


def build(version: str, out_dir: Path, log: Log = lambda line: None) -> Path:
    """Write out_dir/runai-airgapped-VERSION.tar.gz (from the cache when these sources built it before)."""
    _check_version(version)
    cached = cache_root() / f"{version}-{source_digest()}" / tarball_name(version)
    if not cached.exists():
        cached.parent.mkdir(parents=True, exist_ok=True)
        # Two builds of one version at once (tests in parallel) build it once; the second finds it.
        with open(cached.parent / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not cached.exists():
                started = time.monotonic()
                _build_uncached(version, cached, log)
                log(f"built {cached.name} in {time.monotonic() - started:.0f} s")
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / cached.name
    if not (target.exists() and os.path.samefile(target, cached)):
        staging = out_dir / f".{cached.name}.tmp"
        staging.unlink(missing_ok=True)
        try:
            os.link(cached, staging)
        except OSError:  # another file system, or no hard links there
            shutil.copyfile(cached, staging)
        os.replace(staging, target)
    return target


def _check_version(version: str) -> None:
    allowed = set("0123456789.-abcdefghijklmnopqrstuvwxyz")
    if not version or not set(version) <= allowed or version[0] in ".-":
        raise ApplianceError(
            f"runai tarball version {version!r} is not a version like 2.9.0 (digits, letters, dots, dashes)"
        )


def _build_uncached(version: str, cached: Path, log: Log) -> None:
    with tempfile.TemporaryDirectory(prefix=f".{version}-", dir=cached.parent) as tmp:
        work = Path(tmp)
        binary = _go_build(version, work / "bin", log)
        deploy: dict[str, bytes | Path] = {}
        images_tar = work / "images.tar"
        _docker_images(version, binary, images_tar, log)
        deploy["images.tar"] = images_tar
        deploy["images.txt"] = "".join(f"{ref}\n" for ref in image_references(version)).encode()
        deploy["prepare_installation.sh"] = SOURCES / "prepare_installation.sh"
        for chart in CHARTS:
            deploy[f"{chart}-{version}.tgz"] = _chart_archive(SOURCES / "charts" / chart, version)
        deploy[f"runai-cli-{version}-linux-amd64.tar.gz"] = _targz({"runai": (binary.read_bytes(), 0o755)})
        deploy["SYNTHETIC"] = SYNTHETIC_NOTE.format(version=version).encode()
        log(f"writing {cached.name}")
        staging = work / cached.name
        with (
            open(staging, "wb") as raw,
            _gzip(raw) as compressed,
            tarfile.open(fileobj=compressed, mode="w") as tar,
        ):
            tar.addfile(_member("deploy/", 0o755, 0, directory=True))
            for name in sorted(deploy):
                content = deploy[name]
                mode = 0o755 if name.endswith(".sh") else 0o644
                if isinstance(content, Path):
                    with open(content, "rb") as source:
                        tar.addfile(_member(f"deploy/{name}", mode, content.stat().st_size), source)
                else:
                    tar.addfile(_member(f"deploy/{name}", mode, len(content)), io.BytesIO(content))
        os.replace(staging, cached)


def _go() -> str:
    found = shutil.which("go") or ("/usr/local/go/bin/go" if Path("/usr/local/go/bin/go").exists() else None)
    if found is None:
        raise ApplianceError(
            "the Go toolchain is not installed (`go` not found); run `make setup` (installs Go)"
        )
    return found


def _go_build(version: str, out: Path, log: Log) -> Path:
    """The static linux/amd64 runai-synthetic with VERSION; GOPROXY=off keeps it to the standard library."""
    out.mkdir(parents=True, exist_ok=True)
    binary = out / "runai-synthetic"
    env = {
        **os.environ,
        "CGO_ENABLED": "0",
        "GOOS": "linux",
        "GOARCH": "amd64",
        "GOTOOLCHAIN": "local",
        "GOFLAGS": "-trimpath",
        "GOPROXY": "off",
        "GOCACHE": str(cache_root() / "gocache"),
    }
    log(f"go: building runai-synthetic {version}")
    command = [_go(), "build", "-buildvcs=false", "-ldflags", f"-s -w -buildid= -X main.version={version}"]
    result = subprocess.run(
        [*command, "-o", str(binary), "."],
        cwd=SOURCES / "synthetic",
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        raise ApplianceError(f"go build of runai-synthetic failed: {' | '.join(lines[-4:])}")
    return binary


DOCKERFILE = """\
FROM scratch
COPY runai-synthetic /runai-synthetic
USER 65534
ENTRYPOINT ["/runai-synthetic"]
LABEL org.opencontainers.image.title="runai-synthetic" \\
      org.opencontainers.image.description="SYNTHETIC stand-in for Run:ai images, built for tests"
"""


def _docker_images(version: str, binary: Path, images_tar: Path, log: Log) -> None:
    """Build the one image, save it as IMAGES' three references, and leave the local tags as they were."""
    docker.require_engine()
    context = binary.parent
    (context / "Dockerfile").write_text(DOCKERFILE)
    build_tag = f"appliance-runai-synthetic-build:{version}-{os.getpid()}"
    log(f"docker: building the image {build_tag}")
    docker.docker("build", "--quiet", "--tag", build_tag, str(context))
    references = image_references(version)
    before = {ref: _image_id(ref) for ref in references}
    try:
        for ref in references:
            docker.docker("tag", build_tag, ref)
        log("docker: saving images.tar")
        docker.docker("save", "--output", str(images_tar), *references)
    finally:
        for ref, previous in before.items():
            if previous is None:
                docker.docker("rmi", "--no-prune", ref, check=False)
            else:
                docker.docker("tag", previous, ref, check=False)
        docker.docker("rmi", build_tag, check=False)


def _image_id(reference: str) -> str | None:
    result = docker.docker("image", "inspect", "--format", "{{.Id}}", reference, check=False)
    return result.stdout.strip() if result.returncode == 0 else None


def _chart_archive(chart: Path, version: str) -> bytes:
    """A helm chart archive (what `helm package` writes): CHART/... with version and appVersion set."""
    members: dict[str, tuple[bytes, int]] = {}
    for path in sorted(p for p in chart.rglob("*") if p.is_file()):
        relative = path.relative_to(chart).as_posix()
        content = path.read_bytes()
        if relative == "Chart.yaml":
            metadata = yaml.safe_load(content)
            metadata.update(version=version, appVersion=version)
            content = yaml.safe_dump(metadata, sort_keys=False, width=110).encode()
        members[f"{chart.name}/{relative}"] = (content, 0o644)
    return _targz(members)


def _targz(members: dict[str, tuple[bytes, int]]) -> bytes:
    buffer = io.BytesIO()
    with _gzip(buffer) as compressed, tarfile.open(fileobj=compressed, mode="w") as tar:
        for name in sorted(members):
            content, mode = members[name]
            tar.addfile(_member(name, mode, len(content)), io.BytesIO(content))
    return buffer.getvalue()


def _gzip(raw: io.BufferedIOBase | io.BytesIO) -> gzip.GzipFile:
    return gzip.GzipFile(fileobj=raw, mode="wb", mtime=MTIME, filename="")


def _member(name: str, mode: int, size: int, directory: bool = False) -> tarfile.TarInfo:
    member = tarfile.TarInfo(name)
    member.type = tarfile.DIRTYPE if directory else tarfile.REGTYPE
    member.mode, member.size, member.mtime = mode, size, MTIME
    member.uid = member.gid = 0
    member.uname = member.gname = "root"
    return member
