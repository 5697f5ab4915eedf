"""The bundle's container images, built here: no registry can be reached, so nothing is pulled.

Each image is tagged with exactly its upstream name (k8s.gcr.io/kube-apiserver:v1.23.5, ...), so kubeadm,
the kubelet and kube-flannel.yml use it unchanged, and saved with `docker save` to OUT/<file>.tar. Its
Dockerfile and context are generated here, always FROM scratch or FROM a Debian base made here:

- pause: a static C program of our own (image-recipes/pause.c).
- kube-apiserver, kube-controller-manager, kube-scheduler, etcd, coredns: the Go binary on a minimal
  static base like distroless-static (users root and nobody, nsswitch.conf, /tmp, and Debian's CA
  certificates from the Debian base: the build machine's own bundle may hold local or proxy CAs).
  etcd's image also holds etcdctl and etcdutl, as upstream's does.
- kube-proxy, flannel: the Go binary on a Debian 12 base with iptables, conntrack and iproute2
  (debootstrap, image-recipes/base-rootfs.sh), whose iptables picks the host's backend on first use.
- flannel-cni-plugin: the CNI plugin with Debian's static busybox as the shell and `cp` its init
  container runs.
- node-feature-discovery: as upstream's minimal image, nfd-master, nfd-worker, nfd-topology-updater and
  grpc_health_probe (the master's probes) in /usr/bin and the example worker configuration, not root, on
  the static base; built from its release's source (see gobuild.py), the chart gives each pod's command.

An image is rebuilt only when its recipe changes: the digest of its Dockerfile, of every file of its
context (binaries by sha256) and of its base image is kept in the label appliance.recipe. An archive is
saved again only when it is missing or was saved from another recipe (OUT/images.json records which).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

from appliance import paths
from appliance.bundle import gobuild
from appliance.errors import ApplianceError
from appliance.lab import docker
from appliance.lab import image as node_image

Log = Callable[[str], None]
_T = TypeVar("_T")

INDEX = "images.json"
RECIPE_LABEL = "appliance.recipe"
FORMAT = 1  # bump when the way images are built changes in a way the Dockerfile and context do not show
STATIC_PATH = "/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DEBIAN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
CC_FLAGS = ("-static", "-Os", "-s", "-Wall")
BUSYBOX_APPLETS = ("sh", "cp", "mv", "rm", "ln", "ls", "cat", "mkdir", "chmod")

BASE_REPOSITORY = "appliance-image-base"
SUITE = node_image.SUITE
MIRROR = node_image.MIRROR
BASE_PACKAGES = ("iptables", "conntrack", "iproute2", "ca-certificates")
CA_BUNDLE = "etc/ssl/certs/ca-certificates.crt"


# --- What goes into each image ----------------------------------------------------------------------


@dataclass(frozen=True)
class Recipe:
    """How one entry of versions.yml's `images` is made."""

    base: str  # "scratch", "static" (distroless-like, on scratch) or "debian" (the debootstrap base)
    target: str | None = None  # the gobuild target whose binaries go in
    binaries: tuple[tuple[str, str], ...] = ()  # (binary of the target, absolute path in the image)
    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    user: str | None = None
    pause: bool = False  # /pause, compiled from image-recipes/pause.c
    busybox: bool = False  # /bin/busybox and a few applets, from Debian's busybox-static
    # (directory or file the target copied from its module's source, absolute path in the image)
    trees: tuple[tuple[str, str], ...] = ()
    # Programs of other gobuild targets that upstream's image ships too: (target, binary, absolute path).
    tools: tuple[tuple[str, str, str], ...] = ()
    env: tuple[tuple[str, str], ...] = ()

    def targets(self) -> list[str]:
        """Every gobuild target whose output goes into the image."""
        own = [self.target] if self.target else []
        return own + sorted({target for target, _, _ in self.tools} - set(own))


def _control_plane(name: str) -> Recipe:
    # kubeadm's static pods run these by command name (`kube-apiserver --...`), found on PATH.
    path = f"/usr/local/bin/{name}"
    return Recipe("static", "kubernetes", ((name, path),), cmd=(path,))


