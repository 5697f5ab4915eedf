"""Filter bundle_registries: the registries whose images a bundle carries, read from its manifest, for
role bundle_client's mirrors (containerd's hosts.toml, docker's registry names on each node).

An image's registry is the first component of its name when that has a dot or a port, or is localhost
(docker's rule, module_utils appliance_images): k8s.gcr.io/pause:3.6 -> k8s.gcr.io, rancher/x:1 -> docker.io.
"""

from __future__ import annotations

DOCUMENTATION = r"""
name: bundle_registries
short_description: The registries whose images a bundle's manifest lists
description:
  - Reads a bundle's manifest.json (as parsed JSON) and returns the sorted registry hosts of the images
    under C(images/) (their component is the image's name without the tag).
  - Docker Hub is C(docker.io) whichever way it is written (C(index.docker.io), no registry at all).
positional: _input
options:
  _input:
    description: The parsed manifest.json of a bundle.
    type: dict
    required: true
"""

from ansible_collections.appliance.runai.plugins.module_utils.appliance_images import split_registry


def registry_of(name: str) -> str:
    return split_registry(name)[0]


def bundle_registries(manifest: dict) -> list[str]:
    files = (manifest or {}).get("files") or {}
    return sorted(
        {registry_of(entry["component"]) for path, entry in files.items() if path.startswith("images/")}
    )


class FilterModule:
    def filters(self):
        return {"bundle_registries": bundle_registries}
