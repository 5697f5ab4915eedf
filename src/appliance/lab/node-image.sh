#!/bin/sh
# Runs inside the freshly debootstrapped root filesystem (chroot) of the lab's node image.
# Every line here is part of the image recipe: editing this file changes the image tag.
set -eu

# Each container must boot with its own identity: systemd writes a machine-id at first boot,
# and sshd host keys are generated at first start (below), never baked into the image.
: > /etc/machine-id
rm -f /var/lib/dbus/machine-id /etc/ssh/ssh_host_*
mkdir -p /etc/systemd/system/ssh.service.d
cat > /etc/systemd/system/ssh.service.d/host-keys.conf <<'UNIT'
[Service]
ExecStartPre=
ExecStartPre=/usr/bin/ssh-keygen -A
ExecStartPre=/usr/sbin/sshd -t
UNIT
systemctl enable ssh.service

# A machine has a writable /proc/sys and /sys; docker mounts them read-only in a container, and the
# "systempaths=unconfined" option that avoids it is not available through docker's API (Molecule).
cat > /etc/systemd/system/lab-writable-kernel-paths.service <<'UNIT'
[Unit]
Description=Make /proc/sys and /sys writable, as on a machine (lab node only)
DefaultDependencies=no
ConditionVirtualization=container
Before=sysinit.target systemd-sysctl.service
[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/bin/mount -o remount,rw /proc/sys
ExecStart=/bin/mount -o remount,rw /sys
[Install]
WantedBy=sysinit.target
UNIT
systemctl enable lab-writable-kernel-paths.service

# Units that have nothing to manage inside a container and would only leave the system degraded.
for unit in systemd-udevd.service systemd-udev-trigger.service systemd-modules-load.service \
            sys-kernel-config.mount sys-kernel-debug.mount sys-kernel-tracing.mount \
            systemd-remount-fs.service getty@tty1.service console-getty.service \
            systemd-firstboot.service; do
  systemctl mask "$unit"
done

# This machine's capability bounding set lacks CAP_SYS_RESOURCE, so runc cannot grant it and docker's
# privileged containers (kube-proxy) fail with "unable to apply caps". Lab inventories make this wrapper
# docker's default runtime and containerd's runc (lab-vars.yml); it drops that one capability and runs
# runc. containerd grants a privileged container only the capabilities it has, but with kubelet's lab
# flags (no QoS cgroups) it names cgroups that runc's systemd driver refuses: the wrapper renames them.
cat > /usr/local/sbin/lab-runc <<'WRAPPER'
#!/usr/bin/python3
"""runc for lab nodes: what a lab node cannot give a container is left out of it.

Lab nodes are containers on a machine whose capability bounding set lacks CAP_SYS_RESOURCE, so runc
cannot grant it (docker's privileged containers, kube-proxy, fail with "unable to apply caps") nor
lower a process's OOM score below its own (kubelet asks -998 for pod sandboxes). This drops that one
capability and raises such OOM scores to the node's own, as containerd's restrict_oom_score_adj does.
Lab kubelets run without QoS cgroups (cgroups-per-qos false), so they give pods no cgroup parent and
containerd names a cgroupfs path (/k8s.io/ID), which runc's systemd driver refuses: such a container
goes to system.slice, as docker's do. Docker (default-runtime) and containerd (the runc options'
BinaryName) call this instead of runc; everything else is runc's own work.
"""
import json
import os
import sys

RUNC = "/usr/sbin/runc"
MISSING = "CAP_SYS_RESOURCE"
SYSTEMD_SLICE = "system.slice"
SYSTEMD_SCOPE_PREFIX = "cri-containerd"


def strip(capabilities):
    for key, names in (capabilities or {}).items():
        if isinstance(names, list):
            capabilities[key] = [name for name in names if name != MISSING]


def own_oom_score_adj():
    with open("/proc/self/oom_score_adj", encoding="utf-8") as handle:
        return int(handle.read())


def systemd_cgroups_path(linux):
    path = linux.get("cgroupsPath")
    if path and path.count(":") != 2:
        linux["cgroupsPath"] = ":".join((SYSTEMD_SLICE, SYSTEMD_SCOPE_PREFIX, os.path.basename(path)))


def rewrite(path, top_level, systemd):
    with open(path, encoding="utf-8") as handle:
        spec = json.load(handle)
    process = spec if top_level else spec.get("process", {})
    strip(process.get("capabilities"))
    if process.get("oomScoreAdj") is not None:
        process["oomScoreAdj"] = max(process["oomScoreAdj"], own_oom_score_adj())
    if systemd and not top_level:
        systemd_cgroups_path(spec.get("linux", {}))
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(spec, handle)


args = sys.argv[1:]
systemd = "--systemd-cgroup" in args
for index, arg in enumerate(args):
    value = args[index + 1] if index + 1 < len(args) else None
    if arg in ("--bundle", "-b") and value:
        rewrite(os.path.join(value, "config.json"), top_level=False, systemd=systemd)
    elif arg.startswith("--bundle="):
        rewrite(os.path.join(arg.split("=", 1)[1], "config.json"), top_level=False, systemd=systemd)
    elif arg in ("--process", "-p") and value and os.path.isfile(value):
        rewrite(value, top_level=True, systemd=systemd)
    elif arg.startswith("--process="):
        rewrite(arg.split("=", 1)[1], top_level=True, systemd=systemd)
os.execv(RUNC, [RUNC, *args])
WRAPPER
chmod 0755 /usr/local/sbin/lab-runc

# Apt sources as on an installed Debian 12 server.
cat > /etc/apt/sources.list <<'APT'
deb http://deb.debian.org/debian bookworm main
deb http://deb.debian.org/debian bookworm-updates main
deb http://deb.debian.org/debian-security bookworm-security main
APT

# The account Ansible logs in with, as on a real appliance: SSH key only, passwordless sudo.
useradd --create-home --shell /bin/bash --groups sudo ansible
passwd --lock ansible
echo 'ansible ALL=(ALL) NOPASSWD: ALL' > /etc/sudoers.d/ansible
chmod 0440 /etc/sudoers.d/ansible
sed -i 's/^#\?PasswordAuthentication.*/PasswordAuthentication no/' /etc/ssh/sshd_config

apt-get clean
rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/log/*.log /tmp/* /var/tmp/*
