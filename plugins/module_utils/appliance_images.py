"""Docker's rule for which part of an image name is the registry, in one place.

An image name's first component is its registry when it has a dot or a port, or is `localhost`; otherwise
the image is on Docker Hub (`docker.io`), where a one-component path is under `library/`. Used on the
nodes by module registry_image (the path an image goes to in the private registry), on the controller by
the filter bundle_registries (the registries role bundle_client mirrors) and by the bundle builder
(`bundle build --image`, src/appliance/bundle/site_images.py, which loads this file by its path).
Standard library only.
"""

from __future__ import annotations

DOCKER_HUB = "docker.io"
_DOCKER_HUB_ALIASES = ("docker.io", "index.docker.io", "registry-1.docker.io")


def split_registry(name: str) -> tuple[str, str]:
    """NAME (no tag needed) -> (registry, path): k8s.gcr.io/pause -> (k8s.gcr.io, pause);
    rancher/x -> (docker.io, rancher/x); busybox, index.docker.io/busybox -> (docker.io, library/busybox)."""
    first, slash, rest = name.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        registry, path = first, rest
    else:
        registry, path = DOCKER_HUB, name
    if registry in _DOCKER_HUB_ALIASES:
        registry = DOCKER_HUB
        if "/" not in path:
            path = f"library/{path}"
    return registry, path


def split_tag(image: str) -> tuple[str, str]:
    """IMAGE -> (name, tag), the tag empty when there is none: a colon in the last component only
    (localhost:5000/x has a port, not a tag)."""
    name, sep, tag = image.rpartition(":")
    if not sep or "/" in tag or not name:
        return image, ""
    return name, tag