RECIPES: dict[str, Recipe] = {
    "coredns": Recipe("static", "coredns", (("coredns", "/coredns"),), entrypoint=("/coredns",)),
    # As upstream's image: etcdctl and etcdutl beside the server, for `kubectl exec` into the etcd pod.
    "etcd": Recipe(
        "static",
        "etcd",
        (("etcd", "/usr/local/bin/etcd"),),
        cmd=("/usr/local/bin/etcd",),
        tools=tuple((tool, tool, f"/usr/local/bin/{tool}") for tool in ("etcdctl", "etcdutl")),
    ),
    "flannel": Recipe(
        "debian", "flannel", (("flanneld", "/opt/bin/flanneld"),), entrypoint=("/opt/bin/flanneld",)
    ),
    # kube-flannel.yml's init container runs `cp -f /flannel /opt/cni/bin/flannel` in it.
    "flannel-cni-plugin": Recipe(
        "scratch",
        "flannel-cni-plugin",
        (("flannel", "/flannel"),),
        cmd=("cp", "-f", "/flannel", "/opt/cni/bin/flannel"),
        busybox=True,
    ),
    # As NVIDIA's Dockerfile: the operator on PATH, the state manifests it applies in /opt/gpu-operator,
    # a non-root user. Its base was CUDA on UBI; the operator is a static Go program and needs none of it.
    "gpu-operator": Recipe(
        "static",
        "gpu-operator",
        (("gpu-operator", "/usr/bin/gpu-operator"),),
        entrypoint=("/usr/bin/gpu-operator",),
        user="65534:65534",
        trees=(("assets", "/opt/gpu-operator"),),
    ),
    "kube-apiserver": _control_plane("kube-apiserver"),
    "kube-controller-manager": _control_plane("kube-controller-manager"),
    "kube-proxy": Recipe(
        "debian",
        "kubernetes",
        (("kube-proxy", "/usr/local/bin/kube-proxy"),),
        cmd=("/usr/local/bin/kube-proxy",),
    ),
    "kube-scheduler": _control_plane("kube-scheduler"),
    # As upstream's minimal image: no entrypoint (the chart's pods name nfd-master, nfd-worker or
    # nfd-topology-updater as their command), a numeric non-root user (the chart asks runAsNonRoot), the
    # master's probe program, the example worker configuration, and gRPC's verbose logging.
    "node-feature-discovery": Recipe(
        "static",
        "node-feature-discovery",
        tuple((name, f"/usr/bin/{name}") for name in gobuild.NFD_COMMANDS),
        user="65534:65534",
        trees=((gobuild.NFD_WORKER_CONF, "/etc/kubernetes/node-feature-discovery/nfd-worker.conf"),),
        tools=(("grpc-health-probe", "grpc_health_probe", "/usr/bin/grpc_health_probe"),),
        env=(("GRPC_GO_LOG_SEVERITY_LEVEL", "INFO"),),
    ),
    "pause": Recipe("scratch", entrypoint=("/pause",), user="65535:65535", pause=True),
}

SOURCES = {"pause": "image-recipes/pause.c"}  # for images not built from a gobuild target


# --- The files of a build context -------------------------------------------------------------------


@dataclass(frozen=True)
class Directory:
    mode: int = 0o755

    def fingerprint(self) -> str:
        return f"dir {self.mode:o}"

    def write(self, path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)
        path.chmod(self.mode)


@dataclass(frozen=True)
class Copy:
    source: Path
    mode: int = 0o755

    def fingerprint(self) -> str:
        return f"file {self.mode:o} {file_sha256(self.source)}"

    def write(self, path: Path) -> None:
        shutil.copyfile(self.source, path)
        path.chmod(self.mode)


@dataclass(frozen=True)
class Content:
    data: bytes
    mode: int = 0o644

    def fingerprint(self) -> str:
        return f"file {self.mode:o} {hashlib.sha256(self.data).hexdigest()}"

    def write(self, path: Path) -> None:
        path.write_bytes(self.data)
        path.chmod(self.mode)


@dataclass(frozen=True)
class Symlink:
    target: str

    def fingerprint(self) -> str:
        return f"link {self.target}"

    def write(self, path: Path) -> None:
        path.symlink_to(self.target)


@dataclass(frozen=True)
class StaticProgram:
    """A C source compiled here to a static executable; its fingerprint is the source and the compiler."""

    source: str  # the C text
    defines: tuple[str, ...] = ()

    def fingerprint(self) -> str:
        recipe = json.dumps([self.source, self.defines, CC_FLAGS, cc_version()])
        return f"cc {hashlib.sha256(recipe.encode()).hexdigest()}"

    def write(self, path: Path) -> None:
        source = path.with_suffix(".c")
        source.write_text(self.source)
        command = ["gcc", *CC_FLAGS, *(f"-D{d}" for d in self.defines), "-o", str(path), str(source)]
        _run(command, f"compiling {path.name}")
        source.unlink()
        path.chmod(0o755)


