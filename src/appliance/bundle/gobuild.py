"""Build the appliance's Go components from the Go module proxy (`appliance bundle build --source build`).

Many of these modules cannot be built with `go install module@version`: their go.mod replaces modules
with local paths (k8s.io/kubernetes replaces 27 staging modules with ./staging/src/k8s.io/...). So each
component is built inside a small wrapper module that requires it and restates its replace directives,
mapping each local one to a published release: for Kubernetes the staging modules' v0.23.5 releases,
otherwise the version the component's own go.mod requires. Every other replace line is copied as is, so
the dependency versions are exactly the component's. A module the proxy does not serve at all is built
from a copy of its release's source kept beside the checkout (versions.yml `source`): the wrapper module
replaces it with that directory, which Go only reads, and its dependencies still come from the proxy.

Results are cached outside the work tree (~/.cache/appliance/bundle/go/), keyed by a digest of the
recipe and the Go version: a rebuild with nothing changed only checks that the binaries are there.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from appliance import paths
from appliance.bundle import openapi
from appliance.errors import ApplianceError

GOPROXY = os.environ.get("GOPROXY", "https://proxy.golang.org").split(",")[0]
# The plugins of the upstream cni-plugins release archive.
CNI_PLUGINS = (
    "main/bridge", "main/host-device", "main/ipvlan", "main/loopback", "main/macvlan", "main/ptp",
    "main/vlan", "ipam/dhcp", "ipam/host-local", "ipam/static", "meta/bandwidth", "meta/firewall",
    "meta/portmap", "meta/sbr", "meta/tuning", "meta/vrf",
)  # fmt: skip
# The programs of node-feature-discovery's image, and the worker configuration it ships.
NFD_COMMANDS = ("nfd-master", "nfd-worker", "nfd-topology-updater")
NFD_WORKER_CONF = "deployment/components/worker-config/nfd-worker.conf.example"


@dataclass(frozen=True)
class GoTarget:
    """One Go module at one version, and the binaries to build from it."""

    name: str
    module: str
    version: str
    binaries: dict[str, str]  # binary file name -> import path of its main package
    ldflags: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    staging_version: str | None = None  # version of modules the component replaces with ./staging paths
    source: str | None = None  # "module version" to build instead, when the proxy serves only a fork
    # The fork turns the command's main package into a library with Main(); a two-line main calls it.
    library_main: bool = False
    # Kubernetes: generate pkg/generated/openapi, which its module zip lacks (see openapi.py).
    openapi: bool = False
    env: dict[str, str] = field(default_factory=dict)
    # Directories or files of the module's own source copied beside the binaries (an image needs them,
    # not Go), at the same relative path.
    files: tuple[str, ...] = ()
    # The directory holding the module's source, for a module the proxy does not serve at all.
    local_source: str | None = None
    # Replace lines for the wrapper, for a dependency that the Go toolchain here cannot run as pinned.
    replaces: tuple[str, ...] = ()

    def outputs(self) -> list[str]:
        """What the output directory holds when the build is complete."""
        return [*self.binaries, *self.files]


def targets(data: dict[str, Any], project: Path | None = None) -> dict[str, GoTarget]:
    """The Go builds of the bundle, from versions.yml's data; local sources are relative to PROJECT
    (the checkout, by default this one)."""
    kube = data["kubernetes"]
    version = kube["version"]
    major, minor = version.lstrip("v").split(".")[:2]
    kube_version_flags = tuple(
        f"-X {package}.{key}={value}"
        for package in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version")
        for key, value in (
            ("gitVersion", version),
            ("gitMajor", major),
            ("gitMinor", minor),
            ("gitCommit", kube["git_commit"]),
            ("gitTreeState", "clean"),
            ("buildDate", kube["build_date"]),
        )
    )
    kube_binaries = (
        "kubeadm", "kubelet", "kubectl",
        "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kube-proxy",
    )  # fmt: skip
    binaries = data["binaries"]
    images = data["images"]
    helm = binaries["helm"]["version"]
    crictl = binaries["crictl"]
    cni = binaries["cni-plugins"]["version"]
    nfd = images["node-feature-discovery"]
    nfd_version = _tag(nfd["image"])
    health_probe = nfd["grpc_health_probe"]
    return {
        target.name: target
        for target in (
            GoTarget(
                "kubernetes",
                "k8s.io/kubernetes",
                version,
                {name: f"k8s.io/kubernetes/cmd/{name}" for name in kube_binaries},
                # As hack/lib/golang.sh of release-1.23 builds them.
                ldflags=("-s", "-w", *kube_version_flags),
                tags=("selinux", "notest"),
                openapi=True,
                staging_version="v0." + version.lstrip("v").split(".", 1)[1],
            ),
            GoTarget(
                "cni-plugins",
                "github.com/containernetworking/plugins",
                cni,
                {
                    p.rsplit("/", 1)[1]: f"github.com/containernetworking/plugins/plugins/{p}"
                    for p in CNI_PLUGINS
                },
                ldflags=(
                    "-s",
                    "-w",
                    f"-X github.com/containernetworking/plugins/pkg/utils/buildversion.BuildVersion={cni}",
                ),
            ),
            GoTarget(
                "crictl",
                crictl["go_module"],
                crictl["version"],
                {"crictl": f"{crictl['go_module']}/cmd/crictl"},
                ldflags=("-s", "-w", f"-X {crictl['go_module']}/pkg/version.Version={crictl['version']}"),
                source=crictl.get("go_source"),
                library_main=bool(crictl.get("go_source")),
                # The checksum database has no record of the fork: it is trusted as the proxy serves it.
                env={"GONOSUMDB": crictl["go_source"].split()[0]} if crictl.get("go_source") else {},
            ),
            GoTarget(
                "helm",
                "helm.sh/helm/v3",
                helm,
                {"helm": "helm.sh/helm/v3/cmd/helm"},
                ldflags=(
                    "-s",
                    "-w",
                    f"-X helm.sh/helm/v3/internal/version.version={helm}",
                    "-X helm.sh/helm/v3/internal/version.gitTreeState=clean",
                ),
            ),
            GoTarget(
                "etcd",
                images["etcd"]["go_module"],
                images["etcd"]["module_version"],
                {"etcd": images["etcd"]["go_module"]},
                ldflags=("-s", "-w"),
            ),
            # etcd's tools are modules of their own, each with its main package at the module's root.
            *(
                GoTarget(
                    tool,
                    binaries[tool]["go_module"],
                    binaries[tool]["version"],
                    {tool: binaries[tool]["go_module"]},
                    ldflags=("-s", "-w"),
                )
                for tool in ("etcdctl", "etcdutl")
            ),
            GoTarget(
                "coredns",
                images["coredns"]["go_module"],
                _tag(images["coredns"]["image"]),
                {"coredns": images["coredns"]["go_module"]},
                ldflags=("-s", "-w"),
            ),
            GoTarget(
                "flannel",
                images["flannel"]["go_module"],
                _tag(images["flannel"]["image"]),
                {"flanneld": images["flannel"]["go_module"]},
                ldflags=(
                    "-s",
                    "-w",
                    f"-X github.com/flannel-io/flannel/version.Version={_tag(images['flannel']['image'])}",
                    "-extldflags=-static",
                ),
                # The udp backend is cgo on amd64; flannel's release builds it so, linked statically.
                env={"CGO_ENABLED": "1"},
            ),
            GoTarget(
                "gpu-operator",
                images["gpu-operator"]["go_module"],
                _tag(images["gpu-operator"]["image"]),
                {"gpu-operator": images["gpu-operator"]["go_module"]},
                ldflags=("-s", "-w"),
                # The state manifests it applies, read from /opt/gpu-operator at run time.
                files=("assets",),
            ),
            GoTarget(
                "flannel-cni-plugin",
                images["flannel-cni-plugin"]["go_module"],
                images["flannel-cni-plugin"]["module_version"],
                {"flannel": f"{images['flannel-cni-plugin']['go_module']}/plugins/meta/flannel"},
                ldflags=(
                    "-s",
                    "-w",
                    "-X github.com/containernetworking/plugins/pkg/utils/buildversion.BuildVersion="
                    + _tag(images["flannel-cni-plugin"]["image"]),
                ),
            ),
            GoTarget(
                "node-feature-discovery",
                nfd["go_module"],
                nfd_version,
                {name: f"{nfd['go_module']}/cmd/{name}" for name in NFD_COMMANDS},
                # As its Makefile builds the image: the host's files are read under /host-boot, /host-sys,
                # ... where the chart's worker mounts them.
                ldflags=(
                    "-s",
                    "-w",
                    f"-X {nfd['go_module']}/pkg/version.version={nfd_version}",
                    f"-X {nfd['go_module']}/source.pathPrefix=/host-",
                ),
                files=(NFD_WORKER_CONF,),
                local_source=str(((project or paths.project_root()) / nfd["source"]).resolve()),
                replaces=tuple(nfd.get("go_replace", ())),
            ),
            GoTarget(
                "grpc-health-probe",
                health_probe["go_module"],
                health_probe["version"],
                {"grpc_health_probe": health_probe["go_module"]},
                ldflags=("-s", "-w"),
            ),
        )
    }


def _tag(image: str) -> str:
    return image.rsplit(":", 1)[1]


def go_version() -> str:
    result = subprocess.run(["go", "env", "GOVERSION"], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise ApplianceError("the Go toolchain is not installed (`go` not found); install Go 1.22 or newer")
    return result.stdout.strip()


def recipe_digest(target: GoTarget) -> str:
    fields = asdict(target)
    # Fields added since builds were first cached count only when set: the others keep their digests.
    for name in LATER_FIELDS:
        if not fields[name]:
            del fields[name]
    if target.local_source:
        # What the source holds, not where the checkout is: a clone elsewhere reuses the build.
        fields["local_source"] = source_tree_digest(Path(target.local_source))
    recipe = json.dumps({"target": fields, "go": go_version(), "wrapper": WRAPPER_FORMAT}, sort_keys=True)
    return hashlib.sha256(recipe.encode()).hexdigest()[:16]


def source_tree_digest(directory: Path) -> str:
    """sha256 over every file of DIRECTORY (relative path, mode's executable bit, content)."""
    if not (directory / "go.mod").is_file():
        raise ApplianceError(f"{directory} holds no Go module (no go.mod); versions.yml `source` names it")
    digest = hashlib.sha256()
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        executable = "x" if path.stat().st_mode & 0o111 else "-"
        digest.update(f"{path.relative_to(directory).as_posix()} {executable}\n".encode())
        with path.open("rb") as handle:
            digest.update(hashlib.file_digest(handle, "sha256").digest())
    return digest.hexdigest()


WRAPPER_FORMAT = 1  # bump when the way wrapper modules are written changes
LATER_FIELDS = ("local_source", "replaces")


def cache_root() -> Path:
    return paths.cache_dir() / "bundle" / "go"


def build(target: GoTarget, log: Callable[[str], None] = print) -> Path:
    """Build TARGET's binaries (or find them in the cache); return the directory that holds them."""
    output = cache_root() / "out" / f"{target.name}-{target.version}-{recipe_digest(target)}"
    if all((output / name).exists() for name in target.outputs()):
        return output
    work = cache_root() / "work" / f"{target.name}-{target.version}"
    work.mkdir(parents=True, exist_ok=True)
    # One build of a target at a time (two bundle builds may run at once); the second finds the result.
    with open(work / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if all((output / name).exists() for name in target.outputs()):
            return output
        env = _go_env(target)
        log(f"go: {target.module}@{target.version}: writing the wrapper module")
        _write_wrapper(target, work)
        _tidy(target, work, env)
        if target.openapi:
            assert target.staging_version is not None
            local = openapi.prepare(work, target.version, target.staging_version, env, log)
            _write_wrapper(target, work, extra_replaces=[local])
            _tidy(target, work, env)
        output.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{output.name}-", dir=output.parent))
        try:
            for binary, package in sorted(target.binaries.items()):
                log(f"go: building {binary} ({package}@{target.version})")
                command = [
                    "build",
                    "-trimpath",
                    "-buildvcs=false",
                    "-ldflags",
                    " ".join((*target.ldflags, "-buildid=")),
                ]
                if target.tags:
                    command += ["-tags", ",".join(target.tags)]
                _go([*command, "-o", str(staging / binary), _main_package(target, binary, package, work)],
                    work, env, f"go build of {binary}")  # fmt: skip
            if target.files:
                module_dir = ["list", "-m", "-f", "{{.Dir}}", target.module]
                source = Path(_go(module_dir, work, env, f"go list of {target.module}'s directory"))
                for name in target.files:
                    if (source / name).is_dir():
                        shutil.copytree(source / name, staging / name)
                    else:
                        (staging / name).parent.mkdir(parents=True, exist_ok=True)
                        shutil.copyfile(source / name, staging / name)
                    for path in (staging / name, *(staging / name).rglob("*")):
                        path.chmod(0o755 if path.is_dir() else 0o644)  # the module cache's are read-only
                    for parent in (staging / name).relative_to(staging).parents[:-1]:
                        (staging / parent).chmod(0o755)
            staging.chmod(0o755)
            shutil.rmtree(output, ignore_errors=True)
            staging.rename(output)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return output


def _tidy(target: GoTarget, work: Path, env: dict[str, str]) -> None:
    go_mod = (work / "go.mod").read_text().splitlines()
    go_directive = next(line.split()[1] for line in go_mod if line.startswith("go "))
    _go(
        ["mod", "tidy", f"-compat={go_directive}"],
        work,
        env,
        f"go mod tidy for {target.module}@{target.version}",
    )


def _main_package(target: GoTarget, binary: str, package: str, work: Path) -> str:
    """PACKAGE itself, or (library_main) a main package in the wrapper module that calls PACKAGE.Main."""
    if not target.library_main:
        return package
    shim = work / "cmd" / binary
    shim.mkdir(parents=True, exist_ok=True)
    (shim / "main.go").write_text(
        f'package main\n\nimport command "{package}"\n\nfunc main() {{ command.Main() }}\n'
    )
    return f"./cmd/{binary}"


def _go_env(target: GoTarget) -> dict[str, str]:
    go_cache = cache_root() / "gocache"
    return {
        **os.environ,
        "CGO_ENABLED": "0",
        "GOOS": "linux",
        "GOARCH": "amd64",
        "GOFLAGS": "-mod=mod",
        "GOTOOLCHAIN": "local",
        "GOCACHE": str(go_cache / "build"),
        "GOMODCACHE": str(go_cache / "mod"),
        **target.env,
    }


def _go(arguments: list[str], work: Path, env: dict[str, str], what: str) -> str:
    """Run go ARGUMENTS in WORK; its output, or one error naming WHAT with the last lines go printed."""
    result = subprocess.run(
        ["go", *arguments], cwd=work, env=env, capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        raise ApplianceError(f"{what} failed: {' | '.join(lines[-4:])}")
    return result.stdout.strip()


def go_mod_of(target: GoTarget) -> str:
    """The go.mod of what TARGET builds: its local source's, or the module's (or fork's) from the proxy."""
    if target.local_source:
        path = Path(target.local_source) / "go.mod"
        try:
            return path.read_text()
        except OSError as error:
            raise ApplianceError(
                f"{target.module}: cannot read {path} ({error.strerror}); versions.yml `source` names "
                "its source, which the project keeps beside the checkout in ../shared/upstream"
            ) from error
    module, version = target.source.split() if target.source else (target.module, target.version)
    return fetch_go_mod(module, version)


def fetch_go_mod(module: str, version: str) -> str:
    """The go.mod of MODULE@VERSION, from the module proxy."""
    url = f"{GOPROXY}/{_escape(module)}/@v/{version}.mod"
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            return response.read().decode()
    except OSError as error:
        raise ApplianceError(f"cannot fetch {url}: {error}") from error


def _escape(module: str) -> str:
    """The module proxy's case encoding: an upper-case letter becomes '!' and its lower case."""
    return re.sub(r"[A-Z]", lambda m: "!" + m.group().lower(), module)


_REPLACE = re.compile(r"^\s*(?:replace\s+)?(\S+)(?:\s+(\S+))?\s+=>\s+(\S+)(?:\s+(\S+))?\s*$")
_REQUIRE = re.compile(r"^\s*(?:require\s+)?(\S+)\s+(v\S+)")


def wrapper_go_mod(target: GoTarget, component_go_mod: str, extra_replaces: list[str] | None = None) -> str:
    """The wrapper module's go.mod: require TARGET, restate its replaces (local ones resolved)."""
    required: dict[str, str] = {}
    replaces: list[str] = []
    go_directive = "1.17"
    block = None
    for raw in component_go_mod.splitlines():
        line = raw.split("//", 1)[0].rstrip()
        stripped = line.strip()
        if stripped.startswith("go "):
            go_directive = stripped.split()[1]
        if stripped in ("require (", "replace (", "exclude (", "retract ("):
            block = stripped.split()[0]
            continue
        if stripped == ")":
            block = None
            continue
        if block == "require" or stripped.startswith("require "):
            match = _REQUIRE.match(stripped)
            if match:
                required[match.group(1)] = match.group(2)
        elif block == "replace" or stripped.startswith("replace "):
            match = _REPLACE.match(stripped)
            if not match:
                continue
            old, old_version, new, new_version = match.groups()
            if new.startswith((".", "/")):
                if old not in required:
                    continue  # a guard such as etcd's `go.etcd.io/etcd => ./FORBIDDEN_DEPENDENCY`
                version = target.staging_version if required[old] == "v0.0.0" else required[old]
                if not version:
                    raise ApplianceError(
                        f"{target.module} replaces {old} with {new} at v0.0.0; no version is set"
                    )
                replaces.append(f"{old} => {old} {version}")
            else:
                left = f"{old} {old_version}" if old_version else old
                replaces.append(f"{left} => {new} {new_version}")
    go_directive = wrapper_go_directive(go_directive)
    if target.source:
        replaces.append(f"{target.module} => {target.source}")
    if target.local_source:
        replaces.append(f"{target.module} => {target.local_source}")
    replaces += [*target.replaces, *(extra_replaces or [])]
    lines = [
        f"module appliance.build/{target.name}",
        "",
        f"go {go_directive}",
        "",
        f"require {target.module} {target.version}",
    ]
    if replaces:
        lines += ["", "replace (", *(f"\t{r}" for r in replaces), ")"]
    return "\n".join(lines) + "\n"


def wrapper_go_directive(component_go: str) -> str:
    """The component's go directive, raised to 1.17 so that the module graph is pruned as modern Go
    expects (older ones make `go mod tidy` fail its 1.16 compatibility check)."""
    major, minor = (int(part) for part in component_go.split(".")[:2])
    return component_go if (major, minor) >= (1, 17) else "1.17"


def _write_wrapper(target: GoTarget, work: Path, extra_replaces: list[str] | None = None) -> None:
    go_mod = wrapper_go_mod(target, go_mod_of(target), extra_replaces or [])
    (work / "go.mod").write_text(go_mod)
    # Imports of the main packages keep `go mod tidy` from dropping what they need.
    packages = {*target.binaries.values(), *([openapi.OPENAPI_GEN] if target.openapi else [])}
    imports = "\n".join(f'\t_ "{package}"' for package in sorted(packages))
    (work / "tools.go").write_text(f"//go:build tools\n\npackage tools\n\nimport (\n{imports}\n)\n")
