"""plugins/modules/apt_get.py: its reading of apt-get's output, and the module run by ansible on this
machine (Debian, like the nodes) in check mode, where apt-get simulates. The lab's site.yml runs it for
real on fresh nodes (tests/lab/test_site.py, molecule/prereqs, molecule/docker, molecule/kube_packages)."""

from __future__ import annotations

import importlib.util

from tests.unit.ansible_module import PROJECT, run_module

spec = importlib.util.spec_from_file_location("apt_get", PROJECT / "plugins" / "modules" / "apt_get.py")
apt_get = importlib.util.module_from_spec(spec)
spec.loader.exec_module(apt_get)


def run(args: dict, *extra: str) -> dict:
    return run_module("apt_get", args, *extra)


def test_a_transaction_that_installs_or_removes_anything_is_a_change():
    assert apt_get.changes("0 upgraded, 3 newly installed, 0 to remove and 12 not upgraded.\n")
    assert apt_get.changes("1 upgraded, 0 newly installed, 0 to remove and 0 not upgraded.\n")
    assert apt_get.changes("0 upgraded, 0 newly installed, 2 downgraded, 0 to remove and 0 not upgraded.\n")
    assert apt_get.changes("0 upgraded, 0 newly installed, 1 to remove and 0 not upgraded.\n")


def test_packages_already_installed_are_no_change():
    stdout = "curl is already the newest version (7.88.1-10+deb12u5).\n"
    assert not apt_get.changes(stdout + "0 upgraded, 0 newly installed, 0 to remove and 3 not upgraded.\n")
    assert not apt_get.changes("")


def test_the_command_keeps_configuration_and_only_relaxes_holds_when_asked():
    params = {"name": ["kubelet=1.23.5-00"], "allow_change_held_packages": False, "allow_downgrade": False}
    argv = apt_get.command(params, simulate=False)
    assert argv[:2] == ["apt-get", "install"]
    assert "--no-install-recommends" in argv and "Dpkg::Options::=--force-confold" in argv
    assert "--allow-change-held-packages" not in argv and "--allow-downgrades" not in argv
    assert argv[-2:] == ["--", "kubelet=1.23.5-00"]
    relaxed = apt_get.command(
        {**params, "allow_change_held_packages": True, "allow_downgrade": True}, simulate=True
    )
    assert {"--allow-change-held-packages", "--allow-downgrades", "--simulate"} <= set(relaxed)


def test_an_installed_package_is_left_alone_even_where_a_newer_version_exists():
    # state=present, as the apt module means it: apt-get install would upgrade bash where the index holds
    # a newer one; the module does not even ask apt-get.
    for mode in ([], ["--check"]):
        result = run({"name": ["bash"]}, *mode)
        assert result.get("failed") is not True, result
        assert result["changed"] is False
        assert result["stdout"] == ""


def test_an_unknown_package_fails_with_apt_gets_own_words():
    result = run({"name": ["no-such-package-appliance-x"]}, "--check")
    assert result["failed"] is True
    assert "apt-get install failed" in result["msg"]
    assert "no-such-package-appliance-x" in result["msg"]


def test_only_packages_dpkg_does_not_show_installed_at_the_version_asked_are_installed():
    dpkg = [
        "ii  curl 7.88.1-10+deb12u5",
        "ii  kubelet 1.23.5-00",
        "ii  kubeadm 1.22.0-00",
        "rc  nginx 1.22.1-9",
        "ii  libc6:amd64 2.36-9",
    ]
    wanted = ["curl", "kubelet=1.23.5-00", "kubeadm=1.23.5-00", "nginx", "socat", "libc6"]
    assert apt_get.missing(wanted, dpkg) == ["kubeadm=1.23.5-00", "nginx", "socat"]
