"""appliance.bundle.site_images: the site's own images (`bundle build --image`, versions.yml
bundle_extra_images), named as docker names them and copied with the real skopeo from an OCI layout made
here (no registry is reachable from this machine; the lab tier pushes and runs one)."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import tarfile
from pathlib import Path

import pytest

from appliance.bundle import build, site_images
from appliance.errors import UsageError


@pytest.mark.parametrize(
    ("reference", "expected"),
    [
        ("busybox", "docker.io/library/busybox:latest"),
        ("busybox:1.36", "docker.io/library/busybox:1.36"),
        ("rancher/pause:3.6", "docker.io/rancher/pause:3.6"),
        ("gcr.io/run-ai-demo/quickstart", "gcr.io/run-ai-demo/quickstart:latest"),
        ("registry.local:5000/team/app:v2", "registry.local:5000/team/app:v2"),
        ("localhost/app:dev", "localhost/app:dev"),
    ],
)
def test_names_are_completed_the_way_docker_reads_them(reference, expected):
    assert site_images.normalize(reference) == expected


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("gcr.io/Team/App:v1", "not an image name"),
        ("gcr.io/app:-bad", "is not a tag"),
        ("gcr.io/app@sha256:" + "a" * 64, "name it by a tag"),
        ("gcr.io/app:v1=/tmp/app.tar", "must be a skopeo reference"),
    ],
)
def test_a_bad_image_is_refused_with_what_is_wrong(spec, message):
    with pytest.raises(UsageError, match=message):
        site_images.parse(spec)


def test_the_source_after_an_equals_sign_is_where_the_image_comes_from():
    local = site_images.parse("gcr.io/run-ai-demo/quickstart:v1=docker-daemon:quickstart:dev")
    assert (local.name, local.source, local.local) == (
        "gcr.io/run-ai-demo/quickstart:v1",
        "docker-daemon:quickstart:dev",
        True,
    )
    assert (local.repository, local.version) == ("gcr.io/run-ai-demo/quickstart", "v1")
    remote = site_images.parse("quay.io/team/app:2")
    assert (remote.source, remote.local) == ("docker://quay.io/team/app:2", False)


def test_collect_refuses_an_image_the_appliance_bundles_and_two_sources_for_one_name():
    bundled = ["k8s.gcr.io/pause:3.6"]
    assert [i.name for i in site_images.collect(["b:1", "a:1", "b:1"], bundled)] == [
        "docker.io/library/a:1",
        "docker.io/library/b:1",
    ]
    with pytest.raises(UsageError, match="the bundle already carries it"):
        site_images.collect(["k8s.gcr.io/pause:3.6"], bundled)
    with pytest.raises(UsageError, match="named twice with different sources"):
        site_images.collect(["app:1=oci:/a:1", "app:1=oci:/b:1"], bundled)


def test_a_bad_image_stops_the_build_before_anything_is_written(tmp_path: Path):
    out = tmp_path / "bundle"
    with pytest.raises(UsageError, match="not an image name"):
        build.build_bundle(out, extra_images=["Bad Name"], log=lambda _: None)
    assert not out.exists()
    assert not out.with_name("bundle.partial").exists()


def _oci_layout(root: Path, tag: str) -> None:
    """A one-layer image in an OCI layout, as `skopeo copy ... oci:ROOT:TAG` would leave it."""
    blobs = root / "blobs" / "sha256"
    blobs.mkdir(parents=True)

    def blob(data: bytes) -> dict:
        digest = hashlib.sha256(data).hexdigest()
        (blobs / digest).write_bytes(data)
        return {"digest": f"sha256:{digest}", "size": len(data)}

    layer_tar = io.BytesIO()
    with tarfile.open(fileobj=layer_tar, mode="w") as tar:
        info = tarfile.TarInfo("hello.txt")
        info.size = 6
        tar.addfile(info, io.BytesIO(b"hello\n"))
    layer = blob(layer_tar.getvalue())
    config = blob(
        json.dumps(
            {"architecture": "amd64", "os": "linux", "config": {"Cmd": ["/hello"]},
             "rootfs": {"type": "layers", "diff_ids": [layer["digest"]]}}
        ).encode()
    )  # fmt: skip
    manifest = blob(
        json.dumps(
            {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
             "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **config},
             "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", **layer}]}
        ).encode()
    )  # fmt: skip
    index = {
        "schemaVersion": 2,
        "manifests": [
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", **manifest,
             "annotations": {"org.opencontainers.image.ref.name": tag}}
        ],
    }  # fmt: skip
    (root / "index.json").write_text(json.dumps(index))
    (root / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))


@pytest.mark.skipif(not shutil.which("skopeo"), reason="skopeo is not installed (make setup installs it)")
def test_a_local_image_is_copied_into_a_docker_archive_tagged_with_its_upstream_name(tmp_path: Path):
    _oci_layout(tmp_path / "oci", "dev")
    wanted = site_images.collect([f"gcr.io/run-ai-demo/quickstart:v1=oci:{tmp_path / 'oci'}:dev"], [])
    logged: list[str] = []
    archives = site_images.copy_all(wanted, tmp_path / "cache", {}, "amd64", logged.append)
    archive = archives["gcr.io/run-ai-demo/quickstart:v1"]
    assert archive.name == "gcr.io_run-ai-demo_quickstart_v1.tar"
    with tarfile.open(archive) as tar:
        (entry,) = json.load(tar.extractfile("manifest.json"))
    assert entry["RepoTags"] == ["gcr.io/run-ai-demo/quickstart:v1"]
    assert logged and "copying the site's gcr.io/run-ai-demo/quickstart:v1" in logged[0]

    missing = site_images.collect([f"app:1=oci:{tmp_path / 'nowhere'}:dev"], [])
    with pytest.raises(Exception, match=r"image docker.io/library/app:1: skopeo cannot copy it"):
        site_images.copy_all(missing, tmp_path / "cache", {}, "amd64", logged.append)
    assert not list((tmp_path / "cache").glob("docker.io_library_app_1.tar*"))
