#!/usr/bin/env bash
# guest.sh — build the bootable test guest used by microvm/qemu tests and the demo.
#
# Produces, under $GUEST_DIR (default: <repo>/build/guest):
#   vmlinuz     Debian's linux-image-amd64 kernel (the versioned 6.x package it depends on)
#   vmlinux     the same kernel decompressed (an ELF with a PVH entry point): qemu's microvm
#               machine boots it directly, which saves seconds of decompression under TCG
#   initrd.img  a busybox-static initramfs with the virtio modules and a small /init, as an
#               uncompressed cpio (again: nothing to decompress in a slow TCG guest)
#
# Everything comes from Debian packages (apt-get install / apt-get download); nothing else is
# downloaded. The build is cached: a rerun with the outputs present and this script unchanged
# returns in well under a second.
#
# The guest's /init understands these kernel parameters:
#   ip=<addr>::<gw>:<mask>::eth0:off          (the kernel's own syntax; also ip=<addr>/<prefix>)
#   blixard.ip=<addr>/<prefix> blixard.gw=<gw> blixard.hostname=<name>
# It prints "BLIXARD-GUEST-READY <uptime>" on the serial console once userspace is up, serves
# HTTP on port 80 (busybox httpd) and powers off cleanly on an ACPI power-button press
# (QMP system_powerdown).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
out=${GUEST_DIR:-$repo/build/guest}
cache=$out/cache

log() { echo "guest: $*" >&2; }

# The stamp records what the outputs were built from: this script's content and the kernel
# version. Equal stamp + present outputs = nothing to do.
self_hash=$(sha256sum "${BASH_SOURCE[0]}" | cut -d' ' -f1)
if [[ -f $out/stamp && -s $out/vmlinuz && -s $out/initrd.img ]] &&
	[[ $(head -n1 "$out/stamp") == "$self_hash" ]]; then
	log "up to date: $out ($(sed -n 2p "$out/stamp"))"
	exit 0
fi

# --- host packages -------------------------------------------------------------------------
need_pkgs=()
for p in qemu-system-x86 busybox-static cpio e2fsprogs iproute2 xz-utils; do
	if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
		need_pkgs+=("$p")
	fi
