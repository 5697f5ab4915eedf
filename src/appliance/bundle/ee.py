"""The bundle's execution environment: controller/execution-environment.tar, the image AWX / Automation
Controller and ansible-navigator run the appliance.runai collection in.

It is built with ansible-builder 3 from the project's execution-environment.yml, offline:

- the base image, appliance-ee-base, is Debian 12 made here with debootstrap (no registry can be reached)
  with python3, Debian's pip, the ssh client and dumb-init; its tag is a digest of that recipe;
- wheels/ holds every Python package the image installs (ansible-core, ansible-runner, the collection's
  own requirements, ansible-builder's bindep), downloaded once per pin set, with constraints.txt;
- collections/ holds the bundle's controller/collections artifacts (appliance.runai and every collection
  it depends on) and requirements.yml naming them, installed with `ansible-galaxy --offline`.

The image is tagged appliance-ee:VERSION (the toolkit's version) and labelled with a digest of all of the
above: it is rebuilt, and saved again, only when that digest changes.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import yaml

from appliance import paths
from appliance.bundle import controller
from appliance.errors import ApplianceError
from appliance.lab import docker
from appliance.lab import image as node_image

Log = Callable[[str], None]

DEFINITION = "execution-environment.yml"
ARCHIVE = "execution-environment.tar"
REPOSITORY = "appliance-ee"
BASE_REPOSITORY = "appliance-ee-base"
RECIPE_LABEL = "appliance.recipe"
# Debian 12 as the base: python3 and Debian's pip (ansible-builder installs with `python3 -m pip`), the
# ssh client (the ssh connection), dumb-init (the image's init, as ansible-builder's default has it).
BASE_PACKAGES = ("python3", "python3-pip", "openssh-client", "ca-certificates", "dumb-init")
# What the image installs with pip, besides the collection's own requirements: ansible-builder's builder
# stage runs bindep (with pyyaml and packaging) to list system packages.
BUILDER_REQUIREMENTS = ("bindep", "pyyaml", "packaging")


def base_digest() -> str:
    recipe = json.dumps(
        {"suite": node_image.SUITE, "mirror": node_image.MIRROR, "packages": BASE_PACKAGES}, sort_keys=True
    )
    return hashlib.sha256(recipe.encode()).hexdigest()[:12]


def ensure_base(log: Log) -> str:
    """The tag of the base image, made with debootstrap when this recipe has none yet."""
    tag = f"{BASE_REPOSITORY}:{base_digest()}"
    if docker.image_exists(tag):
        return tag
    log(f"execution environment: making its base image {tag} with debootstrap; about a minute")
    with tempfile.TemporaryDirectory(prefix="appliance-ee-rootfs-", dir="/var/tmp") as tmp:
        rootfs = Path(tmp) / "rootfs"
        node_image.debootstrap(rootfs, BASE_PACKAGES)
        shutil.rmtree(rootfs / "var" / "lib" / "apt" / "lists", ignore_errors=True)
        (rootfs / "var" / "lib" / "apt" / "lists" / "partial").mkdir(parents=True)
        for archive in (rootfs / "var" / "cache" / "apt" / "archives").glob("*.deb"):
            archive.unlink()
        docker.import_rootfs(rootfs, tag, ['CMD ["bash"]', f"LABEL {RECIPE_LABEL}={base_digest()}"])
    return tag


def pip_requirements(project: Path) -> list[str]:
    """Everything the image installs with pip: ansible-core and ansible-runner as execution-environment.yml
    pins them, the collection's meta/ee-requirements.txt, and the builder's own tools."""
    definition = yaml.safe_load((project / DEFINITION).read_text())
    dependencies = definition["dependencies"]
    pinned = [dependencies[name]["package_pip"] for name in ("ansible_core", "ansible_runner")]
    own = [
        line.split("#", 1)[0].strip()
        for line in (project / "meta" / "ee-requirements.txt").read_text().splitlines()
        if line.split("#", 1)[0].strip()
    ]
    return sorted({*pinned, *own, *BUILDER_REQUIREMENTS})


def wheels(project: Path, log: Log) -> list[Path]:
    """The wheels of pip_requirements and their dependencies, pinned by constraints.txt, downloaded once
    per pin set (the controller's wheels are this Python's; Debian 12's python3 in the image is the same)."""
    return controller.download_wheels(
        project, pip_requirements(project), "ee-wheels", "execution environment", log
    )


def stage(project: Path, collections: list[Path], wheel_files: list[Path], into: Path) -> None:
    """Lay out INTO as execution-environment.yml expects it: the definition, wheels/ and collections/."""
    shutil.copyfile(project / DEFINITION, into / DEFINITION)
    (into / "wheels").mkdir()
    for wheel in wheel_files:
        shutil.copyfile(wheel, into / "wheels" / wheel.name)
    # pip in the image applies the project's pins; `pip freeze` leaves these build tools out of it.
    (into / "wheels" / "constraints.txt").write_text((project / "constraints.txt").read_text())
    (into / "collections").mkdir()
    for artifact in collections:
        shutil.copyfile(artifact, into / "collections" / artifact.name)
    # ansible-builder runs `ansible-galaxy collection install -r requirements.yml` in /build, where
    # collections/ lands (additional_build_files).
    requirements = {
        "collections": [
            {"name": f"collections/{artifact.name}", "type": "file"} for artifact in sorted(collections)
        ]
    }
    (into / "collections" / "requirements.yml").write_text(yaml.safe_dump(requirements, sort_keys=False))


def recipe_digest(staged: Path, base: str) -> str:
    digest = hashlib.sha256(f"base {docker_image_id(base)}\n".encode())
    for file in sorted(path for path in staged.rglob("*") if path.is_file()):
        digest.update(f"{file.relative_to(staged)} {_sha256(file)}\n".encode())
    return digest.hexdigest()[:16]


def build(project: Path, collections: list[Path], version: str, out: Path, log: Log) -> Path:
    """Build (or reuse) the execution environment's image for COLLECTIONS and save it to OUT/ARCHIVE."""
    builder = Path(sys.executable).with_name("ansible-builder")
    if not builder.exists():
        raise ApplianceError(
            "the execution environment needs ansible-builder beside this Python "
            f"({builder} is missing): pip install -c constraints.txt ansible-builder, or build the bundle "
            "with --no-execution-environment"
        )
    docker.require_engine()
    base = ensure_base(log)
    tag = f"{REPOSITORY}:{version}"
    cache = paths.cache_dir() / "bundle" / "ee"
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="appliance-ee-", dir="/var/tmp") as tmp:
        staged = Path(tmp) / "definition"
        staged.mkdir()
        stage(project, collections, wheels(project, log), staged)
        recipe = recipe_digest(staged, base)
        if _label(tag) != recipe:
            log(f"execution environment: building {tag} with ansible-builder; a minute or two")
            _run(
                [str(builder), "build", "--file", str(staged / DEFINITION),
                 "--context", str(Path(tmp) / "context"), "--container-runtime", "docker", "--tag", tag,
                 "--build-arg", f"EE_BASE_IMAGE={base}",
                 "--extra-build-cli-args", f"--label {RECIPE_LABEL}={recipe}", "--verbosity", "1"],
                "ansible-builder build",
            )  # fmt: skip
    archive = cache / f"{recipe}.tar"
    if not archive.exists():
        for stale in cache.glob("*.tar"):
            stale.unlink()
        partial = archive.with_suffix(".partial")
        docker.docker("save", "--output", str(partial), tag)
        partial.rename(archive)
    target = out / ARCHIVE
    shutil.copyfile(archive, target)
    return target


def docker_image_id(tag: str) -> str:
    return docker.docker("image", "inspect", "--format", "{{.Id}}", tag).stdout.strip()


def _label(tag: str) -> str | None:
    result = docker.docker(
        "image", "inspect", "--format", f'{{{{index .Config.Labels "{RECIPE_LABEL}"}}}}', tag, check=False
    )
    return result.stdout.strip() if result.returncode == 0 else None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _run(command: list[str], what: str) -> None:
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        tail = (result.stdout + result.stderr).strip().splitlines()[-8:]
        raise ApplianceError(f"{what} failed (exit {result.returncode}):\n  " + "\n  ".join(tail))
