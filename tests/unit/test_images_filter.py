"""plugins/filter/images.py: which registries role bundle_client mirrors, from a bundle's manifest."""

from __future__ import annotations

import importlib.util

from tests.conftest import PROJECT

_spec = importlib.util.spec_from_file_location("images_filter", PROJECT / "plugins" / "filter" / "images.py")
images_filter = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(images_filter)


def _manifest(*components: str) -> dict:
    files = {f"images/{c.replace('/', '_')}.tar": {"component": c, "version": "1"} for c in components}
    files["debs/kubeadm_1.23.5-00_amd64.deb"] = {"component": "kubeadm.io/not-an-image", "version": "1"}
    return {"format": 1, "files": files}


def test_each_image_s_registry_once_by_docker_s_rule():
    manifest = _manifest(
        "k8s.gcr.io/pause",
        "k8s.gcr.io/coredns/coredns",
        "nvcr.io/nvidia/gpu-operator",
        "gcr.io/run-ai-demo/quickstart",
        "docker.io/rancher/mirrored-flannelcni-flannel",
        "index.docker.io/library/busybox",
        "rancher/pause",
        "registry.local:5000/team/app",
        "localhost/app",
    )
    assert images_filter.bundle_registries(manifest) == [
        "docker.io",
        "gcr.io",
        "k8s.gcr.io",
        "localhost",
        "nvcr.io",
        "registry.local:5000",
    ]


def test_a_manifest_without_images_or_none_at_all_mirrors_nothing_more():
    assert images_filter.bundle_registries({"files": {}}) == []
    assert images_filter.bundle_registries({}) == []
