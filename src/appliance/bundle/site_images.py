"""The site's own images: what its workloads name, added to the bundle beside the appliance's images.

`appliance bundle build --image REF` (repeatable) and versions.yml `bundle_extra_images` (a list of the
same) name them. REF is the image's name as pods will write it (`gcr.io/run-ai-demo/quickstart:v1`,
`busybox:1.36`, normalized the way docker does: `docker.io/library/busybox:1.36`), optionally followed by
`=SOURCE`, a skopeo source to copy it from (`docker-daemon:quickstart:dev`, `oci:/path:tag`,
`docker-archive:/path.tar`) for an image built on the site. Without a source it is copied from its
registry with skopeo, through `--mirror` like every upstream download.

Each becomes `images/<name>.tar` (a `docker save` archive tagged with the name), listed in the manifest
with the name as component and the tag as version, so role bundle_serve pushes it into the private
registry with the others. Images are named by tags (the registry and the archives keep tags, not
digests). Copies from a registry are cached by name, so name a tag that never moves (not `latest`) or
clear ~/.cache/appliance/bundle/site-images; copies from a local source are made afresh on every build.
"""

from __future__ import annotations

import functools
import importlib.util
import re
import shutil
import subprocess
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from appliance import paths
from appliance.bundle import images, upstream
from appliance.errors import ApplianceError, UsageError

# A registry host is the first path component when it has a dot or a colon, or is localhost (docker's rule).
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_NAME = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*$")
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
LOCAL_TRANSPORTS = ("docker-daemon:", "docker-archive:", "oci:", "oci-archive:", "dir:")


@dataclass(frozen=True)
class SiteImage:
    name: str  # the full name pods use: registry/path:tag (or @sha256:...)
    source: str  # a skopeo source reference

    @property
    def repository(self) -> str:
        return self.name.rsplit(":", 1)[0]

    @property
    def version(self) -> str:
        return self.name.rsplit(":", 1)[1]

    @property
    def local(self) -> bool:
        return self.source.startswith(LOCAL_TRANSPORTS)


@functools.cache
def images_rule():
    """plugins/module_utils/appliance_images.py, docker's rule for an image name's registry, which the
    collection's module and filter use too: loaded by its path (it is not part of this package)."""
    path = paths.project_root() / "plugins" / "module_utils" / "appliance_images.py"
    spec = importlib.util.spec_from_file_location("appliance_images", path)
    if spec is None or spec.loader is None:
        raise ApplianceError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def normalize(reference: str) -> str:
    """REF in full, as docker reads it: `busybox` -> docker.io/library/busybox:latest."""
    name = reference.strip()
    if "@" in name:
        raise UsageError(
            f"image {reference!r}: name it by a tag; the private registry and docker archives keep tags, "
            "not digests"
        )
    name, tag = images_rule().split_tag(name)
    registry, path = images_rule().split_registry(name)
    if not _NAME.match(path) or not re.match(r"^[A-Za-z0-9.-]+(?::[0-9]+)?$", registry):
        raise UsageError(f"image {reference!r}: not an image name (registry/path:tag)")
    if tag and not _TAG.match(tag):
        raise UsageError(f"image {reference!r}: {tag!r} is not a tag")
    return f"{registry}/{path}:{tag or 'latest'}"


def parse(spec: str) -> SiteImage:
    """`REF` or `REF=SOURCE` (see the module's doc)."""
    reference, _, source = spec.partition("=")
    name = normalize(reference)
    if source and not source.startswith((*LOCAL_TRANSPORTS, "docker://")):
        raise UsageError(
            f"image {spec!r}: the source after = must be a skopeo reference "
            f"({', '.join(t.rstrip(':') for t in LOCAL_TRANSPORTS)} or docker://)"
        )
    return SiteImage(name, source or f"docker://{name}")


def collect(specs: Iterable[str], bundled: Iterable[str]) -> list[SiteImage]:
    """The site images from SPECS (versions.yml's, then --image's), each once; one naming an image the
    appliance itself bundles, or two sources for one name, are refused."""
    found: dict[str, SiteImage] = {}
    own = {normalize(name) for name in bundled}
    for spec in specs:
        image = parse(spec)
        if image.name in own:
            raise UsageError(f"image {image.name}: the bundle already carries it (versions.yml images)")
        if image.name in found and found[image.name].source != image.source:
            raise UsageError(
                f"image {image.name}: named twice with different sources "
                f"({found[image.name].source}, {image.source})"
            )
        found[image.name] = image
    return [found[name] for name in sorted(found)]


def copy_all(
    wanted: list[SiteImage],
    cache: Path,
    mirrors: dict[str, str],
    architecture: str,
    log: Callable[[str], None],
) -> dict[str, Path]:
    """Each image as a `docker save` archive tagged with its name: {name: archive}."""
    if not wanted:
        return {}
    skopeo = shutil.which("skopeo")
    if not skopeo:
        raise ApplianceError(
            "site images are copied with skopeo, which is not installed (apt install skopeo)"
        )
    cache.mkdir(parents=True, exist_ok=True)
    archives = {}
    for image in wanted:
        archive = cache / images.archive_name(image.name)
        if image.local or not archive.exists():
            _copy(skopeo, image, archive, mirrors, architecture, log)
        archives[image.name] = archive
    return archives


def _copy(
    skopeo: str,
    image: SiteImage,
    archive: Path,
    mirrors: dict[str, str],
    architecture: str,
    log: Callable[[str], None],
) -> None:
    source, flags = image.source, []
    if source.startswith("docker://"):
        host, path, insecure = upstream.mirrored(source.removeprefix("docker://"), mirrors)
        source = f"docker://{host}/{path}"
        flags = [f"--src-tls-verify={'false' if insecure else 'true'}"]
    log(f"images: copying the site's {image.name} from {source}")
    partial = archive.with_name(archive.name + ".partial")
    partial.unlink(missing_ok=True)
    result = subprocess.run(
        [skopeo, "copy", "--quiet", "--override-os", "linux", "--override-arch", architecture, *flags,
         source, f"docker-archive:{partial}:{image.name}"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if result.returncode != 0:
        partial.unlink(missing_ok=True)
        reason = (result.stderr.strip().splitlines() or ["(no message)"])[-1]
        raise ApplianceError(f"image {image.name}: skopeo cannot copy it from {source}: {reason}")
    partial.rename(archive)
