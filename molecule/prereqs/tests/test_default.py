"""Outcomes of role prereqs on a lab node (a systemd container of the node image)."""

import pytest

SYSCTL = {
    "net/bridge/bridge-nf-call-ip6tables": "1",
    "net/bridge/bridge-nf-call-iptables": "1",
    "net/ipv4/ip_forward": "1",
}
PACKAGES = [
    "apt-transport-https",
    "curl",
    "conntrack",
    "socat",
    "ebtables",
    "ethtool",
    "iptables",
    "nfs-common",
]


def test_no_swap_is_active(host):
    areas = host.file("/proc/swaps").content_string.splitlines()[1:]
    assert [line for line in areas if line.strip()] == []


def test_fstab_has_no_uncommented_swap_line(host):
    fstab = host.file("/etc/fstab").content_string.splitlines()
    active = [line for line in fstab if line.strip() and not line.lstrip().startswith("#")]
    assert [line for line in active if len(line.split()) > 2 and line.split()[2] == "swap"] == []


def test_fstab_keeps_swap_lines_as_comments_and_other_lines_as_they_were(host):
    fstab = host.file("/etc/fstab").content_string
    assert "# /swap.img\tnone\tswap\tsw\t0\t0" in fstab.splitlines()
    assert "\nUUID=0a1b2c3d-0000-4000-8000-000000000001 / ext4 errors=remount-ro 0 1\n" in fstab
    assert "\ntmpfs /mnt/swapdir tmpfs defaults 0 0\n" in fstab


def test_swap_unit_is_masked(host):
    state = host.run("systemctl is-enabled swap.img.swap")
    assert state.stdout.strip() == "masked"


@pytest.mark.parametrize(("path", "value"), SYSCTL.items())
def test_kernel_parameter_is_set(host, path, value):
    assert host.file(f"/proc/sys/{path}").content_string.strip() == value


def test_kernel_parameters_persist(host):
    conf = host.file("/etc/sysctl.d/k8s.conf")
    assert conf.is_file
    assert conf.user == "root"
    lines = {line.replace(" ", "") for line in conf.content_string.splitlines()}
    for path, value in SYSCTL.items():
        assert f"{path.replace('/', '.')}={value}" in lines


def test_kernel_modules_load_at_boot(host):
    conf = host.file("/etc/modules-load.d/k8s.conf")
    assert conf.is_file
    assert conf.mode == 0o644
    modules = [line for line in conf.content_string.splitlines() if line and not line.startswith("#")]
    assert modules == ["overlay", "br_netfilter"]


def test_kernel_features_are_present(host):
    assert "overlay" in host.file("/proc/filesystems").content_string.split()
    assert host.file("/proc/sys/net/bridge").is_directory


@pytest.mark.parametrize("name", PACKAGES)
def test_package_is_installed(host, name):
    assert host.package(name).is_installed


def test_time_sync_is_enabled_and_running_unless_systemd_skips_it(host):
    unit = "systemd-timesyncd.service"
    assert host.service(unit).is_enabled
    show = host.run(f"systemctl show --property=ActiveState,ConditionResult {unit}").stdout
    state = dict(line.split("=", 1) for line in show.splitlines() if "=" in line)
    if host.run("systemd-detect-virt --container --quiet").rc == 0:
        # ConditionVirtualization=!container: in a container systemd skips the unit.
        assert state["ActiveState"] == "active" or state["ConditionResult"] == "no"
    else:
        assert state["ActiveState"] == "active"


def test_time_sync_uses_the_sites_ntp_servers_alone(host):
    dropin = host.file("/etc/systemd/timesyncd.conf.d/appliance.conf")
    assert dropin.mode == 0o644
    settings = [line for line in dropin.content_string.splitlines() if line and not line.startswith("#")]
    assert settings == ["[Time]", "NTP=127.0.0.1 ntp.site.test", "FallbackNTP="]
    # systemd reads it: the merged configuration ends with the drop-in's values.
    merged = host.run("systemd-analyze cat-config systemd/timesyncd.conf").stdout
    assert merged.rstrip().endswith("NTP=127.0.0.1 ntp.site.test\nFallbackNTP=")
