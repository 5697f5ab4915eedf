#!/bin/sh
# Runs inside the freshly debootstrapped root filesystem (chroot) of the Debian base of the images that
# need iptables (kube-proxy, flannel). Every line here is part of the base's recipe: editing this file
# changes the base's tag and so every image built on it.
set -eu

# iptables and ip6tables choose the host's backend on first use (see iptables-wrapper).
chmod 0755 /usr/sbin/iptables-wrapper
for tool in iptables ip6tables; do
    update-alternatives --quiet --install "/usr/sbin/$tool" "$tool" /usr/sbin/iptables-wrapper 100 \
        --slave "/usr/sbin/$tool-restore" "$tool-restore" /usr/sbin/iptables-wrapper \
        --slave "/usr/sbin/$tool-save" "$tool-save" /usr/sbin/iptables-wrapper
done

# Packages installed later on this base skip documentation too; licences (copyright files) stay.
cat > /etc/dpkg/dpkg.cfg.d/appliance-nodoc <<'DPKG'
path-exclude=/usr/share/doc/*
path-include=/usr/share/doc/*/copyright
path-exclude=/usr/share/man/*
path-exclude=/usr/share/info/*
path-exclude=/usr/share/locale/*
DPKG

apt-get clean
rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/cache/debconf/*-old /var/lib/dpkg/*-old
find /usr/share/doc -mindepth 1 ! -type d ! -name copyright -delete
find /usr/share/doc -mindepth 1 -type d -empty -delete
rm -rf /usr/share/man/* /usr/share/info/* /usr/share/locale/* /usr/share/lintian
find /var/log -type f -delete
# debootstrap copied these from the build machine; docker provides a container's own.
rm -f /etc/hostname /etc/resolv.conf
rm -rf /tmp/* /var/tmp/*
