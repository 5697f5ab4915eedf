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
