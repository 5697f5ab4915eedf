"""kube-bench's reports, as summarized for `python benchmarks/cis.py` and the lab tier: recorded on the
lab (kube-bench a73ce37, --benchmark cis-1.23, a kubeadm 1.23.5 appliance on containerd before hardening:
the 10 control-plane FAILs and the worker's 1 that issue 24 starts from)."""

from __future__ import annotations

import json

import pytest

from appliance.errors import ApplianceError
from appliance.lab import kube_bench
from tests.conftest import PROJECT

FIXTURES = PROJECT / "tests" / "unit" / "fixtures" / "kube-bench"


def report(name: str) -> dict:
    return json.loads((FIXTURES / name).read_text())


def test_the_control_plane_report_counts_every_target_and_names_each_fail_and_warn():
    targets = kube_bench.summarize(report("cis-1.23-cp-1-containerd.json"))
    assert set(targets) == {"master", "controlplane", "etcd", "node"}
    master = targets["master"]
    assert master.counts == {"PASS": 43, "FAIL": 9, "WARN": 10, "INFO": 0}
    assert master.failed == [
        "1.1.12",
        "1.2.6",
        "1.2.18",
        "1.2.19",
        "1.2.20",
        "1.2.21",
        "1.2.22",
        "1.3.2",
        "1.4.1",
    ]
    assert targets["etcd"].counts == {"PASS": 7, "FAIL": 0, "WARN": 0, "INFO": 0}
    assert targets["node"].failed == ["4.2.6"]
    assert sum(target.counts["FAIL"] for target in targets.values()) == 10
    totals = report("cis-1.23-cp-1-containerd.json")["Totals"]
    assert sum(target.counts["WARN"] for target in targets.values()) == totals["total_warn"]
    assert sum(target.counts["PASS"] for target in targets.values()) == totals["total_pass"]


def test_the_worker_report_fails_protect_kernel_defaults_alone():
    (node,) = kube_bench.summarize(report("cis-1.23-worker-1-containerd.json")).values()
    assert (node.name, node.failed) == ("node", ["4.2.6"])
    assert node.warned == ["4.1.3", "4.1.4", "4.2.9", "4.2.10", "4.2.13"]


def test_a_status_kube_bench_never_gives_is_an_error():
    broken = {
        "Controls": [
            {"node_type": "node", "tests": [{"results": [{"test_number": "4.1.1", "status": "MAYBE"}]}]}
        ]
    }
    with pytest.raises(ApplianceError, match=r"4\.1\.1 has status 'MAYBE'"):
        kube_bench.summarize(broken)
