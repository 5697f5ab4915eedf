"""The lab's node image: Debian 12 from Debian's archive, systemd as PID 1, sshd, python3, sudo.

No registry can be reached, so the image is built here with debootstrap and `docker import`.
Its tag is a digest of the recipe (suite, mirror, packages, node-image.sh): it is rebuilt only
when the recipe changes, and the docker engine's image store is the cache.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

from appliance.errors import ApplianceError
from appliance.lab import docker

REPOSITORY = "appliance-node"
SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
PACKAGES = (
    "systemd",
    "systemd-sysv",
    "dbus",
    "openssh-server",
    "python3",
    "sudo",
    "iproute2",
    "iputils-ping",
    "procps",
    "ca-certificates",
    "gnupg",
)


def _post_script() -> str:
    return resources.files("appliance.lab").joinpath("node-image.sh").read_text()


def recipe_digest() -> str:
    recipe = json.dumps(
        {"suite": SUITE, "mirror": MIRROR, "packages": PACKAGES, "script": _post_script()}, sort_keys=True
    )
    return hashlib.sha256(recipe.encode()).hexdigest()[:12]


def image_tag() -> str:
    return f"{REPOSITORY}:{recipe_digest()}"


def ensure_image(log=print) -> str:
    """Return the tag of the node image, building it first when this recipe has no image yet."""
    tag = image_tag()
    docker.require_engine()
    if docker.image_exists(tag):
        return tag
    log(f"building node image {tag} from {MIRROR} ({SUITE}); about a minute")
    with tempfile.TemporaryDirectory(prefix="appliance-rootfs-", dir="/var/tmp") as tmp:
        rootfs = Path(tmp) / "rootfs"
        debootstrap(rootfs, PACKAGES)
        script = rootfs / "tmp" / "node-image.sh"
        script.write_text(_post_script())
        _run(["chroot", str(rootfs), "/bin/sh", "/tmp/node-image.sh"], "node-image.sh")
        script.unlink(missing_ok=True)
        docker.import_rootfs(
            rootfs,
            tag,
            [
                'CMD ["/lib/systemd/systemd"]',
                "ENV container=docker",
                f"LABEL appliance.recipe={recipe_digest()}",
            ],
        )
    docker.docker("tag", tag, f"{REPOSITORY}:latest")
    return tag


def debootstrap(rootfs: Path, packages: Sequence[str]) -> None:
    """A minimal Debian (SUITE, from MIRROR) with PACKAGES, in ROOTFS: the start of every local image."""
    if shutil.which("debootstrap") is None:
        raise ApplianceError("debootstrap is not installed; run `make setup`")
    command = [
        "debootstrap",
        "--variant=minbase",
        f"--include={','.join(packages)}",
        SUITE,
        str(rootfs),
        MIRROR,
    ]
    _run(command, "debootstrap")


def _run(command: list[str], what: str) -> None:
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip().splitlines()[-3:]
        raise ApplianceError(f"{what} failed (exit {result.returncode}): {' | '.join(tail)}")
