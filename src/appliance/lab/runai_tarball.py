"""A SYNTHETIC Run:ai air-gapped tarball, laid out as Run:ai's, for testing the roles that install it.

Run:ai's tarball is proprietary and cannot be in this repository. This one has its layout (deploy/ with
images.tar, images.txt, prepare_installation.sh, the two charts and the CLI), but its charts run
runai-synthetic (lab/runai/synthetic, Go with github.com/lib/pq): a control plane with a Keycloak-like
login and a projects API, a TLS proxy and a cluster agent; the backend, ingress controller and agent
images are one scratch image holding that binary. The control plane keeps its users and projects in
PostgreSQL, as Run:ai's does: the postgresql image is Debian's postgresql-15 on the bundle's Debian base
(lab/runai/postgresql), so backups and restores run the real pg_dump and pg_restore.

Go modules come from the module proxy (GOPROXY, default https://proxy.golang.org), checked against the
committed go.sum, into <cache>/runai-synthetic/gomodcache: never into the work tree.

The result is cached under <cache>/runai-synthetic/<version>-<digest of the sources> and linked or copied
to the output directory; a change to any source (or to this builder) builds anew.

The images are built with temporary or recipe tags and tagged gcr.io/run-ai-prod/...:VERSION only for
`docker save`; afterwards those tags are removed again, or moved back to the image they named before, so
the local docker is left as it was. The postgresql image stays as appliance-runai-postgresql:<recipe> (its
Dockerfile, entrypoint and base), so a change to the Go sources does not reinstall PostgreSQL.
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
from appliance.bundle import images as bundle_images
from appliance.errors import ApplianceError
from appliance.lab import docker

SOURCES = Path(__file__).resolve().parent / "runai"
POSTGRESQL_SOURCES = SOURCES / "postgresql"  # Dockerfile and entrypoint.sh of the postgresql image
DEFAULT_VERSION = "2.9.0"
REGISTRY = "gcr.io/run-ai-prod"
SYNTHETIC_IMAGES = ("backend", "nginx-ingress-controller", "agent")  # one image, runai-synthetic
POSTGRESQL_IMAGE = "postgresql"
IMAGES = (*SYNTHETIC_IMAGES, POSTGRESQL_IMAGE)
POSTGRESQL_REPOSITORY = "appliance-runai-postgresql"
DEFAULT_GOPROXY = "https://proxy.golang.org"
CHARTS = ("runai-backend", "runai-cluster")
MTIME = 1_640_995_200  # 2022-01-01T00:00:00Z: fixed member times make the archives reproducible
FORMAT = 1  # bump when the tarball's layout changes without a change in the sources

SYNTHETIC_NOTE = """\
SYNTHETIC Run:ai air-gapped tarball, version {version}.

