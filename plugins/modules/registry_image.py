#!/usr/bin/python
"""Ansible module registry_image: put a `docker save` archive into a registry under its upstream path."""

from __future__ import annotations

DOCUMENTATION = r"""
module: registry_image
short_description: Push image archives into a registry, under the paths of their upstream names
description:
  - Reads C(docker save) archives and pushes each with C(skopeo copy) to O(registry), as the upstream
    name's path (C(k8s.gcr.io/coredns/coredns:v1.8.6) becomes C(REGISTRY/coredns/coredns:v1.8.6)), so that
    a runtime mirroring the upstream registry finds it there.
  - Idempotent, nothing is pushed for an image the registry already serves under that tag with the
    archive's image configuration (the image ID), so a second run reports no change.
  - One call for many images, so that a run with nothing to push costs one module execution.
  - Needs C(skopeo) on the host; the registry is reached over plain HTTP, as a registry on the host itself.
  - A registry that asks for credentials (its C(htpasswd) authentication) gets O(username) and O(password).
    The reads send them as basic authentication; C(skopeo) reads them from an auth file of mode 0600 that is
    removed after the push, never from its command line.
options:
  images:
    description: The images to push.
    type: list
    elements: dict
    required: true
    suboptions:
      archive:
        description: Path of the C(docker save) archive on the host.
        type: path
        required: true
      image:
        description:
          - Upstream name and tag of the image, for example C(k8s.gcr.io/pause:3.6); the archive must hold it.
        type: str
        required: true
  registry:
    description: Host and port of the registry, for example C(127.0.0.1:5001).
    type: str
    required: true
  username:
    description: The user to push as, where the registry asks for credentials.
    type: str
  password:
    description: The password of O(username) (from Ansible Vault); never logged.
    type: str
  wait_timeout:
    description:
      - Seconds to wait for the registry to answer (a registry that was just started or restarted takes a
        moment); then the module fails naming the registry and what it answered last.
    type: int
    default: 30
attributes:
  check_mode:
    support: full
    description: Reports what it would change and changes nothing.
  diff_mode:
    support: none
    description: Returns no diff.
author:
  - Appliance toolkit maintainers (@appliance-maintainers)
"""

EXAMPLES = r"""
- name: Push pause and coredns into the bundle's registry
  appliance.runai.registry_image:
    images:
      - archive: /var/lib/appliance/bundle/images/k8s.gcr.io_pause_3.6.tar
        image: k8s.gcr.io/pause:3.6
      - archive: /var/lib/appliance/bundle/images/k8s.gcr.io_coredns_coredns_v1.8.6.tar
        image: k8s.gcr.io/coredns/coredns:v1.8.6
    registry: 127.0.0.1:5001
"""

RETURN = r"""
images:
  description: Every image, where it now is and its image ID, in the order given.
  returned: always
  type: list
  elements: dict
  sample:
    - reference: 127.0.0.1:5001/pause:3.6
      image_id: sha256:6270bb605e12e581514ada5fd5b3216f727db55dc87d5889c790e4c760683fee
      pushed: false
pushed:
  description: The references pushed by this run (would be pushed, in check mode).
  returned: always
  type: list
  elements: str
  sample: [127.0.0.1:5001/pause:3.6]
"""

import base64
import json
import os
import tarfile
import tempfile
import time
import urllib.error

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.urls import open_url
from ansible_collections.appliance.runai.plugins.module_utils.appliance_images import (
    split_registry,
    split_tag,
)

MANIFEST_TYPES = ", ".join(
    (
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.oci.image.manifest.v1+json",
    )
)


def split_image(image: str) -> tuple[str, str]:
    """k8s.gcr.io/coredns/coredns:v1.8.6 -> ("coredns/coredns", "v1.8.6"): the path under the registry
    (module_utils appliance_images: docker's rule for the registry part) and the tag."""
    name, tag = split_tag(image)
    if not tag:
        raise ValueError(f"image {image!r} has no tag (expected NAME:TAG, for example k8s.gcr.io/pause:3.6)")
    return split_registry(name)[1], tag


def familiar(image: str) -> str:
    """IMAGE as docker writes it in RepoTags, without docker.io/ (and library/): rancher/x:1, busybox:1."""
    for prefix in ("docker.io/library/", "index.docker.io/library/", "docker.io/", "index.docker.io/"):
        if image.startswith(prefix):
            return image.removeprefix(prefix)
    return image


def archive_image_id(archive: str, image: str) -> str:
    """The image ID (config digest) of IMAGE in the `docker save` ARCHIVE."""
    with tarfile.open(archive) as tar:
        member = tar.extractfile("manifest.json")
        if member is None:
            raise ValueError(f"{archive} has no manifest.json: not a docker save archive")
        entries = json.load(member)
    for entry in entries:
        if familiar(image) in [familiar(tag) for tag in entry.get("RepoTags") or []]:
            config = entry["Config"].rsplit("/", 1)[-1]
            return "sha256:" + config.removesuffix(".json")
    tags = [tag for entry in entries for tag in entry.get("RepoTags") or []]
    raise ValueError(f"{archive} does not hold {image} (it holds {', '.join(tags) or 'no tagged image'})")


