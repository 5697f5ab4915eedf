"""plugins/modules/kube_apply.py run by ansible on this machine, with a stand-in kubectl (no cluster can
run in the unit tier) that answers `diff` with the exit code and output a scenario gives and records
every call. The lab tier applies real manifests with it (roles flannel, gpu_health, runai_integrations in
tests/lab/test_site.py: first runs apply, re-runs and --check change nothing)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.unit.ansible_module import run_module

STAND_IN = """#!/bin/sh
# kubectl stand-in: records its arguments; `diff` answers as $SCENARIO/diff.{rc,out,err} say.
echo "$*" >> "$SCENARIO/calls"
case " $* " in
  *" diff "*) cat "$SCENARIO/diff.out" 2>/dev/null; cat "$SCENARIO/diff.err" >&2 2>/dev/null
              exit "$(cat "$SCENARIO/diff.rc")" ;;
  *" apply "*) echo "configmap/demo configured"; exit "$(cat "$SCENARIO/apply.rc" 2>/dev/null || echo 0)" ;;
esac
exit 3
"""


@pytest.fixture
def cluster(tmp_path: Path):
    """A scenario directory, a manifest and a kubeconfig, and the stand-in kubectl first on PATH."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "kubectl").write_text(STAND_IN)
    (bin_dir / "kubectl").chmod(0o755)
    (tmp_path / "manifest.yml").write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: demo}\n")
    (tmp_path / "admin.conf").write_text("apiVersion: v1\nkind: Config\n")

    def run(
        diff_rc: int, *extra: str, diff_out: str = "", diff_err: str = "", **args
    ) -> tuple[dict, list[str]]:
        (tmp_path / "diff.rc").write_text(str(diff_rc))
        (tmp_path / "diff.out").write_text(diff_out)
        (tmp_path / "diff.err").write_text(diff_err)
        (tmp_path / "calls").unlink(missing_ok=True)
        params = {"src": str(tmp_path / "manifest.yml"), "kubeconfig": str(tmp_path / "admin.conf"), **args}
        env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "SCENARIO": str(tmp_path)}
        result = run_module("kube_apply", params, *extra, env=env)
        calls = (tmp_path / "calls").read_text().splitlines() if (tmp_path / "calls").exists() else []
        return result, [call.split(" ", 2)[2] for call in calls]  # without --kubeconfig PATH

    run.path = tmp_path
    return run


def test_a_cluster_that_matches_the_manifest_is_no_change_and_nothing_is_applied(cluster):
    result, calls = cluster(0)
    assert result["changed"] is False and result["applied"] is False
    assert calls == [f"diff -f {cluster.path}/manifest.yml"]


def test_a_cluster_that_differs_is_applied(cluster):
    result, calls = cluster(1, diff_out="-  a: 1\n+  a: 2\n")
    assert result["changed"] is True and result["applied"] is True
    assert result["difference"] == "-  a: 1\n+  a: 2\n"
    assert calls == [f"diff -f {cluster.path}/manifest.yml", f"apply -f {cluster.path}/manifest.yml"]
    assert result["stdout_lines"] == ["configmap/demo configured"]


def test_check_mode_reports_the_difference_and_applies_nothing(cluster):
    result, calls = cluster(1, "--check", "--diff", diff_out="+  a: 2\n")
    assert result["changed"] is True and result["applied"] is False
    assert result["diff"] == {"prepared": "+  a: 2\n"}
    assert calls == [f"diff -f {cluster.path}/manifest.yml"]


def test_check_mode_after_a_changed_template_or_before_the_cluster_exists_would_apply(cluster):
    result, calls = cluster(0, "--check", src_changed=True)
    assert (result["changed"], result["applied"], calls) == (True, False, [])
    (cluster.path / "admin.conf").unlink()
    result, calls = cluster(0, "--check")
    assert result["changed"] is True and calls == []
    assert "not written yet" in result["msg"]


def test_a_comparison_that_fails_stops_with_kubectls_message_and_the_hint(cluster):
    result, calls = cluster(
        2,
        diff_err="error: the server could not find the requested resource (PodDefault)\n",
        error_hint="Install Kubeflow.",
    )
    assert result["failed"] is True and result["applied"] is False
    assert result["msg"].endswith(
        "the server could not find the requested resource (PodDefault) Install Kubeflow."
    )
    assert len(calls) == 1  # never applied


def test_a_namespace_the_manifest_creates_counts_as_a_difference_only_when_allowed(cluster):
    missing = 'Error from server (NotFound): namespaces "kube-flannel" not found\n'
    result, _ = cluster(2, diff_err=missing)
    assert result["failed"] is True
    result, calls = cluster(2, diff_err=missing, missing_namespace_is_a_change=True)
    assert result["changed"] is True and result["applied"] is True and len(calls) == 2


def test_a_failed_apply_fails_the_task(cluster):
    (cluster.path / "apply.rc").write_text("1")
    result, _ = cluster(1)
    assert result["failed"] is True and result["msg"].startswith(
        f"kubectl apply -f {cluster.path}/manifest.yml"
    )
