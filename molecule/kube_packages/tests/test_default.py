"""Outcomes of role kube_packages on a lab node (a systemd container of the node image)."""

import pytest

PACKAGES = ("kubelet", "kubeadm", "kubectl")


@pytest.mark.parametrize("name", PACKAGES)
def test_package_is_installed_at_exactly_1_23_5_00(host, name):
    package = host.package(name)
    assert package.is_installed
    assert package.version == "1.23.5-00"


def test_all_three_are_held(host):
    assert sorted(host.check_output("apt-mark showhold").split()) == sorted(PACKAGES)


def test_an_upgrade_does_not_move_them(host):
    simulation = host.check_output("apt-get -s -o Debug::NoLocking=1 upgrade")
    moved = [line for line in simulation.splitlines() if line.startswith(("Inst ", "Conf ", "Remv "))]
    assert [line for line in moved if line.split()[1] in PACKAGES] == []


def test_the_binaries_report_v1_23_5(host):
    assert host.check_output("kubeadm version -o short") == "v1.23.5"
    assert host.check_output("kubelet --version") == "Kubernetes v1.23.5"
    assert "v1.23.5" in host.check_output("kubectl version --client --short")


def test_kubelet_is_enabled_as_the_package_does(host):
    assert host.service("kubelet").is_enabled
