"""plugins/filter/dpkg.py: the one reader of dpkg's answer for the roles prereqs, docker, kube_packages and
bundle_serve (each skips apt when nothing it installs is missing)."""

from __future__ import annotations

import importlib.util
import subprocess

from tests.conftest import PROJECT

_spec = importlib.util.spec_from_file_location("dpkg_filter", PROJECT / "plugins" / "filter" / "dpkg.py")
dpkg_filter = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(dpkg_filter)

QUERY = ["dpkg-query", "--show", "--showformat=${db:Status-Abbrev} ${Package} ${Version}\\n"]


def test_it_reads_this_machines_dpkg_installed_package_and_skips_an_unknown_one():
    answer = subprocess.run([*QUERY, "bash", "no-such-package-here"], capture_output=True, text=True)
    assert answer.returncode == 1  # as in the roles: 1 when a name is unknown to dpkg
    installed = dpkg_filter.dpkg_installed(answer.stdout.splitlines())
    version = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", "bash"], capture_output=True, text=True)
    assert installed == {"bash": {"version": version.stdout, "held": False}}


def test_held_removed_and_half_installed_packages():
    lines = [
        "ii  kubelet 1.23.5-00",
        "hi  kubeadm 1.23.5-00",  # installed and held
        "un  kubectl ",  # known, not installed
        "rc  docker.io 20.10.24",  # removed, configuration left
        "iF  containerd 1.6.20",  # half-configured: not installed
    ]
    assert dpkg_filter.dpkg_installed(lines) == {
        "kubelet": {"version": "1.23.5-00", "held": False},
        "kubeadm": {"version": "1.23.5-00", "held": True},
    }
