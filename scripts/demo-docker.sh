#!/usr/bin/env bash
# demo-docker.sh — the demo on real hosts: three Docker containers with systemd as PID 1, each
# running blixard as the packaged systemd service (packaging/systemd/blixard.service) with its own
# address on a private Docker network; VMs are real microVMs (qemu, TCG) in transient systemd units.
#
#   scripts/demo-docker.sh          build what is missing, form the cluster by --join, boot three
#                                   VMs, kill (docker kill) the host of one and show it come back
#                                   elsewhere; the hosts keep running (make demo-docker)
#   scripts/demo-docker.sh --clean  remove the demo's containers and network (make demo-stop)
#
# Needs root and a Docker engine. The host image comes from scripts/hostimage.sh (debootstrap +
# docker import, about 5 minutes the first time, cached afterwards); the blixard binary and the
# test guest are bind-mounted into the hosts. Everything carries the label blixard.demo=1.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
repo=$(pwd)
net=blixard-demo
label=blixard.demo=1
subnet=172.31.77
bin=$repo/build/demo-docker/blixard
guest=$repo/build/guest
vms=(web1 web2 db1)

say() { printf '\n==> %s\n' "$*"; }
fail() {
	echo "demo-docker: $*" >&2
	exit 1
}
host_ip() { echo "$subnet.$((10 + $1))"; }
addrs() {
	local out=() i
	for i in "$@"; do out+=("$(host_ip "$i"):7001"); done
	(
		IFS=,
		echo "${out[*]}"
	)
}
# bx H ARGS: the CLI, run on host H against the hosts still up.
live=(1 2 3)
bx() {
	local h=$1
	shift
	docker exec "blixard-demo-h$h" blixard --addr "$(addrs "${live[@]}")" "$@"
}
field() { sed -n "s/.*\"$1\": *\"\{0,1\}\([^\",]*\)\"\{0,1\}.*/\1/p" | head -n1; }

clean() {
	local ids
	ids=$(docker ps -aq --filter "label=$label")
	[[ -z $ids ]] || docker rm -f $ids >/dev/null
	ids=$(docker network ls -q --filter "label=$label")
	[[ -z $ids ]] || docker network rm $ids >/dev/null
	echo "demo-docker: removed"
}

case "${1:-}" in
"") ;;
--clean)
	clean
	exit 0
	;;
-h | --help)
	sed -n '2,13p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
	exit 0
	;;
*)
	echo "usage: scripts/demo-docker.sh [--clean]" >&2
	exit 2
	;;
esac

[[ $(id -u) == 0 ]] || fail "needs root; run it with sudo"
docker info >/dev/null 2>&1 || fail "no Docker engine answers (docker info failed)"
start=$SECONDS

say "building the blixard binary, the test guest and the host image"
mkdir -p "$(dirname "$bin")"
CGO_ENABLED=0 PATH=$PATH:/usr/local/go/bin go build -o "$bin" ./cmd/blixard
[[ -s $guest/vmlinux && -s $guest/initrd.img ]] || scripts/guest.sh
image=$(scripts/hostimage.sh)
echo "host image $image"

say "starting three hosts on Docker network $net ($subnet.0/24)"
clean >/dev/null
docker network create --label "$label" --subnet "$subnet.0/24" --gateway "$subnet.1" "$net" >/dev/null
for i in 1 2 3; do
	docker run -d --name "blixard-demo-h$i" --hostname "h$i" --label "$label" \
		--network "$net" --ip "$(host_ip "$i")" \
		--cap-add SYS_ADMIN --cap-add NET_ADMIN \
		--security-opt seccomp=unconfined --security-opt apparmor=unconfined \
		--cgroupns=host -v /sys/fs/cgroup:/sys/fs/cgroup \
		--tmpfs /run --tmpfs /run/lock --tmpfs /tmp --device /dev/net/tun \
		-v "$bin:/usr/bin/blixard:ro" -v "$guest:/usr/share/blixard/guest:ro" \
		--entrypoint /sbin/init "$image" >/dev/null
done
for i in 1 2 3; do
	for n in $(seq 1 150); do
		state=$(docker exec "blixard-demo-h$i" systemctl is-system-running 2>/dev/null || true)
		[[ $state == running || $state == degraded ]] && break
		((n < 150)) || fail "host h$i: systemd did not finish booting ($state)"
		sleep 0.2
	done
	echo "h$i: $(host_ip "$i"), systemd $state"
