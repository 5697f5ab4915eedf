"""The CIS Kubernetes Benchmark v1.23 (kube-bench) on a running lab: prints the PASS, FAIL, WARN and INFO
counts of every target on the first control-plane node and on a worker, and the id of every FAIL and WARN.

    python benchmarks/cis.py [--lab NAME] [--worker worker-1]

The lab must be an appliance already (`make lab`, or a test's lab kept with APPLIANCE_TEST_KEEP_LAB=1);
NAME is its APPLIANCE_LAB_NAME (default: that variable, else "lab"). kube-bench is the one `make setup`
built from ../shared/upstream (src/appliance/lab/kube_bench.py). docs/hardening.md explains each WARN.
"""

from __future__ import annotations

import argparse
import os

from appliance.lab import kube_bench


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lab", default=os.environ.get("APPLIANCE_LAB_NAME", "lab"))
    parser.add_argument("--worker", default="worker-1")
    args = parser.parse_args()
    totals = dict.fromkeys(kube_bench.STATUSES, 0)
    for node, targets in (
        ("cp-1", kube_bench.CONTROL_PLANE_TARGETS),
        (args.worker, kube_bench.WORKER_TARGETS),
    ):
        report = kube_bench.run(f"appliance-{args.lab}-{node}", targets)
        for name, target in kube_bench.summarize(report).items():
            counts = "  ".join(f"{status} {target.counts[status]:3d}" for status in kube_bench.STATUSES)
            print(f"{node:10s} {name:13s} {counts}")
            if target.failed:
                print(f"{'':24s} FAIL: {', '.join(target.failed)}")
            if target.warned:
                print(f"{'':24s} WARN: {', '.join(target.warned)}")
            for status in kube_bench.STATUSES:
                totals[status] += target.counts[status]
    print(
        f"{kube_bench.BENCHMARK} total: " + "  ".join(f"{status} {count}" for status, count in totals.items())
    )


if __name__ == "__main__":
    main()
