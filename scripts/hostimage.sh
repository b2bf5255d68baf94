#!/usr/bin/env bash
# hostimage.sh — build the Docker image of a blixard host: Debian bookworm with systemd as PID 1.
#
# No registry is needed: the root filesystem is made with debootstrap from Debian's mirror and
# loaded with `docker import`. The image is tagged blixard-host:<hash>, where <hash> is the
# content hash of this script (so editing the package list below makes a new image); a rerun
# with that image present only prints its name and takes well under a second. The debootstrap
# root itself is cached as a tarball in build/hostimage/ (HOSTIMAGE_CACHE), keyed by suite,
# mirror and package list, so changing only the steps after debootstrap re-imports in seconds.
# Measured here: debootstrap 4.5–6 min, docker import 3 s, image 107 MB, cached base 244 MB.
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
)

mirror=${MIRROR:-http://deb.debian.org/debian}
suite=${SUITE:-bookworm}

log() { echo "hostimage: $*" >&2; }

hash=$(sha256sum "${BASH_SOURCE[0]}" | cut -c1-12)
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

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
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
