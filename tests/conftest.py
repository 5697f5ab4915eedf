"""Shared fixtures: how tests find the project and call the installed `appliance` CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parents[1]
# The collection appliance.runai's Python (modules, filters, module_utils) imports its module_utils by the
# collection's package path, as Ansible loads it: collections/ansible_collections/appliance/runai links to
# this checkout, so those imports resolve in the tests too.
sys.path.insert(0, str(PROJECT / "collections"))
BIN = Path(sys.executable).parent


def run_cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    """Run the installed `appliance` exactly as a user would, from the project directory."""
    return subprocess.run(
        [str(BIN / "appliance"), *args],
        cwd=PROJECT,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def run_playbook(
    env: dict[str, str], playbook: str, *extra: str, timeout: float = 1800
) -> tuple[subprocess.CompletedProcess[str], dict]:
    """`appliance run PLAYBOOK --json EXTRA` on the lab ENV names: the process and its JSON summary
    (empty when the run printed none, for example on a usage error)."""
    result = run_cli("run", playbook, "--json", *extra, env=env, timeout=timeout)
    try:
        return result, json.loads(result.stdout)
    except json.JSONDecodeError:
        return result, {}


def changed_tasks(summary: dict) -> dict[str, set[str]]:
    """The tasks that reported a change ("role : task", as ansible prints them), by host, from the
    ansible-runner events of the run that printed SUMMARY (`--json`; its "log" is the run's stdout, kept
    beside job_events/)."""
    changed: dict[str, set[str]] = {}
    for path in (Path(summary["log"]).parent / "job_events").glob("*.json"):
        event = json.loads(path.read_text())
        data = event.get("event_data", {})
        if event.get("event") == "runner_on_ok" and data.get("res", {}).get("changed"):
            task = f"{data['role']} : {data['task']}" if data.get("role") else data["task"]
            changed.setdefault(data["host"], set()).add(task)
    return changed


BUNDLE_KUBECTL = Path.home() / ".local/state/appliance/bundle/bin/kubectl"


def lab_kubectl(
    env: dict[str, str], *args: str, stdin: str | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """The bundle's kubectl against the cluster of the lab ENV names, through `appliance lab kubeconfig`."""
    config = run_cli("lab", "kubeconfig", env=env)
    assert config.returncode == 0, config.stderr
    return subprocess.run(
        [str(BUNDLE_KUBECTL), "--kubeconfig", config.stdout.strip(), *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


LAB_STATE = Path.home() / ".local/state/appliance"


def lab_registry_password(env: dict[str, str]) -> str:
    """The registry pusher's password of the lab ENV names: the file its inventory's lookup reads (0600,
    made once per lab, as a site keeps it in Ansible Vault)."""
    path = LAB_STATE / env["APPLIANCE_LAB_NAME"] / "registry-password"
    assert path.stat().st_mode & 0o777 == 0o600
    return path.read_text().strip()


def lab_registry_ca(env: dict[str, str]) -> Path:
    """The appliance's CA that signed the lab's registry certificate (appliance_registry_pki_dir: made on
    the controller by role bundle_serve, per inventory directory, which is named after the lab)."""
    return LAB_STATE / "registry-pki" / env["APPLIANCE_LAB_NAME"] / "ca.crt"


# The lab tests' workload (tests/lab/fixtures/echo), built here, and the site image the labs' bundle
# carries: the echo image under the name of the guide's test image (gcr.io/run-ai-demo/quickstart), added
# with `lab bundle --image` as a site adds its own (the real quickstart image cannot be downloaded here).
ECHO_SOURCE = PROJECT / "tests" / "lab" / "fixtures" / "echo" / "main.go"
ECHO_IMAGE = "appliance-test/echo:1"
SITE_IMAGE = "gcr.io/run-ai-demo/quickstart:appliance-test"


def build_echo_image() -> str:
    """`docker build` the echo workload into this machine's engine as ECHO_IMAGE (FROM scratch)."""
    with tempfile.TemporaryDirectory() as work:
        directory = Path(work)
        env = {**os.environ, "CGO_ENABLED": "0", "GOTOOLCHAIN": "local", "GOFLAGS": ""}
        subprocess.run(
            ["go", "build", "-o", str(directory / "echo"), str(ECHO_SOURCE)], env=env, check=True, timeout=600
        )
        (directory / "Dockerfile").write_text('FROM scratch\nCOPY echo /echo\nENTRYPOINT ["/echo"]\n')
        subprocess.run(
            ["docker", "build", "-q", "-t", ECHO_IMAGE, str(directory)], check=True, capture_output=True
        )
    return ECHO_IMAGE


def build_lab_bundle() -> subprocess.CompletedProcess[str]:
    """The labs' bundle, with SITE_IMAGE (the echo workload) as a site image."""
    build_echo_image()
    return run_cli("lab", "bundle", "--image", f"{SITE_IMAGE}=docker-daemon:{ECHO_IMAGE}", timeout=4 * 3600)


@pytest.fixture
def cli():
    return run_cli
