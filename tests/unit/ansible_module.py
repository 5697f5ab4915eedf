"""Run one of plugins/modules on this machine through ansible itself (argument spec, check mode, JSON)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[2]
ANSIBLE = Path(sys.executable).parent / "ansible"


def run_module(name: str, args: dict, *extra: str, env: dict | None = None) -> dict:
    """`ansible localhost -m appliance.runai.NAME -a ARGS EXTRA...` (e.g. --check): its result, a dict.
    ENV: variables for the module's environment (PATH, for a stand-in command)."""
    env = {
        **os.environ,
        **(env or {}),
        "ANSIBLE_LOAD_CALLBACK_PLUGINS": "1",
        "ANSIBLE_STDOUT_CALLBACK": "json",
    }
    result = subprocess.run(
        [
            str(ANSIBLE),
            "localhost",
            "-c",
            "local",
            "-m",
            f"appliance.runai.{name}",
            "-a",
            json.dumps(args),
            *extra,
        ],
        cwd=PROJECT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    return json.loads(result.stdout)["plays"][0]["tasks"][0]["hosts"]["localhost"]
