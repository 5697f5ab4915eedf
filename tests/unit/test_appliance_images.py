"""plugins/module_utils/appliance_images.py: docker's rule for an image name's registry, and the three
places that use it (module registry_image on the nodes, filter bundle_registries, `bundle build --image`)
agreeing on every name."""

from __future__ import annotations

import importlib.util

import pytest
from ansible_collections.appliance.runai.plugins.module_utils.appliance_images import (
    split_registry,
    split_tag,
)

from appliance.bundle import site_images
from tests.conftest import PROJECT


def _load(name: str, path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


registry_image = _load("registry_image", PROJECT / "plugins/modules/registry_image.py")
images_filter = _load("images_filter", PROJECT / "plugins/filter/images.py")

NAMES = [
    ("k8s.gcr.io/pause", "k8s.gcr.io", "pause"),
    ("k8s.gcr.io/coredns/coredns", "k8s.gcr.io", "coredns/coredns"),
    ("nvcr.io/nvidia/gpu-operator", "nvcr.io", "nvidia/gpu-operator"),
    ("rancher/mirrored-flannelcni-flannel", "docker.io", "rancher/mirrored-flannelcni-flannel"),
    ("busybox", "docker.io", "library/busybox"),
    ("docker.io/busybox", "docker.io", "library/busybox"),
    ("index.docker.io/busybox", "docker.io", "library/busybox"),
    ("registry-1.docker.io/rancher/x", "docker.io", "rancher/x"),
    ("localhost/app", "localhost", "app"),
    ("localhost:5000/team/app", "localhost:5000", "team/app"),
    ("172.28.4.10:5000/pause", "172.28.4.10:5000", "pause"),
    ("team/app", "docker.io", "team/app"),  # no dot, no port: a Docker Hub user, not a registry
]


@pytest.mark.parametrize(("name", "registry", "path"), NAMES)
def test_the_registry_is_the_first_component_only_with_a_dot_a_port_or_localhost(name, registry, path):
    assert split_registry(name) == (registry, path)


@pytest.mark.parametrize(
    ("image", "expected"),
    [
        ("k8s.gcr.io/pause:3.6", ("k8s.gcr.io/pause", "3.6")),
        ("localhost:5000/app", ("localhost:5000/app", "")),  # a port, not a tag
        ("localhost:5000/app:1", ("localhost:5000/app", "1")),
        ("busybox", ("busybox", "")),
    ],
)
def test_a_tag_is_a_colon_in_the_last_component(image, expected):
    assert split_tag(image) == expected


@pytest.mark.parametrize(("name", "registry", "path"), NAMES)
def test_module_filter_and_bundle_builder_agree(name, registry, path):
    assert registry_image.split_image(f"{name}:1.0") == (path, "1.0")
    assert images_filter.registry_of(name) == registry
    assert site_images.normalize(f"{name}:1.0") == f"{registry}/{path}:1.0"
