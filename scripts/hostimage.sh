#!/usr/bin/env bash
# hostimage.sh — build the Docker image of a blixard host: Debian bookworm with systemd as PID 1.
#
# No registry is needed: the root filesystem is made with debootstrap from Debian's mirror and
# loaded with `docker import`. The image is tagged blixard-host:<hash>, where <hash> is the
# content hash of this script and of packaging/systemd/blixard.service (so editing the package
# list or the unit makes a new image); a rerun with that image present only prints its name and
# takes well under a second. The debootstrap
# root itself is cached as a tarball in build/hostimage/ (HOSTIMAGE_CACHE), keyed by suite,
# mirror and package list, so changing only the steps after debootstrap re-imports in seconds.
# Measured here: debootstrap 4.5–6 min, docker import 3 s, image 107 MB, cached base 244 MB
# (before qemu was added; see below for the e2e image).
#
# What a host gets: systemd as PID 1, dbus, iproute2, iptables, procps, qemu-system-x86 (the
# qemu driver's hypervisor) and busybox-static, plus the packaged unit blixard.service in
# /lib/systemd/system (installed, not enabled: the e2e harness writes /etc/default/blixard with
# the node's flags and runs `systemctl start blixard`). Not in the image, bind-mounted read-only
# when a container starts: the blixard binary at /usr/bin/blixard and the test guest
# (build/guest: vmlinux, initrd.img) at /usr/share/blixard/guest. They change with every build,
# and keeping them out keeps the image's hash, and so its cache, stable across commits; a test
# always runs the binary it just built.
#
# Usage: scripts/hostimage.sh          prints the image reference (blixard-host:<hash>) on stdout
# Env:   MIRROR   Debian mirror (default http://deb.debian.org/debian)
#        SUITE    Debian suite  (default bookworm)
#
# Start a container from it with systemd as PID 1 (cgroup v1 hosts):
#   docker run -d --cap-add SYS_ADMIN --cap-add NET_ADMIN --security-opt seccomp=unconfined \
#     --security-opt apparmor=unconfined --cgroupns=host -v /sys/fs/cgroup:/sys/fs/cgroup \
#     --tmpfs /run --tmpfs /run/lock --entrypoint /sbin/init blixard-host:<hash>
#
# Needs root, docker and debootstrap (installed with apt-get when missing).
set -euo pipefail

# --- the package list: one place; extend it here (qemu, busybox-static … for the e2e hosts) --
packages=(
	systemd
	systemd-sysv
	dbus
	iproute2
	iptables
	procps
	qemu-system-x86
	busybox-static
)

mirror=${MIRROR:-http://deb.debian.org/debian}
suite=${SUITE:-bookworm}

log() { echo "hostimage: $*" >&2; }

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
unit=$repo/packaging/systemd/blixard.service
hash=$(cat "${BASH_SOURCE[0]}" "$unit" | sha256sum | cut -c1-12)
image=blixard-host:$hash

if docker image inspect "$image" >/dev/null 2>&1; then
	log "up to date: $image"
	echo "$image"
	exit 0
fi

if ! command -v debootstrap >/dev/null 2>&1; then
	log "installing debootstrap"
	apt-get install -y debootstrap >&2 || { apt-get update >&2 && apt-get install -y debootstrap >&2; }
fi

cache=${HOSTIMAGE_CACHE:-$repo/build/hostimage}
mkdir -p "$cache"
work=$(mktemp -d "$cache/work.XXXXXX")
cleanup() { rm -rf "$work"; }
trap cleanup EXIT
root=$work/root

# The debootstrap result is cached on its own, keyed by what it is made from, so a change to
# the steps below re-imports in seconds instead of debootstrapping again.
include=$(IFS=,; echo "${packages[*]}")
base=$cache/base-$(echo "$suite $mirror $include" | sha256sum | cut -c1-12).tar
if [[ ! -s $base ]]; then
	start=$SECONDS
	log "debootstrap $suite from $mirror (${packages[*]})"
	debootstrap --variant=minbase --include="$include" "$suite" "$root" "$mirror" >"$work/debootstrap.log" 2>&1 || {
		tail -n 40 "$work/debootstrap.log" >&2
		exit 1
	}
	tar -C "$root" -cf "$base.tmp" . && mv "$base.tmp" "$base"
	rm -rf "$root"
	log "debootstrap took $((SECONDS - start)) s"
fi
mkdir -p "$root"
tar -C "$root" -xf "$base"

# --- make it a container host: no gettys, no units that need real hardware ------------------
for u in getty.target console-getty.service systemd-udevd.service systemd-udev-trigger.service \
	systemd-modules-load.service systemd-remount-fs.service sys-kernel-config.mount \
	sys-kernel-debug.mount sys-kernel-tracing.mount systemd-firstboot.service \
	systemd-networkd-wait-online.service; do
	ln -sf /dev/null "$root/etc/systemd/system/$u"
done
echo blixard-host >"$root/etc/hostname"
# --- blixard: the packaged unit; binary and guest are bind-mounted at container start --------
install -m 0644 "$unit" "$root/lib/systemd/system/blixard.service"
mkdir -p "$root/usr/share/blixard/guest" "$root/etc/blixard"
: >"$root/usr/bin/blixard"
chmod 0755 "$root/usr/bin/blixard"
: >"$root/etc/machine-id"
# Keep the journal in memory (tmpfs /run) so containers start fast and leave nothing behind.
mkdir -p "$root/etc/systemd/journald.conf.d"
printf '[Journal]\nStorage=volatile\n' >"$root/etc/systemd/journald.conf.d/blixard.conf"
# Drop what a host image does not need: apt lists and caches, docs, man pages.
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* \
	"$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/locale/*

start=$SECONDS
tar -C "$root" -c . | docker import \
	--change 'ENTRYPOINT ["/sbin/init"]' \
	--change 'ENV container=docker' \
	- "$image" >&2
log "docker import took $((SECONDS - start)) s: $image"
echo "$image"
