"""`bundle build --source upstream`: every artifact downloaded from where its project publishes it.

Release binaries come from their release hosts (dl.k8s.io, GitHub releases, get.helm.sh), each checked
against the sha256 that versions.yml pins before anything uses it; images are copied from their
registries with skopeo into `docker save` archives named by their upstream name; charts come from their
Helm repository, checked against the digest its index.yaml gives; manifests from their upstream URL,
checked against versions.yml when it pins them.

`mirrors` rewrites where things are fetched, for sites with an artifact mirror (and for the tests,
which serve fixtures from a local HTTP server and a local registry): a URL prefix to another prefix
(https://dl.k8s.io=http://mirror/dl.k8s.io), and a registry host to another registry
(k8s.gcr.io=http://127.0.0.1:5000; http:// means a registry without TLS).

Downloads are cached under ~/.cache/appliance/bundle/upstream/, by checksum where one is pinned.
"""

from __future__ import annotations

import hashlib
import io
import shutil
import subprocess
import tarfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from appliance import paths
from appliance.bundle import images, versions
from appliance.errors import ApplianceError, UsageError

Log = Callable[[str], None]
TIMEOUT = 60
CHUNK = 1 << 20

# gobuild target -> the versions.yml binaries it stands for, and how each is published upstream.
TARGETS = {
    "kubernetes": ("kubeadm", "kubelet", "kubectl"),
    "crictl": ("crictl",),
    "helm": ("helm",),
    "cni-plugins": ("cni-plugins",),
    # Both from etcd's one release archive: downloaded once (the cache is keyed by its sha256), each
    # target extracts its own binary from it.
    "etcdctl": ("etcdctl",),
    "etcdutl": ("etcdutl",),
}


def parse_mirrors(values: list[str]) -> dict[str, str]:
    """FROM=TO pairs (--mirror) as a dict; one readable error for a malformed one."""
    mirrors = {}
    for value in values:
        source, sep, target = value.partition("=")
        if not sep or not source or not target:
            raise UsageError(
                f"--mirror {value!r}: expected FROM=TO, for example "
                "https://dl.k8s.io=http://mirror.example/dl.k8s.io or k8s.gcr.io=http://127.0.0.1:5000"
            )
        mirrors[source.rstrip("/")] = target.rstrip("/")
    return mirrors


