"""Benchmark of node maintenance: prints the drain-to-empty time and the rejoin-to-Ready time.

    python benchmarks/maintenance.py [--rounds N]

Runs its own lab (APPLIANCE_LAB_NAME=benchmaint on 172.28.9.0/24; cp-1 + 2 workers) built with
`appliance bootstrap` from the lab's offline bundle (not timed), and a test workload of 4 pods spread
over the workers (pause, terminationGracePeriodSeconds 5). Each round, through the installed CLI:

1. drain-to-empty: `appliance node drain worker-1` from its start until it returns, which it does once
   only DaemonSet and static pods remain on worker-1; then until every pod of the workload runs
   elsewhere (Running); `appliance node restore worker-1` and the workload spread again (not timed);
2. rejoin-to-Ready: `appliance node remove worker-1` (timed too), then `appliance node rejoin worker-1`
   from its start until it returns, which it does once worker-1 is Ready with its role labels.

The medians over the rounds are the figures (this machine's CPU time is shared: runs vary).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from lab_cli import appliance, timed

ENV = {**os.environ, "APPLIANCE_LAB_NAME": "benchmaint", "APPLIANCE_LAB_SUBNET": "172.28.9.0/24"}
KUBECTL = Path.home() / ".local/state/appliance/bundle/bin/kubectl"
WORKLOAD = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: sleeper, namespace: default}
spec:
  replicas: 4
  selector: {matchLabels: {app: sleeper}}
  template:
    metadata: {labels: {app: sleeper}}
    spec:
      terminationGracePeriodSeconds: 5
      topologySpreadConstraints:
        - {maxSkew: 1, topologyKey: kubernetes.io/hostname, whenUnsatisfiable: ScheduleAnyway,
           labelSelector: {matchLabels: {app: sleeper}}}
      affinity:
        nodeAffinity:
          requiredDuringSchedulingIgnoredDuringExecution:
            nodeSelectorTerms:
              - matchExpressions: [{key: node-role.kubernetes.io/master, operator: DoesNotExist}]
      containers:
        - {name: pause, image: "172.28.9.10:5000/pause:3.6"}
"""


def kubectl(*args: str, stdin: str | None = None) -> str:
    config = appliance(ENV, "lab", "kubeconfig").strip()
    result = subprocess.run(
        [str(KUBECTL), "--kubeconfig", config, *args], input=stdin, capture_output=True, text=True, check=True
    )
    return result.stdout


def pods() -> list[dict]:
    items = json.loads(kubectl("get", "pods", "-l", "app=sleeper", "-o", "json"))["items"]
    return [p for p in items if not p["metadata"].get("deletionTimestamp")]


def wait_until(condition, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            sys.exit("timed out waiting for the workload")
        time.sleep(0.5)


def running_off(node: str) -> bool:
    found = pods()
    return len(found) == 4 and all(
        p["status"].get("phase") == "Running" and p["spec"].get("nodeName") not in (None, node) for p in found
    )


def spread() -> None:
    kubectl("rollout", "restart", "deployment/sleeper")
    kubectl("rollout", "status", "deployment/sleeper", "--timeout", "300s")
    wait_until(lambda: {p["spec"].get("nodeName") for p in pods()} == {"worker-1", "worker-2"})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    options = parser.parse_args()

    appliance(ENV, "lab", "bundle")
    appliance(ENV, "lab", "down")
    appliance(ENV, "lab", "up", "--workers", "2")
    try:
        appliance(ENV, "bootstrap", "--json")
        kubectl("apply", "-f", "-", stdin=WORKLOAD)
        spread()
        drains, moved, removes, rejoins = [], [], [], []
        for _ in range(options.rounds):
            started = time.monotonic()
            appliance(ENV, "node", "drain", "worker-1", "--json")
            drains.append(time.monotonic() - started)
            wait_until(lambda: running_off("worker-1"))
            moved.append(time.monotonic() - started)
            appliance(ENV, "node", "restore", "worker-1", "--json")
            spread()
            removes.append(timed(ENV, "node", "remove", "worker-1", "--json"))
            rejoins.append(timed(ENV, "node", "rejoin", "worker-1", "--json"))
            spread()
    finally:
        appliance(ENV, "lab", "down")
    figures = [
        ("drain-to-empty: `node drain worker-1` until only DaemonSet pods remain", drains),
        ("drain until every pod of the workload is Running on another node", moved),
        ("`node remove worker-1` (drain with eviction, delete, kubeadm reset)", removes),
        ("rejoin-to-Ready: `node rejoin worker-1` until Ready with its role labels", rejoins),
    ]
    print(f"lab of 1 control plane + 2 workers; 4 pods, grace period 5 s; median of {options.rounds} rounds")
    width = max(len(label) for label, _ in figures)
    for label, values in figures:
        spread_text = f"(min {min(values):.1f}, max {max(values):.1f})"
        print(f"{label:<{width}}  {statistics.median(values):7.2f} s  {spread_text}")


if __name__ == "__main__":
    main()
