"""The bundle's controller/: what the machine that runs Ansible needs, for a site with no PyPI and no Galaxy.

    controller/install.sh            `install.sh DIR`: a virtualenv in DIR with all of the below, offline;
                                     Debian 12's python3 alone is enough (no pip, no python3-venv)
    controller/constraints.txt       the project's pins, applied to the install
    controller/wheels/*.whl          the toolkit and every Python package it runs with, pinned by
                                     constraints.txt, for CPython 3.11 on x86_64 glibc Linux; pip itself
    controller/collections/*.tar.gz  the collections of requirements.yml and their dependencies, as Galaxy
                                     artifacts (`ansible-galaxy collection install --offline` takes them)
    controller/project.tar.gz        what ansible-playbook runs: site.yml, ansible.cfg, playbooks/, roles/,
                                     plugins/, inventories/, monitoring/, versions.yml

install.sh unpacks the project into DIR/share/appliance and installs the collections into its
collections/ (the first entry of ansible.cfg's collections_path), so `DIR/bin/appliance` finds both
(paths.project_root looks there).

Every part is reproducible: the same sources give the same bytes (the toolkit's wheel is built with a
pinned setuptools and SOURCE_DATE_EPOCH; the tarballs have sorted members, fixed times and owners), so
two builds of a bundle have the same manifest digest. Downloads are cached in ~/.cache/appliance.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import tomllib
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import yaml

from appliance import paths
from appliance.errors import ApplianceError

# The build tools, pinned here because `pip freeze` (which writes constraints.txt) leaves them out.
PIP = "pip==25.3"
SETUPTOOLS = "setuptools==80.9.0"
PYTHON_TAG = "cp311"  # Debian 12's python3 (3.11); the wheels are for this interpreter only
PLATFORM = "x86_64 glibc Linux"
# What ansible-playbook needs of the project on the controller; tests, Molecule and sources stay out.
PROJECT_ENTRIES = (
    "ansible.cfg",
    "site.yml",
    "playbooks",
    "roles",
    "plugins",
    "inventories",
    "monitoring",
    "versions.yml",
    "requirements.yml",
    "constraints.txt",
    "README.md",
)
INSTALL_SCRIPT = Path(__file__).with_name("controller-install.sh")


def assemble(root: Path, project: Path, epoch: int, log: Callable[[str], None]) -> dict[str, tuple[str, str]]:
    """Write ROOT/controller/ and return who owns each of its files, for the manifest."""
    version = toolkit_version(project)
    target = root / "controller"
    wheels = target / "wheels"
    collections = target / "collections"
    for directory in (wheels, collections):
        directory.mkdir(parents=True)
    owners: dict[str, tuple[str, str]] = {}

    install = target / "install.sh"
    shutil.copyfile(INSTALL_SCRIPT, install)
    install.chmod(0o755)
    owners["controller/install.sh"] = ("appliance-controller", version)
    shutil.copyfile(project / "constraints.txt", target / "constraints.txt")
    owners["controller/constraints.txt"] = ("appliance-controller", version)

    for wheel in [*dependency_wheels(project, log), toolkit_wheel(project, epoch, log)]:
        shutil.copyfile(wheel, wheels / wheel.name)
        name, wheel_version = wheel.name.split("-")[:2]
        owners[f"controller/wheels/{wheel.name}"] = (f"python:{name.lower()}", wheel_version)

    for artifact in collection_artifacts(project, collections, epoch):
        namespace, name, collection_version = artifact.name.removesuffix(".tar.gz").split("-")
        owners[f"controller/collections/{artifact.name}"] = (
            f"collection:{namespace}.{name}",
            collection_version,
        )

    project_archive(project, target / "project.tar.gz", epoch)
    owners["controller/project.tar.gz"] = ("appliance-project", version)
    log(f"controller: {len(list(wheels.iterdir()))} wheels, {len(list(collections.iterdir()))} collections")
    return owners


def toolkit_version(project: Path) -> str:
    return tomllib.loads((project / "pyproject.toml").read_text())["project"]["version"]


def runtime_requirements(project: Path) -> list[str]:
    """The toolkit's own dependencies (pyproject's [project] dependencies, not the dev extra)."""
    return list(tomllib.loads((project / "pyproject.toml").read_text())["project"]["dependencies"])


def dependency_wheels(project: Path, log: Callable[[str], None]) -> list[Path]:
    """Wheels of every package the toolkit runs with, and of pip, downloaded once per pin set."""
    return download_wheels(
        project, sorted([*runtime_requirements(project), PIP]), "controller-wheels", "controller", log
    )


def download_wheels(
    project: Path, requirements: list[str], cache_name: str, who: str, log: Callable[[str], None]
) -> list[Path]:
    """Wheels of REQUIREMENTS and their dependencies for this Python (Debian 12's python3), pinned by the
    project's constraints.txt, downloaded once per pin set into ~/.cache/appliance/bundle/CACHE_NAME."""
    constraints = (project / "constraints.txt").read_text()
    key = _digest(json.dumps({"requirements": requirements, "constraints": constraints, "tag": PYTHON_TAG}))
    cache = paths.cache_dir() / "bundle" / cache_name / key
    if not (cache / ".complete").exists():
        log(f"{who}: downloading the wheels of {len(requirements)} requirements and their dependencies")
        shutil.rmtree(cache, ignore_errors=True)
        cache.mkdir(parents=True)
        python_tag_check()
        with tempfile.NamedTemporaryFile("w", suffix=".txt") as pins:
            pins.write(constraints)
            pins.flush()
            _run(
                [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
                 "--only-binary=:all:", "--dest", str(cache), "--constraint", pins.name, *requirements],
                f"pip download ({who})",
            )  # fmt: skip
        (cache / ".complete").touch()
    return sorted(cache.glob("*.whl"))


def toolkit_wheel(project: Path, epoch: int, log: Callable[[str], None]) -> Path:
    """The toolkit's wheel, built from a copy of its sources with a pinned setuptools: the same sources
    give the same bytes. Cached by those sources."""
    sources = sorted(
        file
        for file in [project / "pyproject.toml", project / "README.md", *(project / "src").rglob("*")]
        if file.is_file() and not _skipped(file.relative_to(project)) and ".egg-info" not in file.as_posix()
    )
    recipe = hashlib.sha256(f"{SETUPTOOLS}:{epoch}\n".encode())
    for file in sources:
        recipe.update(f"{file.relative_to(project)}:{file.stat().st_mode & 0o777:o}:".encode())
        recipe.update(hashlib.sha256(file.read_bytes()).digest())
    cache = paths.cache_dir() / "bundle" / "controller-toolkit" / recipe.hexdigest()[:16]
    if not (cache / ".complete").exists():
        log("controller: building the toolkit's wheel")
        shutil.rmtree(cache, ignore_errors=True)
        cache.mkdir(parents=True)
        with tempfile.TemporaryDirectory(prefix="appliance-wheel-") as work:
            copy = Path(work) / "appliance"
            for file in sources:
                target = copy / file.relative_to(project)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(file, target)
            pins = Path(work) / "build-constraints.txt"
            pins.write_text(f"{SETUPTOOLS}\n")
            env = {**os.environ, "SOURCE_DATE_EPOCH": str(epoch), "PIP_CONSTRAINT": str(pins)}
            _run(
                [sys.executable, "-m", "pip", "wheel", "--quiet", "--disable-pip-version-check", "--no-deps",
                 "--no-cache-dir", "--wheel-dir", str(cache), str(copy)],
                "pip wheel (the toolkit)", env=env,
            )  # fmt: skip
        (cache / ".complete").touch()
    (wheel,) = cache.glob("appliance-*.whl")
    return wheel


def collection_artifacts(project: Path, out: Path, epoch: int) -> list[Path]:
    """A Galaxy artifact in OUT for each collection requirements.yml pins, and for their dependencies,
    made from the collections installed beside ansible-core (the pinned `ansible` package holds them).
    A pin that the installed version does not match is an error: the bundle carries what was tested."""
    pinned = {
        entry["name"]: str(entry["version"])
        for entry in yaml.safe_load((project / "requirements.yml").read_text())["collections"]
    }
    wanted = list(pinned)
    done: dict[str, Path] = {}
    while wanted:
        name = wanted.pop(0)
        if name in done:
            continue
        source = installed_collection(name)
        info = json.loads((source / "MANIFEST.json").read_text())["collection_info"]
        if name in pinned and info["version"] != pinned[name]:
            raise ApplianceError(
                f"collection {name}: requirements.yml pins {pinned[name]}, {source} is {info['version']}"
            )
        done[name] = build_artifact(source, out, epoch)
        wanted.extend(sorted(info.get("dependencies") or {}))
    done["appliance.runai"] = own_collection(project, out, epoch)
    return [done[name] for name in sorted(done)]


def own_collection(project: Path, out: Path, epoch: int) -> Path:
    """The project's own collection (galaxy.yml), built by ansible-galaxy, then packed again like the
    others so that two builds give the same bytes (ansible-galaxy stamps each file with the time)."""
    galaxy = Path(sys.executable).with_name("ansible-galaxy")
    command = [str(galaxy) if galaxy.exists() else "ansible-galaxy", "collection", "build", str(project)]
    with tempfile.TemporaryDirectory(prefix="appliance-collection-") as scratch:
        built = subprocess.run(
            [*command, "--output-path", scratch, "--force"], capture_output=True, text=True, check=False
        )
        if built.returncode != 0:
            raise ApplianceError(f"ansible-galaxy collection build failed: {built.stderr.strip()[-2000:]}")
        (artifact,) = Path(scratch).glob("*.tar.gz")
        unpacked = Path(scratch) / "unpacked"
        with tarfile.open(artifact) as tar:
            tar.extractall(unpacked, filter="data")
        return build_artifact(unpacked, out, epoch)


def installed_collection(name: str) -> Path:
    namespace, collection = name.split(".")
    for entry in sys.path:
        candidate = Path(entry or ".") / "ansible_collections" / namespace / collection
        if (candidate / "MANIFEST.json").is_file():
            return candidate
    raise ApplianceError(f"collection {name} is not installed beside ansible-core (pip install ansible)")


def build_artifact(source: Path, out: Path, epoch: int) -> Path:
    """Pack the installed collection SOURCE as a Galaxy artifact (MANIFEST.json, FILES.json, the files)
    in OUT. FILES.json is written afresh from the files packed, so ansible-galaxy's checks hold even
    where the distribution left files out."""
    manifest = json.loads((source / "MANIFEST.json").read_text())
    info = manifest["collection_info"]
    members = sorted(
        path
        for path in source.rglob("*")
        if path.name not in ("MANIFEST.json", "FILES.json")
        and not _skipped(path.relative_to(source))
        and (path.is_file() or path.is_dir())
        and not path.is_symlink()
    )
    entries: list[dict[str, Any]] = [
        {"name": ".", "ftype": "dir", "chksum_type": None, "chksum_sha256": None, "format": 1}
    ]
    for path in members:
        relative = path.relative_to(source).as_posix()
        if path.is_dir():
            entries.append(
                {"name": relative, "ftype": "dir", "chksum_type": None, "chksum_sha256": None, "format": 1}
            )
        else:
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            entries.append(
                {"name": relative, "ftype": "file", "chksum_type": "sha256", "chksum_sha256": digest,
                 "format": 1}
            )  # fmt: skip
    files_json = json.dumps({"files": entries, "format": 1}, indent=4).encode()
    manifest["file_manifest_file"] = {
        "name": "FILES.json",
        "ftype": "file",
        "chksum_type": "sha256",
        "chksum_sha256": hashlib.sha256(files_json).hexdigest(),
        "format": 1,
    }
    manifest_json = json.dumps(manifest, indent=4).encode()
    artifact = out / f"{info['namespace']}-{info['name']}-{info['version']}.tar.gz"
    blobs = [("MANIFEST.json", manifest_json), ("FILES.json", files_json)]
    _write_tar(artifact, epoch, blobs, ((path.relative_to(source).as_posix(), path) for path in members))
    return artifact


def project_archive(project: Path, out: Path, epoch: int) -> Path:
    """project.tar.gz: PROJECT_ENTRIES as the work tree has them (git's tracked and unignored files
    where the project is a git checkout, so local clutter stays out)."""
    files = _project_files(project)
    missing = [entry for entry in ("ansible.cfg", "site.yml") if entry not in files]
    if missing:
        raise ApplianceError(f"controller: {project} lacks {', '.join(missing)}")
    _write_tar(out, epoch, [], ((relative, project / relative) for relative in files))
    return out


def _project_files(project: Path) -> list[str]:
    listed: list[str] | None = None
    if (project / ".git").exists() and shutil.which("git"):
        result = subprocess.run(
            ["git", "-C", str(project), "ls-files", "-z", "--cached", "--others", "--exclude-standard",
             "--", *PROJECT_ENTRIES],
            capture_output=True, check=False,
        )  # fmt: skip
        if result.returncode == 0:
            listed = [name for name in result.stdout.decode().split("\0") if name]
    if listed is None:
        listed = []
        for entry in PROJECT_ENTRIES:
            path = project / entry
            found = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
            listed += [p.relative_to(project).as_posix() for p in found]
    return sorted(
        {
            name
            for name in listed
            if (project / name).is_file() and not (project / name).is_symlink() and not _skipped(Path(name))
        }
    )


def _write_tar(
    out: Path, epoch: int, blobs: list[tuple[str, bytes]], files: Iterable[tuple[str, Path]]
) -> None:
    """A gzip'd tar with sorted members, owned by root, stamped EPOCH: the same input, the same bytes."""

    def stamped(info: tarfile.TarInfo, mode: int) -> tarfile.TarInfo:
        info.mtime, info.uid, info.gid, info.uname, info.gname, info.mode = epoch, 0, 0, "", "", mode
        return info

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in blobs:
            info = stamped(tarfile.TarInfo(name), 0o644)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, path in sorted(files):
            info = tar.gettarinfo(str(path), arcname=name)
            executable = path.stat().st_mode & 0o111
            stamped(info, (0o755 if executable or info.isdir() else 0o644))
            if info.isdir():
                tar.addfile(info)
            else:
                with path.open("rb") as handle:
                    tar.addfile(info, handle)
    with out.open("wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=epoch, filename="") as packed:
        packed.write(buffer.getvalue())


def _skipped(relative: Path) -> bool:
    """Python's byte-code caches: never packed (RELATIVE: a path below the directory being packed)."""
    return "__pycache__" in relative.parts or relative.suffix == ".pyc"


def python_tag_check() -> None:
    if sys.version_info[:2] != (3, 11):
        raise ApplianceError(
            f"controller: the bundle's wheels are for CPython 3.11 (Debian 12's python3); this is "
            f"{sys.version.split()[0]}: build the bundle with the project's .venv on Debian 12"
        )


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _run(command: list[str], what: str, env: dict[str, str] | None = None) -> None:
    result = subprocess.run(command, capture_output=True, text=True, check=False, env=env)
    if result.returncode != 0:
        detail = (result.stderr or result.stdout).strip()[-2000:]
        raise ApplianceError(f"controller: {what} failed: {detail}")
