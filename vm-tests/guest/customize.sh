#!/bin/sh
# Customizes the guest root built by mmdebstrap. Called as a customize hook:
#   customize.sh ROOT MIRROR SSH_PUBKEY_FILE
# Everything that makes the lab guest what it is, beyond the package list, is
# here, so that the recipe hash covers it.
set -eu
root="$1"
mirror="$2"
pubkey="$3"

# The update target: a second, different real kernel, from bookworm-backports.
echo "deb $mirror bookworm-backports main" > "$root/etc/apt/sources.list.d/lab-kernel-b.list"
chroot "$root" apt-get update -q
kernel_b=$(chroot "$root" apt-cache search --names-only '^linux-image-6\.12\.[0-9.]+\+deb12-amd64$' \
  | cut -d' ' -f1 | sort -V | tail -n 1)
[ -n "$kernel_b" ] || { echo "customize: no bookworm-backports 6.12 kernel found" >&2; exit 1; }
DEBIAN_FRONTEND=noninteractive chroot "$root" apt-get install -y -q --no-install-recommends "$kernel_b"
rm "$root/etc/apt/sources.list.d/lab-kernel-b.list"
chroot "$root" apt-get update -q

# Disk, names, console.
echo '/dev/vda / ext4 rw,errors=remount-ro 0 1' > "$root/etc/fstab"
echo lab > "$root/etc/hostname"
printf '127.0.0.1 localhost\n127.0.1.1 lab\n' > "$root/etc/hosts"
: > "$root/etc/machine-id"
passwd_root='*'
chroot "$root" usermod -p "$passwd_root" root
chroot "$root" useradd -m -s /bin/bash labuser

# Network: one NIC, DHCP from QEMU's user network, name kept stable by net.ifnames=0.
mkdir -p "$root/etc/systemd/network"
printf '[Match]\nName=eth0\n\n[Network]\nDHCP=ipv4\n' > "$root/etc/systemd/network/10-eth0.network"
chroot "$root" systemctl enable systemd-networkd.service
chroot "$root" systemctl enable serial-getty@ttyS0.service
chroot "$root" systemctl mask systemd-networkd-wait-online.service apt-daily.timer apt-daily-upgrade.timer 2>/dev/null || true

# kexec-tools must not load kernels on its own: the tests and the product decide.
echo 'LOAD_KEXEC=false' > "$root/etc/default/kexec"

# ssh: key-only root login; the key is made per image and lives beside it in the cache.
mkdir -p "$root/root/.ssh"
chmod 700 "$root/root/.ssh"
install -m 600 "$pubkey" "$root/root/.ssh/authorized_keys"
printf 'PermitRootLogin prohibit-password\nPasswordAuthentication no\nUseDNS no\n' > "$root/etc/ssh/sshd_config.d/lab.conf"

# Journald keeps logs across the kexec so tests can read the previous boot.
mkdir -p "$root/var/log/journal"