class Credentials:
    """A user and password for basic authentication, or none (a registry that asks for none)."""

    def __init__(self, username: str | None = None, password: str | None = None) -> None:
        self.username, self.password = username, password

    def url_options(self) -> dict:
        """open_url's options: basic authentication sent with the first request."""
        if not self.username:
            return {}
        return {"url_username": self.username, "url_password": self.password or "", "force_basic_auth": True}

    def auth_file(self, registry: str, directory: str) -> str:
        """An auth file for skopeo (containers-auth.json) in DIRECTORY, mode 0600; its path."""
        token = base64.b64encode(f"{self.username}:{self.password or ''}".encode()).decode()
        path = os.path.join(directory, "auth.json")
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            json.dump({"auths": {registry: {"auth": token}}}, handle)
        return path


def registry_image_id(
    registry: str, path: str, tag: str, credentials: Credentials | None = None
) -> str | None:
    """The config digest the registry serves for PATH:TAG, or None when it has no such tag."""
    url = f"http://{registry}/v2/{path}/manifests/{tag}"
    options = (credentials or Credentials()).url_options()
    try:
        with open_url(url, headers={"Accept": MANIFEST_TYPES}, timeout=30, **options) as response:
            manifest = json.load(response)
    except urllib.error.HTTPError as error:
        if error.code == 404:
            return None
        raise
    return manifest.get("config", {}).get("digest")


def wait_for_registry(registry: str, timeout: float, credentials: Credentials | None = None) -> str | None:
    """Poll the registry's API root until it answers 200; None then, else the last error. A registry that
    refuses the credentials (or asks for some) answers at once: that is the error, without waiting."""
    deadline = time.monotonic() + timeout
    options = (credentials or Credentials()).url_options()
    while True:
        try:
            with open_url(f"http://{registry}/v2/", timeout=5, **options) as response:
                if response.status == 200:
                    return None
                error = f"HTTP {response.status}"
        except urllib.error.HTTPError as problem:
            if problem.code == 401:
                if credentials is not None and credentials.username:
                    return f"answered HTTP 401: it refused the credentials of user {credentials.username}"
                return "answered HTTP 401: it asks for credentials (set username and password)"
            error = str(problem)
        except (OSError, urllib.error.URLError) as problem:
            error = str(problem)
        if time.monotonic() >= deadline:
            return error
        time.sleep(0.5)


def push(module: AnsibleModule, archive: str, image: str, registry: str, credentials: Credentials) -> dict:
    """Push one archive unless the registry already serves it; the result for RETURN's images."""
    try:
        path, tag = split_image(image)
        wanted = archive_image_id(archive, image)
    except (OSError, ValueError, tarfile.TarError, KeyError) as error:
        module.fail_json(msg=f"registry_image: {error}")
    reference = f"{registry}/{path}:{tag}"
    try:
        present = registry_image_id(registry, path, tag, credentials)
    except (OSError, urllib.error.URLError, ValueError) as error:
        module.fail_json(
            msg=f"registry_image: cannot ask the registry at {registry} for {path}:{tag}: {error}"
        )
    if present == wanted:
        return {"reference": reference, "image_id": wanted, "pushed": False}
    if not module.check_mode:
        skopeo = module.get_bin_path("skopeo", required=True)
        with tempfile.TemporaryDirectory(prefix="registry-image-") as private:
            authentication = (
                ["--dest-authfile", credentials.auth_file(registry, private)] if credentials.username else []
            )
            module.run_command(
                [
                    skopeo,
                    "copy",
                    "--quiet",
                    "--dest-tls-verify=false",
                    *authentication,
                    f"docker-archive:{archive}:{image}",
                    f"docker://{reference}",
                ],
                check_rc=True,
            )
        pushed = registry_image_id(registry, path, tag, credentials)
        if pushed != wanted:
            module.fail_json(
                msg=f"registry_image: after pushing, {reference} has image ID {pushed}, not {wanted}"
            )
    return {"reference": reference, "image_id": wanted, "pushed": True}


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "images": {
                "type": "list",
                "elements": "dict",
                "required": True,
                "options": {
                    "archive": {"type": "path", "required": True},
                    "image": {"type": "str", "required": True},
                },
            },
            "registry": {"type": "str", "required": True},
            "username": {"type": "str"},
            "password": {"type": "str", "no_log": True},
            "wait_timeout": {"type": "int", "default": 30},
        },
        required_together=[("username", "password")],
        supports_check_mode=True,
    )
    registry = module.params["registry"]
    credentials = Credentials(module.params["username"], module.params["password"])
    error = wait_for_registry(registry, module.params["wait_timeout"], credentials)
    if error is not None:
        if not error.startswith("answered"):
            error = f"did not answer within {module.params['wait_timeout']} s: {error}"
        module.fail_json(msg=f"registry_image: the registry at {registry} {error}")
    results = [
        push(module, item["archive"], item["image"], registry, credentials)
        for item in module.params["images"]
    ]
    pushed = [result["reference"] for result in results if result["pushed"]]
    module.exit_json(changed=bool(pushed), images=results, pushed=pushed)


if __name__ == "__main__":
    main()
