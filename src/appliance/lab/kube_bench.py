"""kube-bench (the CIS Kubernetes Benchmark) on a lab node: `python benchmarks/cis.py` and the lab tier.

kube-bench is built from its source by `make setup` (scripts/setup-host.sh) into
~/.cache/appliance/kube-bench/<revision>/, its cfg/ beside it. It is copied into the node's container and
run there as root with `--benchmark cis-1.23 --json`, as its job-master.yaml and job-node.yaml run it in a
pod with the host's PID namespace and /etc, /var/lib and /usr/bin mounted.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from appliance import paths
from appliance.errors import ApplianceError
from appliance.lab import docker

REVISION = "a73ce37"
BENCHMARK = "cis-1.23"
# What kube-bench checks on a control-plane node, and on a worker (its documentation's targets).
CONTROL_PLANE_TARGETS = ("master", "controlplane", "etcd", "node")
WORKER_TARGETS = ("node",)
ON_NODE = "/opt/appliance-kube-bench"
STATUSES = ("PASS", "FAIL", "WARN", "INFO")


def install_dir() -> Path:
    return paths.cache_dir() / "kube-bench" / REVISION


@dataclass
class Target:
    """One target's outcome: how many checks ended in each status, and which failed or warned."""

    name: str
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STATUSES, 0))
    failed: list[str] = field(default_factory=list)
    warned: list[str] = field(default_factory=list)


def summarize(report: dict) -> dict[str, Target]:
    """kube-bench's --json report -> each target (node_type) with its counts and FAIL and WARN ids."""
    targets: dict[str, Target] = {}
    for control in report.get("Controls") or []:
        target = targets.setdefault(control["node_type"], Target(control["node_type"]))
        for group in control.get("tests") or []:
            for result in group.get("results") or []:
                status = result.get("status", "")
                if status not in target.counts:
                    raise ApplianceError(
                        f"kube-bench: check {result.get('test_number')} has status {status!r}"
                    )
                target.counts[status] += 1
                if status == "FAIL":
                    target.failed.append(result["test_number"])
                elif status == "WARN":
                    target.warned.append(result["test_number"])
    return targets


def run(container: str, targets: tuple[str, ...]) -> dict:
    """Run kube-bench in the lab node CONTAINER for TARGETS; return its JSON report."""
    source = install_dir()
    if not (source / "kube-bench").is_file():
        raise ApplianceError(f"kube-bench is not built ({source}/kube-bench is missing): run `make setup`")
    docker.docker("exec", container, "mkdir", "-p", ON_NODE)
    docker.docker("cp", str(source / "kube-bench"), f"{container}:{ON_NODE}/kube-bench")
    docker.docker("cp", str(source / "cfg"), f"{container}:{ON_NODE}/")
    result = docker.docker(
        "exec", container, f"{ON_NODE}/kube-bench", "run", "--benchmark", BENCHMARK,
        "--targets", ",".join(targets), "--config-dir", f"{ON_NODE}/cfg",
        "--config", f"{ON_NODE}/cfg/config.yaml", "--json", "--noremediations",
        check=False,
    )  # fmt: skip
    try:
        return json.loads(result.stdout)
    except json.JSONDecodeError as error:
        raise ApplianceError(
            f"kube-bench on {container} gave no report (exit {result.returncode}): "
            f"{result.stderr.strip()[-500:]}"
        ) from error