Entry = Directory | Copy | Content | Symlink | StaticProgram


@dataclass(frozen=True)
class Base:
    """A local image a recipe builds on."""

    tag: str
    id: str


@dataclass
class ImagePlan:
    """Everything `docker build` gets for one image: Dockerfile, the file tree it copies, its base."""

    key: str
    image: str
    dockerfile: str
    tree: dict[str, Entry] = field(default_factory=dict)  # path in the image, without the leading /
    base: Base | None = None

    def digest(self) -> str:
        recipe = {
            "format": FORMAT,
            "image": self.image,
            "dockerfile": self.dockerfile,
            "tree": {path: entry.fingerprint() for path, entry in sorted(self.tree.items())},
            "base": self.base.id if self.base else None,
        }
        return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]

    def write_context(self, context: Path) -> None:
        (context / "Dockerfile").write_text(self.dockerfile)
        rootfs = context / "rootfs"
        rootfs.mkdir(mode=0o755)
        rootfs.chmod(0o755)
        for relative, entry in sorted(self.tree.items()):
            path = rootfs / relative
            for parent in reversed(path.relative_to(rootfs).parents[:-1]):
                if not (rootfs / parent).exists():
                    Directory().write(rootfs / parent)
            entry.write(path)


def archive_name(image: str) -> str:
    """The archive's file name: the image name with / : @ as _, e.g. k8s.gcr.io_pause_3.6.tar."""
    return re.sub(r"[/:@]", "_", image) + ".tar"


def plan_image(
    key: str,
    image: str,
    binary_dir: Path | None,
    base: Base | None = None,
    busybox: Path | None = None,
    ca_bundle: Path | None = None,
    tool_dirs: Mapping[str, Path] | None = None,
) -> ImagePlan:
    """The plan of KEY's image: BINARY_DIR holds its target's binaries, BASE is the Debian base (for
    "debian" recipes), BUSYBOX the static busybox, CA_BUNDLE the CA certificates of the static base,
    TOOL_DIRS the binaries of the other targets its recipe's tools come from (by target)."""
    if key not in RECIPES:
        raise ApplianceError(
            f"versions.yml images.{key}: no image recipe for it in appliance.bundle.images "
            f"(known: {', '.join(sorted(RECIPES))})"
        )
    recipe = RECIPES[key]
    tree: dict[str, Entry] = {}
    if recipe.base == "static":
        tree.update(_static_base(_need(ca_bundle, "the CA bundle", key)))
    if recipe.busybox:
        tree.update(_busybox(_need(busybox, "busybox", key)))
    if recipe.pause:
        defines = (f'VERSION="{_tag(image)}"',)
        tree["pause"] = StaticProgram(_recipe_file("pause.c"), defines)
    for binary, destination in recipe.binaries:
        source = _need(binary_dir, f"the {recipe.target} binaries", key) / binary
        if not source.is_file():
            raise ApplianceError(
                f"{image}: {source} is missing (gobuild target {recipe.target} has no {binary})"
            )
        tree[destination.lstrip("/")] = Copy(source)
    for target, binary, destination in recipe.tools:
        source = _need((tool_dirs or {}).get(target), f"the {target} binaries", key) / binary
        if not source.is_file():
            raise ApplianceError(f"{image}: {source} is missing (gobuild target {target} has no {binary})")
        tree[destination.lstrip("/")] = Copy(source)
    for copied, destination in recipe.trees:
        source = _need(binary_dir, f"the {recipe.target} files", key) / copied
        if source.is_file():
            tree[destination.lstrip("/")] = Copy(source, 0o644)
            continue
        if not source.is_dir():
            raise ApplianceError(
                f"{image}: {source} is missing (gobuild target {recipe.target} has no {copied})"
            )
        for path in sorted(source.rglob("*")):
            relative = destination.lstrip("/") + "/" + path.relative_to(source).as_posix()
            tree[relative] = Directory() if path.is_dir() else Copy(path, 0o644)
    if recipe.base == "debian":
        base = _need(base, "the Debian base image", key)
        from_line = f"FROM {base.tag}"
    else:
        base = None
        from_line = "FROM scratch"
    lines = [from_line, "COPY rootfs/ /"]
    if recipe.base == "static":
        lines.append(f"ENV PATH={STATIC_PATH}")
    elif recipe.busybox:
        lines.append("ENV PATH=/bin")
    lines += [f"ENV {name}={value}" for name, value in recipe.env]
    lines.append(_labels(key, image, recipe))
    if recipe.user:
        lines.append(f"USER {recipe.user}")
    if recipe.entrypoint:
        lines.append(f"ENTRYPOINT {json.dumps(list(recipe.entrypoint))}")
    if recipe.cmd:
        lines.append(f"CMD {json.dumps(list(recipe.cmd))}")
    return ImagePlan(key, image, "\n".join(lines) + "\n", tree, base)