class Fetcher:
    """Fetches the artifacts of versions.yml DATA from upstream (or their mirrors) into the cache."""

    def __init__(self, data: dict[str, Any], mirrors: dict[str, str], log: Log) -> None:
        self.data = data
        self.mirrors = mirrors
        self.log = log
        self.cache = paths.cache_dir() / "bundle" / "upstream"
        (self.architecture,) = data["architectures"]

    # -- files over HTTP -------------------------------------------------------------------------------

    def url(self, url: str) -> str:
        """URL through the longest mirror prefix that matches it."""
        matches = [prefix for prefix in self.mirrors if "://" in prefix and url.startswith(prefix + "/")]
        if not matches:
            return url
        prefix = max(matches, key=len)
        return self.mirrors[prefix] + url[len(prefix) :]

    def download(self, what: str, url: str, sha256: str | None) -> Path:
        """URL (through the mirrors) into the cache, checked against SHA256 when given; the cached path.
        WHAT names the artifact in errors."""
        fetched_from = self.url(url)
        key = sha256 or hashlib.sha256(fetched_from.encode()).hexdigest()
        target = self.cache / "files" / key / Path(urllib.parse.urlparse(url).path).name
        if target.exists():
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(target.name + ".partial")
        self.log(f"upstream: downloading {what} from {fetched_from}")
        digest = hashlib.sha256()
        try:
            with urllib.request.urlopen(fetched_from, timeout=TIMEOUT) as response, partial.open("wb") as out:
                while chunk := response.read(CHUNK):
                    digest.update(chunk)
                    out.write(chunk)
        except (urllib.error.URLError, OSError) as error:
            partial.unlink(missing_ok=True)
            reason = getattr(error, "reason", None) or error
            raise ApplianceError(f"{what}: cannot download {fetched_from}: {reason}") from error
        if sha256 and digest.hexdigest() != sha256:
            partial.unlink(missing_ok=True)
            raise ApplianceError(
                f"{what}: {fetched_from} has sha256 {digest.hexdigest()}, not the {sha256} that "
                "versions.yml pins; refusing it"
            )
        partial.rename(target)
        return target

    def binaries(self, target: str) -> Path:
        """The directory of a gobuild target's binaries, as `--source build` would have built them."""
        if target not in TARGETS:
            raise ApplianceError(f"--source upstream has no release download for {target}")
        out = self.cache / "binaries" / f"{target}-{self._key(target)}"
        complete = out.with_name(out.name + ".complete")  # beside it: the directory goes into packages
        if complete.exists():
            return out
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        for name in TARGETS[target]:
            entry = self.data["binaries"][name]
            url = entry["upstream_url"].format(version=entry["version"], arch=self.architecture)
            downloaded = self.download(name, url, entry["sha256"][self.architecture])
            if url.endswith((".tgz", ".tar.gz")):
                _extract(downloaded, out, only=None if name == "cni-plugins" else name, what=name)
            else:
                shutil.copyfile(downloaded, out / name)
                (out / name).chmod(0o755)
        complete.touch()
        return out

    def _key(self, target: str) -> str:
        pins = [self.data["binaries"][name]["sha256"][self.architecture] for name in TARGETS[target]]
        return hashlib.sha256("".join(pins).encode()).hexdigest()[:16]

    # -- images --------------------------------------------------------------------------------------

    def images(self) -> dict[str, Path]:
        """Every image of versions.yml, the GPU operator's operands too, as `docker save` archives."""
        skopeo = shutil.which("skopeo")
        if not skopeo:
            raise ApplianceError("--source upstream copies images with skopeo, which is not installed")
        wanted = [entry["image"] for _, entry in sorted(self.data["images"].items())]
        wanted += versions.operand_image_names(self.data)
        out = self.cache / "images"
        out.mkdir(parents=True, exist_ok=True)
        archives = {}
        for image in wanted:
            archive = out / images.archive_name(image)
            if not archive.exists():
                self._copy_image(skopeo, image, archive)
            archives[image] = archive
        return archives

    def _copy_image(self, skopeo: str, image: str, archive: Path) -> None:
        host, path, insecure = mirrored(image, self.mirrors)
        self.log(f"upstream: copying {image} from {host}")
        partial = archive.with_name(archive.name + ".partial")
        partial.unlink(missing_ok=True)
        result = subprocess.run(
            [
                skopeo, "copy", "--quiet", "--override-os", "linux", "--override-arch", self.architecture,
                f"--src-tls-verify={'false' if insecure else 'true'}",
                f"docker://{host}/{path}", f"docker-archive:{partial}:{image}",
            ],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        if result.returncode != 0:
            partial.unlink(missing_ok=True)
            raise ApplianceError(f"{image}: skopeo cannot copy it from {host}: {_last_line(result.stderr)}")
        partial.rename(archive)

    # -- charts and manifests ----------------------------------------------------------------------

    def chart(self, name: str, entry: dict[str, Any]) -> Path:
        """The chart's .tgz from its Helm repository, checked against the digest of the repository's index."""
        repository = entry["repository"].rstrip("/")
        index_path = self.download(f"chart {name} (index)", f"{repository}/index.yaml", None)
        try:
            index = yaml.safe_load(index_path.read_text())
            releases = index["entries"][name]
        except (yaml.YAMLError, KeyError, TypeError) as error:
            index_path.unlink(missing_ok=True)
            raise ApplianceError(f"chart {name}: {repository}/index.yaml lists no chart {name}") from error
        version = entry["version"]
        release = next((r for r in releases if str(r.get("version")) == version), None)
        if release is None:
            index_path.unlink(missing_ok=True)  # a newer index may list it
            listed = ", ".join(str(r.get("version")) for r in releases[:10])
            raise ApplianceError(f"chart {name}: {repository} has no version {version} (it has {listed})")
        url = urllib.parse.urljoin(f"{repository}/", release["urls"][0])
        return self.download(f"chart {name} {version}", url, release.get("digest"))

    def manifest(self, name: str, entry: dict[str, Any]) -> Path:
        url = entry["upstream_url"].format(version=entry["version"])
        return self.download(f"manifest {name}", url, entry.get("sha256"))


def _extract(archive: Path, out: Path, only: str | None, what: str) -> None:
    """The regular files of a release tarball into OUT, flat (helm's linux-amd64/helm becomes helm);
    ONLY keeps the one named so."""
    found = False
    with tarfile.open(archive) as tar:
        for member in tar.getmembers():
            name = Path(member.name).name
            if not member.isfile() or (only and name != only):
                continue
            data = tar.extractfile(member)
            if data is None:
                continue
            target = out / name
            with target.open("wb") as handle:
                shutil.copyfileobj(io.BufferedReader(data), handle)
            target.chmod(0o755)
            found = True
    if not found:
        raise ApplianceError(f"{what}: {archive.name} holds no {only or 'file'}")


def mirrored(image: str, mirrors: dict[str, str]) -> tuple[str, str, bool]:
    """Where skopeo copies IMAGE (registry/path:tag) from: the host (its registry, or the mirror
    MIRRORS names for it), the path on it, and whether that host speaks plain HTTP."""
    registry, _, path = image.partition("/")
    source = mirrors.get(registry, f"https://{registry}")
    return source.split("://", 1)[-1], path, source.startswith("http://")


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "no message"