done

say "systemctl enable --now blixard on each host (h1 bootstraps, h2 and h3 --join h1)"
for i in 1 2 3; do
	ip=$(host_ip "$i")
	opts="--node-id $i --api-addr $ip:7001 --raft-addr $ip:7002 --gossip-addr $ip:7003 --driver qemu --accel tcg --vcpus 2 --memory-mb 1024"
	((i == 1)) || opts="$opts --join $(host_ip 1):7003"
	echo "BLIXARD_OPTS=\"$opts\"" | docker exec -i "blixard-demo-h$i" sh -c 'cat > /etc/default/blixard'
	docker exec "blixard-demo-h$i" systemctl enable --now blixard >/dev/null 2>&1
	if ((i == 1)); then
		for n in $(seq 1 150); do
			bx 1 cluster status >/dev/null 2>&1 && break
			((n < 150)) || fail "h1's node did not come up; see: docker exec blixard-demo-h1 journalctl -u blixard"
			sleep 0.2
		done
	fi
done
for n in $(seq 1 300); do
	alive=$(bx 1 cluster status -o json 2>/dev/null | grep -o '"status": *"alive"' | wc -l || true)
	((alive == 3)) && break
	((n < 300)) || fail "the three nodes did not all join within 60 s"
	sleep 0.2
done
bx 1 cluster status

say "creating ${#vms[@]} VMs with --wait (spread over the hosts)"
pids=()
for vm in "${vms[@]}"; do
	bx 1 vm create "$vm" --memory 128 --kernel /usr/share/blixard/guest/vmlinux \
		--initrd /usr/share/blixard/guest/initrd.img --wait --timeout 3m &
	pids+=($!)
done
for p in "${pids[@]}"; do wait "$p" || fail "creating a VM failed"; done
for vm in "${vms[@]}"; do
	for n in $(seq 1 240); do
		bx 1 vm logs "$vm" -n 0 2>/dev/null | grep -q BLIXARD-GUEST-READY && break
		((n < 240)) || fail "$vm never printed BLIXARD-GUEST-READY"
		sleep 0.5
	done
done
bx 1 vm list
victim=${vms[0]}
dead=$(bx 1 vm status "$victim" -o json | field node_id)
say "on host h$dead: the transient unit of $victim and the qemu it runs"
docker exec "blixard-demo-h$dead" systemctl show "blixard-vm-$victim.service" -p ActiveState -p MainPID -p MemoryMax -p CPUQuotaPerSecUSec

say "docker kill blixard-demo-h$dead (the host of $victim)"
docker kill "blixard-demo-h$dead" >/dev/null
lost=$SECONDS
live=()
for i in 1 2 3; do ((i == dead)) || live+=("$i"); done
ask=${live[0]}
for n in $(seq 1 600); do
	j=$(bx "$ask" vm status "$victim" -o json 2>/dev/null || true)
	node=$(field node_id <<<"$j")
	status=$(field status <<<"$j")
	[[ -n $node && $node != "$dead" && $status == running ]] && break
	((n < 600)) || fail "$victim did not come back within 2 min (node '$node', status '$status')"
	sleep 0.2
done
echo "$victim running on h$node $((SECONDS - lost)) s after the kill"
for n in $(seq 1 240); do
	bx "$ask" vm logs "$victim" -n 0 2>/dev/null | grep -q BLIXARD-GUEST-READY && break
	((n < 240)) || fail "$victim never printed BLIXARD-GUEST-READY on h$node"
	sleep 0.5
done
echo "$victim READY on h$node $((SECONDS - lost)) s after the kill"
bx "$ask" cluster status
bx "$ask" vm list
say "demo finished in $((SECONDS - start)) s"
cat <<EOF

The two surviving hosts keep running (h$dead is stopped: docker start blixard-demo-h$dead brings it
back; its node rejoins and runs nothing). Try:
  docker exec blixard-demo-h$ask blixard --addr $(addrs "${live[@]}") vm list
  docker exec blixard-demo-h$ask systemctl list-units 'blixard-vm-*'
  docker exec blixard-demo-h$ask journalctl -u blixard -n 20
Remove everything with: make demo-stop
EOF