def _need(value: _T | None, what: str, key: str) -> _T:
    if value is None:
        raise ApplianceError(f"image {key}: {what} was not given (a bug of appliance.bundle.images)")
    return value


def _labels(key: str, image: str, recipe: Recipe) -> str:
    targets = recipe.targets()
    if targets:
        origin = f"gobuild target{'s' if len(targets) > 1 else ''} {', '.join(targets)}"
    else:
        origin = SOURCES.get(key, key)
    labels = {
        "org.opencontainers.image.title": image.rsplit(":", 1)[0].rsplit("/", 1)[-1],
        "org.opencontainers.image.version": _tag(image),
        "org.opencontainers.image.source": f"built by the appliance toolkit (appliance bundle) from {origin}",
        "org.opencontainers.image.description": f"local build standing in for {image}",
    }
    return "LABEL " + " \\\n      ".join(f"{name}={json.dumps(value)}" for name, value in labels.items())


def _tag(image: str) -> str:
    return image.rsplit(":", 1)[1]


def _static_base(ca_bundle: Path) -> dict[str, Entry]:
    """The files of distroless-static that programs look for: accounts, name service, CAs, /tmp."""
    return {
        "etc/passwd": Content(
            b"root:x:0:0:root:/root:/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\n"
        ),
        "etc/group": Content(b"root:x:0:\nnobody:x:65534:\n"),
        "etc/nsswitch.conf": Content(b"passwd: files\ngroup: files\nhosts: files dns\n"),
        CA_BUNDLE: Copy(ca_bundle, 0o644),
        "root": Directory(0o700),
        "tmp": Directory(0o1777),
    }


def _busybox(busybox: Path) -> dict[str, Entry]:
    tree: dict[str, Entry] = {"bin/busybox": Copy(busybox), "tmp": Directory(0o1777)}
    tree.update({f"bin/{applet}": Symlink("busybox") for applet in BUSYBOX_APPLETS})
    return tree


@cache
def _recipe_file(name: str) -> str:
    return resources.files("appliance.bundle").joinpath("image-recipes", name).read_text()


@cache
def cc_version() -> str:
    if shutil.which("gcc") is None:
        raise ApplianceError("gcc is not installed; the pause image is compiled here (apt-get install gcc)")
    return _run(["gcc", "--version"], "gcc --version").splitlines()[0]


def file_sha256(path: Path) -> str:
    try:
        with path.open("rb") as handle:
            return hashlib.file_digest(handle, "sha256").hexdigest()
    except OSError as error:
        raise ApplianceError(f"cannot read {path}: {error.strerror}") from error


# --- Building ---------------------------------------------------------------------------------------


def build_images(
    data: dict[str, Any], binaries: Callable[[str], Path], out: Path, log: Log = print
) -> dict[str, Path]:
    """Build the images of DATA["images"] (see the module's docstring) and save each to OUT; return
    image name -> archive. BINARIES(target) is the directory of a gobuild target's binaries."""
    wanted = {key: entry["image"] for key, entry in sorted(data["images"].items())}
    unknown = sorted(set(wanted) - set(RECIPES))
    if unknown:
        raise ApplianceError(
            f"versions.yml images: no image recipe for {', '.join(unknown)} in appliance.bundle.images "
            f"(known: {', '.join(sorted(RECIPES))})"
        )
    _check_file_names(list(wanted.values()))
    docker.require_engine()
    out.mkdir(parents=True, exist_ok=True)
    inputs = _Inputs(binaries, log)
    archives: dict[str, Path] = {}
    for key, image in wanted.items():
        recipe = RECIPES[key]
        plan = plan_image(
            key,
            image,
            inputs.binaries(recipe.target) if recipe.target else None,
            base=inputs.base() if recipe.base == "debian" else None,
            busybox=inputs.busybox() if recipe.busybox else None,
            ca_bundle=inputs.ca_bundle() if recipe.base == "static" else None,
            tool_dirs={target: inputs.binaries(target) for target, _, _ in recipe.tools},
        )
        digest = plan.digest()
        if _recipe_of(image) != digest:
            _build(plan, digest, log)
        archives[image] = _save(image, digest, out, log)
    return archives