This is a stand-in built by the appliance project (`appliance lab runai-tarball`) for testing its Ansible
roles. It is NOT Run:ai's software and contains none of it: it has the layout of Run:ai's air-gapped
tarball, and its charts run one small synthetic binary (runai-synthetic) that answers a few of the
questions the roles ask (a web page, /version, a Keycloak-like login for the default admin test@run.ai,
a projects API, the cluster's connection to its control plane), and Debian's PostgreSQL 15, where that
binary keeps its users and projects.
"""

Log = Callable[[str], None]


def image_references(version: str, names: tuple[str, ...] = IMAGES) -> list[str]:
    """The tarball's images (or those of NAMES), as images.txt lists them."""
    return [f"{REGISTRY}/{name}:{version}" for name in names]


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


def go_env() -> dict[str, str]:
    """The environment of every go command on runai-synthetic (build, vet, test): a static build, modules
    from the proxy as go.sum pins them (-mod=readonly: go.mod and go.sum are never rewritten), and the
    build and module caches under the runai-synthetic cache (-modcacherw: a cache one can delete)."""
    return {
        **os.environ,
        "CGO_ENABLED": "0",
        "GOTOOLCHAIN": "local",
        "GOFLAGS": "-trimpath -mod=readonly -modcacherw",
        "GOPROXY": os.environ.get("GOPROXY") or DEFAULT_GOPROXY,
        "GOCACHE": str(cache_root() / "gocache"),
        "GOMODCACHE": str(cache_root() / "gomodcache"),
    }


def _go_build(version: str, out: Path, log: Log) -> Path:
    """The static linux/amd64 runai-synthetic with VERSION."""
    out.mkdir(parents=True, exist_ok=True)
    binary = out / "runai-synthetic"
    env = {**go_env(), "GOOS": "linux", "GOARCH": "amd64"}
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
    """Build the runai-synthetic image and the postgresql image, save them under IMAGES' references, and
    leave the local tags as they were."""
    docker.require_engine()
    postgresql = postgresql_image(log)
    context = binary.parent
    (context / "Dockerfile").write_text(DOCKERFILE)
    build_tag = f"appliance-runai-synthetic-build:{version}-{os.getpid()}"
    log(f"docker: building the image {build_tag}")
    docker.docker("build", "--quiet", "--tag", build_tag, str(context))
    sources = {ref: build_tag for ref in image_references(version, SYNTHETIC_IMAGES)}
    sources.update({ref: postgresql for ref in image_references(version, (POSTGRESQL_IMAGE,))})
    references = image_references(version)
    before = {ref: _image_id(ref) for ref in references}
    try:
        for ref in references:
            docker.docker("tag", sources[ref], ref)
        log("docker: saving images.tar")
        docker.docker("save", "--output", str(images_tar), *references)
    finally:
        for ref, previous in before.items():
            if previous is None:
                docker.docker("rmi", "--no-prune", ref, check=False)
            else:
                docker.docker("tag", previous, ref, check=False)
        docker.docker("rmi", build_tag, check=False)


def postgresql_image(log: Log = lambda line: None) -> str:
    """The local tag of the postgresql image, built first when its recipe (Dockerfile, entrypoint and the
    Debian base's image id) has none: Debian's postgresql-15, installed from Debian's archive with apt."""
    base = bundle_images.ensure_base(log)
    recipe = hashlib.sha256(f"base {base.id}\n".encode())
    for name in ("Dockerfile", "entrypoint.sh"):
        recipe.update(f"{name}\n".encode() + (POSTGRESQL_SOURCES / name).read_bytes())
    tag = f"{POSTGRESQL_REPOSITORY}:{recipe.hexdigest()[:12]}"
    if _image_id(tag) is not None:
        return tag
    log(f"docker: building {tag} (Debian's postgresql-15 on {base.tag}, from {bundle_images.MIRROR})")
    with tempfile.TemporaryDirectory(prefix="appliance-runai-postgresql-") as tmp:
        context = Path(tmp)
        for name, mode in (("Dockerfile", 0o644), ("entrypoint.sh", 0o755)):
            shutil.copyfile(POSTGRESQL_SOURCES / name, context / name)
            (context / name).chmod(mode)
        # The classic builder: it never pulls a FROM image that exists locally (BuildKit would look it up).
        label = f"{bundle_images.RECIPE_LABEL}={tag.rsplit(':', 1)[1]}"
        command = [docker.binary(), "build", "--quiet", "--force-rm", "--build-arg", f"BASE={base.tag}"]
        result = subprocess.run(
            [*command, "--label", label, "--tag", tag, str(context)],
            capture_output=True,
            text=True,
            env={**os.environ, "DOCKER_BUILDKIT": "0"},
            check=False,
        )
    if result.returncode != 0:
        # The docker CLI warns on every classic build that it is deprecated; that is not the failure.
        lines = [line.strip() for line in (result.stderr or result.stdout).splitlines() if line.strip()]
        lines = [line for line in lines if not any(noise in line for noise in ("DEPRECATED", "BuildKit"))]
        raise ApplianceError(f"docker build of {tag} failed: {' | '.join(lines[-3:]) or 'no output'}")
    return tag


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
