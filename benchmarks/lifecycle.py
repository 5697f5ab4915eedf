"""Benchmark of the appliance's lifecycle operations (issue 21): prints how long `appliance certs renew
--force` takes, how long the API server is unavailable during it, and how long `appliance certs status`
takes.

    python benchmarks/lifecycle.py [--rounds N] [--keep]

Runs its own lab (APPLIANCE_LAB_NAME=benchlife on 172.28.10.0/24; cp-1 + 1 worker) built with
`appliance bootstrap` from the lab's offline bundle (not timed). Each round, through the installed CLI:

1. `appliance certs renew --force` from its start until it returns (every kubeadm certificate renewed,
   etcd, the API server, the controller-manager and the scheduler restarted one at a time, each waited on);
   meanwhile a thread asks the API server's /readyz from this machine every 100 ms (1 s timeout), and the
   longest run of failed answers is the unavailable window;
2. `appliance certs status` (every node's certificates read and judged).

One round by default: a renewal within about ten minutes of the last restarts of the components meets the
kubelet's restart back-off, which the monthly timer never does (with --rounds N > 1 the rounds wait for it to
reset, 11 minutes apart). The medians over the rounds are the figures.
"""

from __future__ import annotations

import argparse
import os
import ssl
import statistics
import threading
import time
import urllib.request

from lab_cli import appliance, timed

ENV = {**os.environ, "APPLIANCE_LAB_NAME": "benchlife", "APPLIANCE_LAB_SUBNET": "172.28.10.0/24"}
API = "https://172.28.10.10:6443/readyz"


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
    appliance(ENV, "lab", "up", "--workers", "1")
    try:
        appliance(ENV, "bootstrap")
        renew, window, status = [], [], []
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
            print(
                f"round {round_number}: renew {renew[-1]:.1f} s, API unavailable {window[-1]:.1f} s, "
                f"status {status[-1]:.1f} s",
                flush=True,
            )
        print("lab of 1 control plane + 1 worker, on 2 CPUs; medians of", args.rounds, "rounds")
        print(f"certs renew --force (every kubeadm certificate)     {statistics.median(renew):8.1f} s")
        print(f"  API server unavailable during it (longest)       {statistics.median(window):8.1f} s")
        print(f"certs status (every node's certificates)           {statistics.median(status):8.1f} s")
    finally:
        if not args.keep:
            appliance(ENV, "lab", "down")


if __name__ == "__main__":
    main()