def _check_file_names(images: list[str]) -> None:
    seen: dict[str, str] = {}
    for image in images:
        other = seen.setdefault(archive_name(image), image)
        if other != image:
            raise ApplianceError(
                f"images {other} and {image} would both be saved as {archive_name(image)}; rename one"
            )


class _Inputs:
    """What several images share, made or found at most once per build: binaries, bases, busybox."""

    def __init__(self, binaries: Callable[[str], Path], log: Log) -> None:
        self._binaries = cache(binaries)
        self._log = log
        self._base: Base | None = None
        self._busybox: Path | None = None
        self._ca_bundle: Path | None = None

    def binaries(self, target: str) -> Path:
        return self._binaries(target)

    def base(self) -> Base:
        if self._base is None:
            self._base = ensure_base(self._log)
        return self._base

    def busybox(self) -> Path:
        if self._busybox is None:
            self._busybox = ensure_busybox(self.base(), self._log)
        return self._busybox

    def ca_bundle(self) -> Path:
        if self._ca_bundle is None:
            self._ca_bundle = ensure_ca_bundle(self.base(), self._log)
        return self._ca_bundle


def _recipe_of(image: str) -> str | None:
    """The appliance.recipe label of the local image IMAGE, None when there is no such image."""
    result = docker.docker(
        "image", "inspect", "--format", f'{{{{index .Config.Labels "{RECIPE_LABEL}"}}}}', image, check=False
    )
    return result.stdout.strip() if result.returncode == 0 else None


def _image_id(image: str) -> str | None:
    result = docker.docker("image", "inspect", "--format", "{{.Id}}", image, check=False)
    return result.stdout.strip() if result.returncode == 0 else None


def _build(plan: ImagePlan, digest: str, log: Log) -> None:
    log(f"images: building {plan.image} (recipe {digest})")
    previous = _image_id(plan.image)
    with tempfile.TemporaryDirectory(prefix="appliance-image-") as tmp:
        context = Path(tmp)
        plan.write_context(context)
        # The classic builder: it never pulls an image that exists locally, and FROM scratch needs none.
        _run(
            [
                docker.binary(),
                "build",
                "--quiet",
                "--force-rm",
                "--label",
                f"{RECIPE_LABEL}={digest}",
                "--tag",
                plan.image,
                str(context),
            ],
            f"docker build of {plan.image}",
            env={**os.environ, "DOCKER_BUILDKIT": "0"},
        )
    if previous and previous != _image_id(plan.image):
        docker.docker("image", "rm", previous, check=False)  # the old build, unless something still uses it


def _save(image: str, digest: str, out: Path, log: Log) -> Path:
    archive = out / archive_name(image)
    index_path = out / INDEX
    index = _read_index(index_path)
    recorded = index.get(image, {})
    if (
        archive.is_file()
        and recorded.get("recipe") == digest
        and recorded.get("size") == archive.stat().st_size
    ):
        return archive
    log(f"images: saving {image} to {archive}")
    partial = archive.with_name(archive.name + ".partial")
    docker.docker("save", "--output", str(partial), image)
    partial.chmod(0o644)  # docker writes 0600; the bundle is read by other users and tools
    partial.replace(archive)
    index[image] = {"file": archive.name, "recipe": digest, "size": archive.stat().st_size}
    index_path.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    return archive


def _read_index(path: Path) -> dict[str, dict[str, Any]]:
    """OUT/images.json: image name -> the archive's file, recipe digest and size when it was saved."""
    try:
        index = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError):
        return {}  # unreadable: every archive is saved again, which rewrites it
    return index if isinstance(index, dict) else {}


# --- The Debian base, busybox and CA certificates ---------------------------------------------------


def base_recipe_digest() -> str:
    recipe = json.dumps(
        {
            "suite": SUITE,
            "mirror": MIRROR,
            "packages": BASE_PACKAGES,
            "script": _recipe_file("base-rootfs.sh"),
            "iptables-wrapper": _recipe_file("iptables-wrapper"),
        },
        sort_keys=True,
    )
    return hashlib.sha256(recipe.encode()).hexdigest()[:12]


