"""Benchmark of the appliance's lifecycle operations (issue 21): prints how long `appliance certs renew
--force` takes, how long the API server is unavailable during it, how long `appliance certs status`
takes; how long `appliance backup` takes and how big its archive is; and how long `appliance restore`
takes from its start until every node is Ready again, after cp-1 lost its state.

    python benchmarks/lifecycle.py [--rounds N] [--keep]

Runs its own lab (APPLIANCE_LAB_NAME=benchlife on 172.28.10.0/24; cp-1 + 2 workers, Run:ai from the
synthetic tarball with its PostgreSQL on worker-2) built with `appliance bootstrap` from the lab's
offline bundle (not timed). Each round, through the installed CLI:

1. `appliance certs renew --force` from its start until it returns (every kubeadm certificate renewed,
   etcd, the API server, the controller-manager and the scheduler restarted one at a time, each waited on);
   meanwhile a thread asks the API server's /readyz from this machine every 100 ms (1 s timeout), and the
   longest run of failed answers is the unavailable window;
2. `appliance certs status` (every node's certificates read and judged);
3. `appliance backup --out DIR` (the etcd snapshot, PKI, configuration, Helm values, the Run:ai database,
   encrypted, and the copy to this machine): its time and the archive's size;
4. cp-1 loses its state (kubeadm reset, its containers, /var/lib/etcd and the PKI removed; not timed), then
   `appliance restore ARCHIVE`: the time from its start until `kubectl get nodes` (with the restored
   admin kubeconfig) first shows every node Ready with its kubelet's Lease renewed since the start (the
   snapshot holds the nodes as Ready as they were), polled every second, and until the command returns
   (the Run:ai database restored too).

One round by default: a renewal within about ten minutes of the last restarts of the components meets the
kubelet's restart back-off, which the monthly timer never does (with --rounds N > 1 the rounds wait for it to
reset, 11 minutes apart). The medians over the rounds are the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

from lab_cli import appliance, timed

ENV = {**os.environ, "APPLIANCE_LAB_NAME": "benchlife", "APPLIANCE_LAB_SUBNET": "172.28.10.0/24"}
API = "https://172.28.10.10:6443/readyz"
KUBECTL = Path.home() / ".local/state/appliance/bundle/bin/kubectl"
WIPE = (
    "kubeadm reset --force --cri-socket unix:///var/run/dockershim.sock >/dev/null 2>&1;"
    " docker ps --all --quiet --filter name=^k8s_ | xargs --no-run-if-empty docker rm --force >/dev/null;"
    " rm -rf /var/lib/etcd /etc/kubernetes/pki"
)


def kubectl_json(kubeconfig: str, *args: str) -> dict | None:
    result = subprocess.run(
        [str(KUBECTL), "--kubeconfig", kubeconfig, *args, "--output=json", "--request-timeout=2s"],
        capture_output=True,
        text=True,
        check=False,
    )
    return json.loads(result.stdout) if result.returncode == 0 else None


def all_ready(kubeconfig: str, since: str) -> bool:
    """Every node Ready, and its kubelet's Lease renewed after SINCE (UTC ISO 8601, microseconds): the etcd
    snapshot holds the nodes as Ready as they were at backup time, the renewal proves the kubelet is back."""
    nodes = kubectl_json(kubeconfig, "get", "nodes")
    leases = kubectl_json(kubeconfig, "get", "leases", "--namespace", "kube-node-lease")
    if not nodes or not leases or not nodes["items"]:
        return False
    renewed = {lease["metadata"]["name"]: lease["spec"].get("renewTime") or "" for lease in leases["items"]}
    return all(
        renewed.get(n["metadata"]["name"], "") > since
        and any(c["type"] == "Ready" and c["status"] == "True" for c in n["status"]["conditions"])
        for n in nodes["items"]
    )


def restore_round(archive: Path) -> tuple[float, float]:
    """(seconds from the start of `restore` to every node Ready, seconds until it returned)."""
    # The admin kubeconfig of before the wipe: its client certificate is signed by the CA restore puts back.
    kubeconfig = appliance(ENV, "lab", "kubeconfig").strip()
    appliance(ENV, "lab", "exec", "cp-1", "--", "sh", "-c", WIPE)
    started = time.monotonic()
    since = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    process = subprocess.Popen(
        [str(Path(sys.executable).parent / "appliance"), "restore", str(archive), "--force"],
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    ready_at = None
    while process.poll() is None:
        if ready_at is None and all_ready(kubeconfig, since):
            ready_at = time.monotonic() - started
        time.sleep(1)
    output = process.stdout.read()
    if process.returncode != 0:
        raise SystemExit(f"appliance restore failed:\n{output[-3000:]}")
    total = time.monotonic() - started
    return (ready_at if ready_at is not None else total), total


class Prober(threading.Thread):
    """Asks /readyz every 100 ms; records the longest stretch of failures (first failure to next success)."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.stop = threading.Event()
        self.longest = 0.0
        self.failures = 0
        self.context = ssl.create_default_context()
        self.context.check_hostname = False
        self.context.verify_mode = ssl.CERT_NONE  # the window, not the identity, is measured here

    def answers(self) -> bool:
        try:
            with urllib.request.urlopen(API, timeout=1, context=self.context) as response:
                return response.status == 200
        except OSError:
            return False

    def run(self) -> None:
        down_since: float | None = None
        while not self.stop.is_set():
            now = time.monotonic()
            if self.answers():
                if down_since is not None:
                    self.longest = max(self.longest, now - down_since)
                    down_since = None
            else:
                self.failures += 1
                down_since = now if down_since is None else down_since
            self.stop.wait(0.1)
        if down_since is not None:
            self.longest = max(self.longest, time.monotonic() - down_since)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--keep", action="store_true", help="leave the lab up afterwards")
    args = parser.parse_args()
    tarball = appliance(ENV, "lab", "runai-tarball").strip()
    appliance(ENV, "lab", "up", "--workers", "2", "--runai-tarball", tarball)
    out = Path(tempfile.mkdtemp(prefix="benchlife-backups-"))
    try:
        appliance(ENV, "bootstrap")
        renew, window, status, backup, size, ready, restore = [], [], [], [], [], [], []
        for round_number in range(1, args.rounds + 1):
            if round_number > 1:
                time.sleep(660)  # the kubelet forgets a container's back-off after 10 minutes of running
            prober = Prober()
            prober.start()
            renew.append(timed(ENV, "certs", "renew", "--force"))
            prober.stop.set()
            prober.join()
            window.append(prober.longest)
            status.append(timed(ENV, "certs", "status"))
            before = set(out.iterdir())
            backup.append(timed(ENV, "backup", "--out", str(out)))
            (archive,) = set(out.iterdir()) - before
            size.append(archive.stat().st_size / 2**20)
            until_ready, until_done = restore_round(archive)
            ready.append(until_ready)
            restore.append(until_done)
            print(
                f"round {round_number}: renew {renew[-1]:.1f} s, API unavailable {window[-1]:.1f} s, "
                f"status {status[-1]:.1f} s, backup {backup[-1]:.1f} s ({size[-1]:.1f} MiB), "
                f"restore: every node Ready after {ready[-1]:.1f} s, done after {restore[-1]:.1f} s",
                flush=True,
            )
        print("lab of 1 control plane + 2 workers with Run:ai, on 2 CPUs; medians of", args.rounds, "rounds")
        print(f"certs renew --force (every kubeadm certificate)     {statistics.median(renew):8.1f} s")
        print(f"  API server unavailable during it (longest)       {statistics.median(window):8.1f} s")
        print(f"certs status (every node's certificates)           {statistics.median(status):8.1f} s")
        print(f"backup --out (archive copied to this machine)      {statistics.median(backup):8.1f} s")
        print(f"  archive size                                     {statistics.median(size):8.1f} MiB")
        print(f"restore: start to every node Ready                 {statistics.median(ready):8.1f} s")
        print(f"restore: start to done (Run:ai database included) {statistics.median(restore):8.1f} s")
    finally:
        shutil.rmtree(out, ignore_errors=True)  # the archives hold the lab's CA keys
        if not args.keep:
            appliance(ENV, "lab", "down")


if __name__ == "__main__":
    main()
