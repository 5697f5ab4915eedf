"""Benchmark of the hardening's cost: prints how long site.yml takes on fresh nodes with every hardening
default on (as shipped) and with them all off, and the ratio on/off.

    python benchmarks/hardening.py [--workers N] [--rounds N]

Runs benchmarks/site.py's lab (APPLIANCE_LAB_NAME=benchsite on 172.28.7.0/24; 1 control plane + 1 worker
by default) through the installed CLI: for each round, fresh nodes (`lab down`, `lab up`, not timed) and
`appliance bootstrap` with the defaults, then fresh nodes again and `appliance bootstrap` with HARDENING_OFF
(rounds alternate, so a slower minute of this shared machine does not land on one side only). The figures
are medians. The bundle must exist (`appliance lab bundle`); its build is not timed.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
from pathlib import Path

# benchmarks/site.py, loaded by path: its name is also the standard library's `site`.
_spec = importlib.util.spec_from_file_location("site_benchmark", Path(__file__).with_name("site.py"))
site_benchmark = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(site_benchmark)

# Every hardening default of the cluster's configuration turned off (docs/hardening.md).
HARDENING_OFF = {
    "kube_control_plane_profiling": True,
    "kube_control_plane_audit_log": False,
    "kube_control_plane_tls_min_version": "",
    "kube_control_plane_tls_cipher_suites": [],
    "appliance_kubelet_protect_kernel_defaults": False,
    "kube_control_plane_secrets_encryption": False,
    "kube_control_plane_pod_security": False,
    "appliance_kubelet_serving_certificates": False,
    "kube_control_plane_etcd_user": "",
    "appliance_registry_tls": False,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=2)
    options = parser.parse_args()
    site_benchmark.appliance("lab", "bundle")
    times: dict[str, list[float]] = {"on": [], "off": []}
    try:
        for _ in range(options.rounds):
            for side, extra in (("on", ()), ("off", ("-e", json.dumps(HARDENING_OFF)))):
                site_benchmark.fresh_lab(options.workers)
                seconds, changed, _cpu = site_benchmark.timed_bootstrap(*extra)
                if not any(changed.values()):
                    sys.exit(f"site.yml changed nothing on fresh nodes ({side}): {changed}")
                times[side].append(seconds)
    finally:
        site_benchmark.appliance("lab", "down", check=False)
    on, off = statistics.median(times["on"]), statistics.median(times["off"])
    rounded = {side: [round(t, 1) for t in values] for side, values in times.items()}
    print(f"lab: cp-1 + {options.workers} worker(s), {options.rounds} round(s), fresh nodes each time")
    print(f"site.yml, hardening on (the defaults), median    {on:7.1f} s   {rounded['on']}")
    print(f"site.yml, hardening off, median                  {off:7.1f} s   {rounded['off']}")
    print(f"cost of the hardening: on / off                  {on / off:7.2f} x")


if __name__ == "__main__":
    main()