def ensure_base(log: Log = print) -> Base:
    """The Debian base of the kube-proxy and flannel images, built first when this recipe has none."""
    tag = f"{BASE_REPOSITORY}:{base_recipe_digest()}"
    found = _image_id(tag)
    if found:
        return Base(tag, found)
    log(f"images: building the Debian base {tag} from {MIRROR} ({SUITE}); about a minute")
    with tempfile.TemporaryDirectory(prefix="appliance-image-rootfs-", dir="/var/tmp") as tmp:
        rootfs = Path(tmp) / "rootfs"
        node_image.debootstrap(rootfs, BASE_PACKAGES)
        (rootfs / "usr/sbin/iptables-wrapper").write_text(_recipe_file("iptables-wrapper"))
        script = rootfs / "tmp" / "base-rootfs.sh"
        script.write_text(_recipe_file("base-rootfs.sh"))
        _run(["chroot", str(rootfs), "/bin/sh", "/tmp/base-rootfs.sh"], "base-rootfs.sh")
        script.unlink(missing_ok=True)
        _import(rootfs, tag)
    image_id = _image_id(tag)
    if image_id is None:
        raise ApplianceError(f"docker import of {tag} reported success but the image is missing")
    return Base(tag, image_id)


def _import(rootfs: Path, tag: str) -> None:
    changes = [f"ENV PATH={DEBIAN_PATH}", 'CMD ["/bin/bash"]', f"LABEL {RECIPE_LABEL}={base_recipe_digest()}"]
    docker.import_rootfs(rootfs, tag, changes)


def _inputs_dir(base: Base) -> Path:
    return paths.cache_dir() / "bundle" / "image-inputs" / base.tag.replace(":", "-")


def ensure_ca_bundle(base: Base, log: Log = print) -> Path:
    """Debian's CA certificates (package ca-certificates), from the base: not the build machine's bundle,
    which may trust local CAs (this lab's holds an egress proxy's) that must not reach appliances."""
    path = _inputs_dir(base) / "ca-certificates.crt"
    if not path.is_file():
        log(f"images: taking the CA certificates from {base.tag}")
        data = _run_bytes(
            [docker.binary(), "run", "--rm", base.tag, "cat", f"/{CA_BUNDLE}"], "reading the CA bundle"
        )
        _write_atomic(path, data, 0o644)
    return path


def ensure_busybox(base: Base, log: Log = print) -> Path:
    """Debian's static busybox (and its .deb, kept beside it), downloaded once in a throwaway container."""
    path = _inputs_dir(base) / "busybox"
    if path.is_file():
        return path
    log(f"images: downloading Debian's busybox-static in a container of {base.tag}")
    script = (
        "set -e; cd /tmp; apt-get update -qq >/dev/null; "
        "apt-get download -qq busybox-static >/dev/null 2>&1; dpkg-deb -x busybox-static_*.deb root; "
        "cp root/bin/busybox .; tar -c busybox busybox-static_*.deb"
    )
    data = _run_bytes(
        [docker.binary(), "run", "--rm", base.tag, "sh", "-c", script], "download of busybox-static"
    )
    with tarfile.open(fileobj=io.BytesIO(data)) as archive:
        for member in archive.getmembers():
            handle = archive.extractfile(member)
            if member.isfile() and handle is not None and "/" not in member.name:
                _write_atomic(
                    path.with_name(member.name), handle.read(), 0o755 if member.name == "busybox" else 0o644
                )
    if not path.is_file():
        raise ApplianceError(f"the busybox-static package downloaded in {base.tag} held no /bin/busybox")
    return path


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_bytes(data)
    partial.chmod(mode)
    partial.replace(path)


# --- Commands ---------------------------------------------------------------------------------------


def _run(command: list[str], what: str, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if result.returncode != 0:
        raise ApplianceError(
            f"{what} failed (exit {result.returncode}): {_tail(result.stderr or result.stdout)}"
        )
    return result.stdout


def _run_bytes(command: list[str], what: str) -> bytes:
    result = subprocess.run(command, capture_output=True, check=False)
    if result.returncode != 0:
        message = _tail(result.stderr.decode(errors="replace"))
        raise ApplianceError(f"{what} failed (exit {result.returncode}): {message}")
    return result.stdout


def _tail(text: str) -> str:
    # The docker CLI warns on every classic build that it is deprecated; that is not the failure.
    noise = ("DEPRECATED", "buildx", "BuildKit")
    lines = [line.strip() for line in text.splitlines() if line.strip() and not any(n in line for n in noise)]
    return " | ".join(lines[-3:]) or "no output"
