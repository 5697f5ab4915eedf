"""The docker CLI, called with argument lists; failures become one readable error."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from appliance.errors import ApplianceError


def binary() -> str:
    """The docker CLI's path, or a readable error."""
    binary = shutil.which("docker")
    if binary is None:
        raise ApplianceError(
            "the docker CLI is not installed; run `make setup` (installs Debian's docker.io)"
        )
    return binary


def docker(*args: str, input_text: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run `docker ARGS...` and return its result; raise ApplianceError with docker's message on failure."""
    result = subprocess.run(
        [binary(), *args],
        input=input_text,
        capture_output=True,
        text=True,
        check=False,
    )
    if check and result.returncode != 0:
        lines = [
            line.strip()
            for line in (result.stderr or result.stdout).splitlines()
            if line.strip() and "--help" not in line
        ]
        raise ApplianceError(f"docker {args[0]} failed: {' | '.join(lines) or f'exit {result.returncode}'}")
    return result


def engine_answers() -> bool:
    return docker("version", "--format", "{{.Server.Version}}", check=False).returncode == 0


def require_engine() -> None:
    if not engine_answers():
        raise ApplianceError("no docker engine answers; run `make setup` (starts dockerd) or start docker")


def inspect(kind: str, names: Sequence[str]) -> list[dict[str, Any]]:
    """`docker KIND inspect` of the objects that exist among NAMES (missing ones are left out)."""
    found: list[dict[str, Any]] = []
    for name in names:
        result = docker(kind, "inspect", name, check=False)
        if result.returncode == 0:
            found.extend(json.loads(result.stdout))
    return found


def image_exists(tag: str) -> bool:
    return docker("image", "inspect", tag, check=False).returncode == 0


def import_rootfs(rootfs: Path, tag: str, changes: Sequence[str]) -> None:
    """`docker import` the directory ROOTFS as image TAG, with Dockerfile CHANGES (CMD, ENV, LABEL)."""
    tar = subprocess.Popen(["tar", "-C", str(rootfs), "--numeric-owner", "-c", "."], stdout=subprocess.PIPE)
    change_args = [arg for change in changes for arg in ("--change", change)]
    imported = subprocess.Popen(
        [binary(), "import", *change_args, "-", tag],
        stdin=tar.stdout,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert tar.stdout is not None
    tar.stdout.close()  # the parent must not keep the pipe open, or tar never sees its reader go
    _, errors = imported.communicate()
    if tar.wait() != 0 or imported.returncode != 0:
        raise ApplianceError(f"docker import of {tag} failed: {errors.strip()}")
