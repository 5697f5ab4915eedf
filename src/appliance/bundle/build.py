"""`appliance bundle build`: assemble every artifact of an appliance into one verifiable directory.

Layout (stable; manifest.json lists every file with its component, version, size and sha256):

    bin/         kubeadm, kubelet, kubectl, crictl, helm (the raw binaries, for hosts without apt), and
                 etcdctl, etcdutl (etcd's tools, for the control-plane nodes; no package holds them)
    debs/        an apt repository: the Kubernetes packages as the former upstream repository shipped
                 them, and the OS packages (docker.io, containerd, docker-registry, ...) with the
                 dependencies a minimal install lacks; Packages, Packages.gz, Release, signed (InRelease,
                 Release.gpg) by the key appliance-archive-keyring.gpg holds (signing.py)
    images/      one `docker save` archive per image, tagged with its exact upstream name
    charts/      Helm charts (.tgz)
    manifests/   Kubernetes manifests (kube-flannel.yml)
    controller/  the machine that runs Ansible, offline: `controller/install.sh DIR` installs the toolkit,
                 its Python packages (wheels), the collections and the playbooks (see controller.py);
                 execution-environment.tar, the image AWX and ansible-navigator run the collection in
                 (`docker load`; see ee.py), and execution-environment.yml, its definition

The heavy steps cache their results outside the work tree (~/.cache/appliance/bundle/), keyed by what
they are built from, so a rebuild with nothing changed takes seconds. The bundle is assembled in a
sibling directory and moved into place only when complete: an interrupted build leaves no half bundle.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance import paths
from appliance.bundle import (
    controller,
    debs,
    ee,
    gobuild,
    images,
    manifest,
    signing,
    site_images,
    upstream,
    versions,
)
from appliance.errors import ApplianceError, UsageError
from appliance.lab import image as node_image

SOURCES = ("build", "upstream")
BUNDLE_BINARIES = {
    "kubeadm": "kubernetes",
    "kubelet": "kubernetes",
    "kubectl": "kubernetes",
    "crictl": "crictl",
    "helm": "helm",
    "etcdctl": "etcdctl",
    "etcdutl": "etcdutl",
}


@dataclass(frozen=True)
class BuildResult:
    out: Path
    manifest_sha256: str
    files: int
    size: int
    seconds: float


def build_bundle(
    out: Path,
    source: str = "build",
    log: Callable[[str], None] = print,
    *,
    versions_path: Path | None = None,
    mirrors: dict[str, str] | None = None,
    extra_images: list[str] | None = None,
    execution_environment: bool = True,
    signing_key: Path | None = None,
) -> BuildResult:
    """Build the bundle into OUT (replacing a bundle there, refusing any other non-empty directory).

    SOURCE is `build` (from source) or `upstream` (downloaded, see upstream.py, through MIRRORS);
    VERSIONS_PATH replaces the project's versions.yml; EXTRA_IMAGES (`--image`) add to versions.yml's
    bundle_extra_images (site_images.py). EXECUTION_ENVIRONMENT false leaves controller/'s image out;
    SIGNING_KEY signs the apt repository instead of this machine's own key (signing.py)."""
    if source not in SOURCES:
        raise UsageError(f"--source {source}: this toolkit builds bundles from: {', '.join(SOURCES)}")
    out = out.resolve()
    if out.exists() and any(out.iterdir()) and not (out / manifest.MANIFEST).exists():
        raise UsageError(
            f"{out} is a non-empty directory that holds no bundle; give an empty or new directory"
        )
    started = time.monotonic()
    project = paths.project_root()
    versions_path = (versions_path or versions.versions_file(project)).resolve()
    data = versions.load(versions_path)
    site = site_images.collect(
        [*(data.get("bundle_extra_images") or []), *(extra_images or [])],
        [*versions.image_names(data), *versions.operand_image_names(data)],
    )
    staging = out.with_name(out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        fetcher = upstream.Fetcher(data, mirrors or {}, log) if source == "upstream" else None
        owners = _assemble(staging, data, project, fetcher, log, signing_key)
        if execution_environment:
            owners.update(_execution_environment(staging, project, log))
        owners.update(_site_images(staging, site, data, mirrors or {}, log))
        meta = {
            "kubernetes": data["kubernetes"]["version"],
            "source": source,
            "versions_sha256": manifest.sha256_of(versions_path),
        }
        digest = manifest.write(staging, owners, meta)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if out.exists():
        shutil.rmtree(out)
    staging.rename(out)
    files = manifest.load(out)["files"]
    return BuildResult(
        out, digest, len(files), sum(f["size"] for f in files.values()), time.monotonic() - started
    )


def _assemble(
    root: Path,
    data: dict[str, Any],
    project: Path,
    fetcher: upstream.Fetcher | None,
    log: Callable[[str], None],
    signing_key: Path | None = None,
) -> dict[str, tuple[str, str]]:
    """Put every artifact under ROOT, built from source or, with FETCHER, downloaded from upstream;
    return which component owns each file (or directory prefix)."""
    targets = gobuild.targets(data)
    built: dict[str, Path] = {}

    def binaries(target: str) -> Path:
        if target not in built:
            built[target] = fetcher.binaries(target) if fetcher else gobuild.build(targets[target], log)
        return built[target]

    owners: dict[str, tuple[str, str]] = {}
    bin_dir = root / "bin"
    bin_dir.mkdir()
    for name, target in BUNDLE_BINARIES.items():
        _copy(binaries(target) / name, bin_dir / name)
        owners[f"bin/{name}"] = (name, data["binaries"][name]["version"])

    debs_dir = root / "debs"
    debs_dir.mkdir()
    kube_inputs = {name: binaries("kubernetes") / name for name in ("kubeadm", "kubelet", "kubectl")}
    kube_inputs["crictl"] = binaries("crictl") / "crictl"
    kube_inputs["cni-plugins"] = binaries("cni-plugins")
    packages = [*_kubernetes_debs(kube_inputs, data, log), *_os_packages(data, log)]
    for deb in (_copy(package, debs_dir / package.name) for package in packages):
        package, version = deb.name.split("_")[:2]
        owners[f"debs/{deb.name}"] = (package, version)
    key_file = signing_key or signing.ensure_default_key(log)
    fingerprint = debs.index_repository(debs_dir, epoch=debs.source_date_epoch(data), key_file=key_file)
    log(f"debs: the repository is signed by {fingerprint} ({key_file})")
    owners["debs/"] = ("apt-repository", data["kubernetes"]["deb_version"])

    images_dir = root / "images"
    images_dir.mkdir()
    archives = (
        fetcher.images()
        if fetcher
        else images.build_images(data, binaries, paths.cache_dir() / "bundle" / "images", log)
    )
    operands = versions.operand_image_names(data)
    if operands and not fetcher:
        log(
            f"images: the GPU operator's {len(operands)} operand images are not built here (versions.yml "
            "operand_images says why); a bundle built with --source upstream carries them"
        )
    for name, archive in archives.items():
        _copy(archive, images_dir / archive.name)
        owners[f"images/{archive.name}"] = (name.rsplit(":", 1)[0], name.rsplit(":", 1)[1])

    charts_dir = root / "charts"
    charts_dir.mkdir()
    for name, chart in data["charts"].items():
        if fetcher:
            packaged = _copy(fetcher.chart(name, chart), charts_dir / f"{name}-{chart['version']}.tgz")
        else:
            source = (project / chart["source"]).resolve()
            if not source.exists():
                raise ApplianceError(f"chart {name}: {source} is missing (versions.yml charts.{name}.source)")
            packaged = _package_chart(source, binaries("helm") / "helm", charts_dir)
        owners[f"charts/{packaged.name}"] = (name, chart["version"])

    manifests_dir = root / "manifests"
    manifests_dir.mkdir()
    for name, entry in data["manifests"].items():
        source = fetcher.manifest(name, entry) if fetcher else _project_manifest(project, name, entry)
        copied = _copy(source, manifests_dir / f"{name}.yml")
        owners[f"manifests/{copied.name}"] = (name, entry["version"])

    owners.update(controller.assemble(root, project, debs.source_date_epoch(data), log))
    return owners


def _execution_environment(
    root: Path, project: Path, log: Callable[[str], None]
) -> dict[str, tuple[str, str]]:
    """controller/execution-environment.tar (ee.py), from the collections controller/ already holds."""
    version = controller.toolkit_version(project)
    collections = sorted((root / "controller" / "collections").glob("*.tar.gz"))
    archive = ee.build(project, collections, version, root / "controller", log)
    shutil.copyfile(project / ee.DEFINITION, root / "controller" / ee.DEFINITION)
    size = archive.stat().st_size / 2**20
    log(f"controller: execution environment {ee.REPOSITORY}:{version}, {size:.0f} MiB")
    return {
        f"controller/{archive.name}": (ee.REPOSITORY, version),
        f"controller/{ee.DEFINITION}": (ee.REPOSITORY, version),
    }


def _site_images(
    root: Path,
    site: list[site_images.SiteImage],
    data: dict[str, Any],
    mirrors: dict[str, str],
    log: Callable[[str], None],
) -> dict[str, tuple[str, str]]:
    """The site's own images (site_images.py) into images/, beside the appliance's."""
    owners = {}
    cache = paths.cache_dir() / "bundle" / "site-images"
    copied = site_images.copy_all(site, cache, mirrors, data["architectures"][0], log)
    for image in site:
        archive = _copy(copied[image.name], root / "images" / copied[image.name].name)
        owners[f"images/{archive.name}"] = (image.repository, image.version)
    return owners


def _project_manifest(project: Path, name: str, entry: dict[str, Any]) -> Path:
    """The manifest versions.yml takes from the project's sources, checked against its pinned sha256."""
    source = project / entry["source"]
    if not source.is_file():
        raise ApplianceError(
            f"manifest {name}: {source.resolve()} is missing (versions.yml manifests.{name}.source)"
        )
    pinned = entry.get("sha256")
    if pinned and manifest.sha256_of(source) != pinned:
        raise ApplianceError(
            f"manifest {name}: {source.resolve()} has sha256 {manifest.sha256_of(source)}, "
            f"not the {pinned} that versions.yml pins"
        )
    return source


def _kubernetes_debs(inputs: dict[str, Path], data: dict[str, Any], log: Callable[[str], None]) -> list[Path]:
    """The Kubernetes .debs, cached by what they are made of: xz-compressing 350 MB of binaries takes
    minutes, and the packages are reproducible, so the same inputs may reuse them."""
    recipe = hashlib.sha256()
    for name, path in sorted(inputs.items()):
        for file in sorted(path.iterdir()) if path.is_dir() else [path]:
            recipe.update(f"{name}/{file.name}:{manifest.sha256_of(file)}\n".encode())
    # Only what the packaging reads: a new OS package or a binary that goes in no .deb (helm, etcdctl)
    # must not repackage these.
    packaging = {
        "kubernetes": data["kubernetes"],
        "binaries": {name: entry for name, entry in data["binaries"].items() if "deb" in entry},
    }
    recipe.update(json.dumps(packaging, sort_keys=True).encode())
    for part in (Path(debs.__file__), *sorted(Path(debs.__file__).with_name("deb-templates").rglob("*"))):
        if part.is_file():
            recipe.update(part.read_bytes())
    cache = paths.cache_dir() / "bundle" / "kube-debs" / recipe.hexdigest()[:16]
    if not (cache / ".complete").exists():
        log("debs: packaging kubeadm, kubelet, kubectl, kubernetes-cni, cri-tools")
        shutil.rmtree(cache, ignore_errors=True)
        debs.package_kubernetes_debs(inputs, data, cache)
        (cache / ".complete").touch()
    return sorted(cache.glob("*.deb"))


def _os_packages(data: dict[str, Any], log: Callable[[str], None]) -> list[Path]:
    """The OS packages and their dependencies, downloaded once per package list and node image."""
    packages = sorted({*data["os_packages"]["debian-12"], *debs.os_dependencies()})
    tag = node_image.ensure_image(log)
    key = hashlib.sha256(json.dumps({"packages": packages, "image": tag}).encode()).hexdigest()[:16]
    cache = paths.cache_dir() / "bundle" / "os-packages" / f"debian-12-{key}"
    if not (cache / ".complete").exists():
        log(f"debs: downloading {len(packages)} OS packages and their dependencies from Debian's archive")
        shutil.rmtree(cache, ignore_errors=True)
        cache.mkdir(parents=True)
        debs.download_os_packages(packages, tag, cache)
        (cache / ".complete").touch()
    return sorted(cache.glob("*.deb"))


def _package_chart(source: Path, helm: Path, out: Path) -> Path:
    """`helm package` the chart in SOURCE into OUT. helm stamps the archive with the time of packaging,
    so the result is cached by the chart's content and helm's version: the same chart, the same bytes."""
    chart_dir = source / "chart" if (source / "chart" / "Chart.yaml").exists() else source
    if not (chart_dir / "Chart.yaml").exists():
        raise ApplianceError(f"no Helm chart (Chart.yaml) in {source}")
    recipe = hashlib.sha256(manifest.sha256_of(helm).encode())
    for file in sorted(p for p in chart_dir.rglob("*") if p.is_file()):
        recipe.update(f"{file.relative_to(chart_dir)}:{manifest.sha256_of(file)}\n".encode())
    cache = paths.cache_dir() / "bundle" / "charts" / recipe.hexdigest()[:16]
    if not (cache / ".complete").exists():
        shutil.rmtree(cache, ignore_errors=True)
        cache.mkdir(parents=True)
        with tempfile.TemporaryDirectory(prefix="appliance-helm-") as home:  # no state in ~/.cache/helm
            env = {**os.environ, "HELM_CACHE_HOME": home, "HELM_CONFIG_HOME": home, "HELM_DATA_HOME": home}
            result = subprocess.run(
                [str(helm), "package", str(chart_dir), "--destination", str(cache)],
                capture_output=True, text=True, check=False, env=env,
            )  # fmt: skip
        if result.returncode != 0:
            raise ApplianceError(f"helm package {chart_dir} failed: {result.stderr.strip()}")
        (cache / ".complete").touch()
    (packaged,) = cache.glob("*.tgz")
    return _copy(packaged, out / packaged.name)


def _copy(source: Path, target: Path) -> Path:
    """Copy SOURCE (from a cache) into the bundle. Never a hard link: a bundle altered in place (by
    accident or on purpose) must not alter the cache that the next bundle is built from."""
    shutil.copyfile(source, target)
    shutil.copymode(source, target)
    return target