done
apt_updated=0
apt_update() {
	if [[ $apt_updated == 0 ]]; then
		log "apt-get update"
		apt-get update -qq
		apt_updated=1
	fi
}
if ((${#need_pkgs[@]})); then
	if [[ $(id -u) != 0 ]]; then
		echo "guest: missing packages ${need_pkgs[*]} and not root; install them first" >&2
		exit 1
	fi
	apt_update
	log "installing ${need_pkgs[*]}"
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends -o DPkg::Lock::Timeout=600 \
		"${need_pkgs[@]}" >/dev/null
fi

# --- kernel ----------------------------------------------------------------------------------
# linux-image-amd64 is a metapackage; the kernel lives in the versioned package it depends on.
resolve_kernel_pkg() {
	apt-cache depends linux-image-amd64 2>/dev/null |
		awk '$1 == "Depends:" && $2 ~ /^linux-image-[0-9]/ { print $2; exit }'
}
kpkg=$(resolve_kernel_pkg || true)
if [[ -z $kpkg ]]; then
	apt_update
	kpkg=$(resolve_kernel_pkg)
fi
[[ -n $kpkg ]] || { echo "guest: cannot resolve the kernel package of linux-image-amd64" >&2; exit 1; }
kver=${kpkg#linux-image-}
log "kernel package $kpkg"

mkdir -p "$cache"
root=$cache/$kpkg
if [[ ! -f $root/.unpacked ]]; then
	deb=$(ls "$cache"/"${kpkg}"_*.deb 2>/dev/null | head -n1 || true)
	if [[ -z $deb ]]; then
		log "apt-get download $kpkg"
		# apt's sandbox user cannot write into our cache dir; download in a temp dir it owns.
		tmp=$(mktemp -d)
		chmod 0777 "$tmp"
		(cd "$tmp" && apt-get download -qq "$kpkg" 2>/dev/null) || { apt_update; (cd "$tmp" && apt-get download -qq "$kpkg"); }
		mv "$tmp"/"${kpkg}"_*.deb "$cache/"
		rmdir "$tmp"
		deb=$(ls "$cache"/"${kpkg}"_*.deb | head -n1)
	fi
	log "unpacking $(basename "$deb")"
	rm -rf "$root"
	mkdir -p "$root"
	dpkg -x "$deb" "$root"
	# The package ships no modules.dep (its postinst runs depmod); build one for the tree.
	busybox depmod -b "$root" "$kver"
	touch "$root/.unpacked"
fi
moddir=$root/lib/modules/$kver
[[ -f $moddir/modules.dep ]] || { echo "guest: $moddir/modules.dep missing" >&2; exit 1; }

# --- initramfs -------------------------------------------------------------------------------
# Modules the guest loads, in the order /init loads them; their dependencies come along.
wanted=(virtio virtio_ring virtio_mmio virtio-rng failover net_failover virtio_net virtio_blk
	button evdev crc32c_generic ext4)

# closure prints the relative paths of a module's dependencies (recursively, from modules.dep)
# and then of the module itself: a valid load order, possibly with repeats.
closure() {
	local name=$1 line path deps d
	line=$(grep -E "(^|/)${name}\.ko(\.[a-z]+)?:" "$moddir/modules.dep" | head -n1 || true)
	[[ -n $line ]] || { echo "guest: module $name not found in $kver" >&2; return 1; }
	path=${line%%:*}
	deps=${line#*:}
	for d in $deps; do
		d=$(basename "$d")
		closure "${d%%.ko*}"
	done
	echo "$path"
}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
ir=$work/initramfs
mkdir -p "$ir"/{bin,sbin,etc,proc,sys,dev,tmp,run,www,mnt,usr/bin,usr/sbin,lib/modules/"$kver"}
cp /bin/busybox "$ir/bin/busybox"
for applet in $(/bin/busybox --list); do
	[[ $applet == busybox ]] && continue
	ln -sf busybox "$ir/bin/$applet"
done

order=()
declare -A seen=()
for m in "${wanted[@]}"; do
	while read -r p; do
		[[ -n $p && -z ${seen[$p]:-} ]] || continue
		seen[$p]=1
		mkdir -p "$ir/lib/modules/$kver/$(dirname "$p")"
		cp "$moddir/$p" "$ir/lib/modules/$kver/$p"
		order+=("$p")
	done < <(closure "$m")
done
printf '%s\n' "${order[@]}" >"$ir/etc/blixard-modules"
log "modules: $(printf '%s ' "${order[@]##*/}")"

echo "blixard guest $kver" >"$ir/www/index.html"
echo "blixard" >"$ir/etc/hostname"
printf 'root:x:0:0:root:/:/bin/sh\n' >"$ir/etc/passwd"
printf 'root:x:0:\n' >"$ir/etc/group"

cat >"$ir/init" <<'INIT'
#!/bin/sh
# blixard test guest init (generated by scripts/guest.sh).
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null || mdev -s
mkdir -p /dev/pts && mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run

log() { echo "blixard-guest: $*"; }

kver=$(uname -r)
while read -r m; do
	insmod "/lib/modules/$kver/$m" 2>/dev/null || true
done </etc/blixard-modules

# Kernel parameters.
ip_addr= ip_gw= ip_prefix= name=
for arg in $(cat /proc/cmdline); do
	case $arg in
	blixard.ip=*) ip_addr=${arg#blixard.ip=} ;;
	blixard.gw=*) ip_gw=${arg#blixard.gw=} ;;
	blixard.hostname=*) name=${arg#blixard.hostname=} ;;
	ip=*)
		v=${arg#ip=}
		case $v in
		*:*)
			# ip=<client>:<server>:<gw>:<netmask>:<hostname>:<device>:<autoconf>
			a=$(echo "$v" | cut -d: -f1)
			g=$(echo "$v" | cut -d: -f3)
			nm=$(echo "$v" | cut -d: -f4)
			h=$(echo "$v" | cut -d: -f5)
			[ -n "$a" ] && ip_addr=$a
			[ -n "$g" ] && ip_gw=$g
			[ -n "$nm" ] && ip_prefix=$(ipcalc -p "$a" "$nm" | cut -d= -f2)
			[ -n "$h" ] && name=$h
			;;
		*) ip_addr=$v ;;
		esac
		;;
	esac
done
[ -n "$name" ] && hostname "$name" || hostname "$(cat /etc/hostname)"

ip link set lo up
if [ -n "$ip_addr" ]; then
	case $ip_addr in
	*/*) ;;
	*) ip_addr="$ip_addr/${ip_prefix:-32}" ;;
	esac
	i=0
	while [ ! -e /sys/class/net/eth0 ] && [ $i -lt 50 ]; do usleep 100000; i=$((i + 1)); done
	if ip link set eth0 up && ip addr add "$ip_addr" dev eth0; then
		if [ -n "$ip_gw" ]; then
			# Routed model: the gateway may lie outside the address's prefix (a /32 guest).
			ip route add "$ip_gw" dev eth0 2>/dev/null
			ip route add default via "$ip_gw" dev eth0 || log "default route via $ip_gw failed"
		fi
		log "eth0 $ip_addr gw ${ip_gw:-none}"
	else
		log "eth0 configuration failed"
	fi
fi

disks=
for d in /sys/block/vd*; do [ -e "$d" ] && disks="$disks ${d##*/}"; done
log "disks:${disks:- none}"

httpd -p 80 -h /www

# Power button (QMP system_powerdown): wait for an input event from the ACPI button device.
shutdown_now() {
	log "powering off"
	kill $(pidof httpd) 2>/dev/null
	sync
	umount -a -r 2>/dev/null
	poweroff -f
	# With -no-reboot a reboot makes qemu exit, should ACPI poweroff not work.
	reboot -f
}
for ev in /sys/class/input/event*; do
	[ -e "$ev/device/name" ] || continue
	case $(cat "$ev/device/name") in
	"Power Button")
		(dd if="/dev/input/${ev##*/}" of=/dev/null bs=24 count=1 2>/dev/null && kill -USR2 1) &
		;;
	esac
done
trap shutdown_now USR2 TERM

echo "BLIXARD-GUEST-READY $(cut -d' ' -f1 /proc/uptime)"

# Keep PID 1 alive; a console shell is not needed, the signal traps do the work.
while :; do sleep 3600 & wait $!; done
INIT
chmod 0755 "$ir/init"

(cd "$ir" && find . -print0 | sort -z | cpio --null -o -H newc --quiet) >"$work/initrd.img"

# vmlinux: the payload of the bzImage, found by the xz stream magic.
vmlinuz=$root/boot/vmlinuz-$kver
off=$(grep -abo $'\xfd7zXZ\x00' "$vmlinuz" | head -n1 | cut -d: -f1 || true)
if [[ -n $off ]] && tail -c +$((off + 1)) "$vmlinuz" >"$work/payload.xz" &&
	xz -dc --single-stream <"$work/payload.xz" >"$work/vmlinux" 2>/dev/null &&
	[[ $(head -c 4 "$work/vmlinux") == $'\x7fELF' ]]; then
	have_vmlinux=1
else
	log "cannot decompress $vmlinuz (not xz?); building without vmlinux"
	have_vmlinux=0
fi

mkdir -p "$out"
cp "$vmlinuz" "$out/vmlinuz.tmp" && mv "$out/vmlinuz.tmp" "$out/vmlinuz"
if [[ $have_vmlinux == 1 ]]; then
	mv "$work/vmlinux" "$out/vmlinux"
else
	rm -f "$out/vmlinux"
fi
mv "$work/initrd.img" "$out/initrd.img"
printf '%s\n%s\n' "$self_hash" "$kver" >"$out/stamp"
log "built $out/{vmlinuz,$([[ $have_vmlinux == 1 ]] && echo vmlinux,)initrd.img} ($kver, initrd $(du -h "$out/initrd.img" | cut -f1))"
