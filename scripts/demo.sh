#!/usr/bin/env bash
# demo.sh — a local three-node blixard cluster booting real microVMs (make demo).
#
# Everything runs inside a network namespace of its own, blixard-demo: the three node agents
# (qemu driver, --accel auto: TCG where KVM is missing or cannot boot), the guests' TAPs, routes
# and iptables chains, the CLI and the HTTP requests to the guests. No traffic leaves it.
#
#   scripts/demo.sh          build if needed, run the demo, leave the cluster running (make demo)
#   scripts/demo.sh --clean  stop the cluster a demo left: VMs, nodes, namespace (make demo-stop)
#   scripts/demo.sh --once   run the demo, then clean everything up (also on failure)
#
# The demo forms a 3-node cluster, creates three VMs in two tenants that boot for real, fetches
# a page from each guest over its routed address, then simulates losing the host of one VM (the
# node agent and that host's qemu processes are SIGKILLed) and shows the VM come back on another
# node with the same address. The two surviving nodes keep running for you to try the CLI.
#
# Needs root on a Debian-like host. The guest kernel and initramfs (and qemu) come from
# scripts/guest.sh (make guest), which this runs if needed; iptables is installed if missing.
# Data dirs and node logs go to build/demo/.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
repo=$(pwd)
ns=blixard-demo
demo=$repo/build/demo
bin=$repo/bin/blixard
vms=(blue1 blue2 green1)
declare -A tenant=([blue1]=blue [blue2]=blue [green1]=green)
initial="1=127.0.0.1:7002,2=127.0.0.1:7012,3=127.0.0.1:7022"
addrs="127.0.0.1:7001,127.0.0.1:7011,127.0.0.1:7021"

say() { printf '\n==> %s\n' "$*"; }
fail() {
	echo "demo: $*" >&2
	exit 1
}
in_ns() { ip netns exec "$ns" "$@"; }
cli() { in_ns "$bin" --addr "$addrs" "$@"; }

mode=keep
case "${1:-}" in
"" | --keep) ;;
--once) mode=once ;;
--clean) mode=clean ;;
-h | --help)
	sed -n '2,20p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
	exit 0
	;;
*)
	echo "usage: scripts/demo.sh [--clean | --once]" >&2
	exit 2
	;;
esac

[[ $(id -u) == 0 ]] || fail "needs root (a network namespace, TAPs and iptables rules); run it with sudo"
command -v ip >/dev/null || fail "ip not found: apt-get install iproute2"

# stop_all deletes the demo's VMs (when the cluster answers), stops the nodes, kills whatever
# still runs inside the namespace (only processes this demo started live there) and removes it.
stop_all() {
	if ! ip netns list | grep -qw "$ns"; then
		return 0
	fi
	if [[ -x $bin ]] && cli cluster status >/dev/null 2>&1; then
		say "deleting the VMs"
		for vm in "${vms[@]}"; do
			cli vm delete "$vm" --wait --timeout 60s 2>/dev/null && echo "deleted $vm" || true
		done
		# The nodes destroy deleted VMs asynchronously: wait for their TAPs and chains to go.
		for _ in $(seq 1 100); do
			left=$(ip -n "$ns" -o link show | grep -c ' vm-' || true)
			chains=$(in_ns iptables-save -t filter 2>/dev/null | grep -c BLIXARD || true)
			((left + chains == 0)) && break
			sleep 0.3
		done
		echo "left behind: $left TAPs, $chains iptables lines naming BLIXARD"
		qemus=0
		for pid in $(ip netns pids "$ns" 2>/dev/null); do
			[[ $(cat "/proc/$pid/comm" 2>/dev/null) == qemu-system-* ]] && qemus=$((qemus + 1))
		done
		echo "qemu processes left: $qemus"
	fi
	say "stopping the nodes"
	for f in "$demo"/node*.pid; do
		[[ -f $f ]] || continue
		pid=$(cat "$f")
		rm -f "$f"
		kill -TERM "$pid" 2>/dev/null || continue
		for _ in $(seq 1 150); do
			kill -0 "$pid" 2>/dev/null || break
			sleep 0.2
		done
		kill -KILL "$pid" 2>/dev/null || true
	done
	pids=$(ip netns pids "$ns" 2>/dev/null || true)
	if [[ -n $pids ]]; then
		echo "killing processes left in the namespace: $pids"
		kill -KILL $pids 2>/dev/null || true
	fi
	say "removing network namespace $ns"
	ip netns del "$ns"
}

if [[ $mode == clean ]]; then
	stop_all
	exit 0
fi

start=$SECONDS
finish() {
	status=$?
	trap - INT TERM EXIT
	if [[ $mode == keep ]]; then
		((status == 0)) || echo "demo: failed (exit $status); node logs are in $demo/node*.log" >&2
		cat <<EOF

The cluster keeps running in network namespace $ns (node logs: $demo/node*.log). Try:
  alias bx='ip netns exec $ns $bin --addr $addrs'
  bx cluster status
  bx vm list
  bx vm create red1 --tenant red --memory 128 --kernel ${kernel:-build/guest/vmlinux} --initrd ${initrd:-build/guest/initrd.img} --wait
  bx vm logs red1 -n 20
  bx vm stop blue2 --wait; bx vm start blue2 --wait
  bx vm delete red1 --wait
Stop it (VMs, nodes and the namespace) with: make demo-stop
EOF
		exit "$status"
	fi
	if ((status == 130 || status == 143)); then
		echo "demo: interrupted; cleaning up" >&2
	elif ((status != 0)); then
		echo "demo: failed (exit $status); node logs are in $demo/node*.log" >&2
	fi
	stop_all || true
	say "done in $((SECONDS - start)) s"
	exit "$status"
}
trap finish EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- build -------------------------------------------------------------------------------------
if command -v go >/dev/null || [[ -x /usr/local/go/bin/go ]]; then
	say "building $bin"
	PATH=$PATH:/usr/local/go/bin go build -o "$bin" ./cmd/blixard
elif [[ ! -x $bin ]]; then
	fail "no Go toolchain and no $bin: run make build first"
fi
if [[ ! -s build/guest/initrd.img || ! -s build/guest/vmlinuz ]] || ! command -v qemu-system-x86_64 >/dev/null; then
	say "building the guest and installing qemu (scripts/guest.sh)"
	scripts/guest.sh
fi
if ! command -v iptables >/dev/null; then
	# Debian installs nftables, not the iptables command, by default.
	say "installing iptables (apt-get install iptables)"
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends iptables >/dev/null
fi
kernel=$repo/build/guest/vmlinuz
[[ -s build/guest/vmlinux ]] && kernel=$repo/build/guest/vmlinux
initrd=$repo/build/guest/initrd.img

# --- namespace and nodes -------------------------------------------------------------------------
if ip netns list | grep -qw "$ns"; then
	say "cleaning up an earlier demo"
	stop_all
fi
rm -rf "$demo"
mkdir -p "$demo"
say "creating network namespace $ns (loopback only)"
ip netns add "$ns"
ip -n "$ns" link set lo up

say "starting three nodes in $ns (qemu driver, --accel auto); logs in build/demo/node{1,2,3}.log"
for i in 1 2 3; do
	base=$((7001 + (i - 1) * 10))
	# Not through a shell function: $! must be the node's own pid (ip netns exec execs it).
	ip netns exec "$ns" "$bin" run --node-id "$i" --data-dir "$demo/node$i" \
		--api-addr "127.0.0.1:$base" --raft-addr "127.0.0.1:$((base + 1))" \
		--gossip-addr "127.0.0.1:$((base + 2))" --initial-cluster "$initial" \
		--driver qemu --accel auto --vcpus 2 --memory-mb 1024 \
		--stop-vms-on-exit --log-format json >"$demo/node$i.log" 2>&1 &
	echo $! >"$demo/node$i.pid"
	disown # no "Killed" job notice when the failover step kills it
	echo "node $i: pid $!, api 127.0.0.1:$base"
done
for n in $(seq 1 150); do
	cli cluster status >/dev/null 2>&1 && break
	((n < 150)) || fail "the cluster did not come up within 30 s; see $demo/node*.log"
	sleep 0.2
done
cli cluster status

# --- VMs -----------------------------------------------------------------------------------------
say "creating ${#vms[@]} VMs with --wait (tenants: blue1, blue2 -> blue; green1 -> green)"
echo "kernel $kernel, initrd $initrd; under TCG each boot takes a few seconds"
cpids=()
for vm in "${vms[@]}"; do
	cli vm create "$vm" --tenant "${tenant[$vm]}" --vcpus 1 --memory 128 \
		--kernel "$kernel" --initrd "$initrd" --wait --timeout 3m >"$demo/create-$vm.log" 2>&1 &
	cpids+=($!)
done
failed=0
for i in "${!vms[@]}"; do
	if ! wait "${cpids[$i]}"; then
		failed=1
	fi
	sed "s/^/  /" "$demo/create-${vms[$i]}.log"
done
((failed == 0)) || fail "creating a VM failed (see above)"

say "blixard vm list"
cli vm list
say "blixard cluster status"
cli cluster status

say "fetching each guest's HTTP page from inside $ns"
# bash's own /dev/tcp: no HTTP client needed (Debian's static busybox wget crashes resolving).
get() {
	in_ns timeout 5 bash -c 'exec 3<>"/dev/tcp/$0/80" && printf "GET / HTTP/1.0\r\nHost: %s\r\n\r\n" "$0" >&3 && cat <&3' "$1" |
		tr -d '\r' | sed '1,/^$/d'
}
for vm in "${vms[@]}"; do
	ip=$(cli vm status "$vm" -o json | sed -n 's/.*"ip": *"\([0-9.]*\)".*/\1/p' | head -n1)
	[[ -n $ip ]] || fail "no ip for $vm"
	for n in $(seq 1 120); do
		cli vm logs "$vm" -n 0 2>/dev/null | grep -q BLIXARD-GUEST-READY && break
		((n < 120)) || fail "$vm never printed BLIXARD-GUEST-READY"
		sleep 0.5
	done
	page=
	for n in $(seq 1 20); do
		page=$(get "$ip" 2>/dev/null) && [[ -n $page ]] && break
		((n < 20)) || fail "no HTTP answer from $vm at $ip"
		sleep 0.5
	done
	echo "$vm (tenant ${tenant[$vm]}) at http://$ip/: $page"
done

say "the host side of the network in $ns: one /32 route per VM through its TAP"
ip -n "$ns" route show | grep ' dev vm-' || true
say "iptables chains: anti-spoofing per VM, isolation per tenant"
in_ns iptables -S | grep -E '^-A (FORWARD|INPUT|BLIXARD)' || true
for t in $(printf '%s\n' "${tenant[@]}" | sort -u); do
	echo "tenant $t: chain BLIXARD-T-$(printf %s "$t" | sha256sum | cut -c1-12)"
done

say "blixard vm logs ${vms[0]} -n 8 (the guest's serial console)"
cli vm logs "${vms[0]}" -n 8
cli vm logs "${vms[0]}" -n 0 | grep -m1 BLIXARD-GUEST-READY >/dev/null || fail "no READY marker in the log"

# --- failover: lose the host of one VM -----------------------------------------------------------
victim=${vms[0]}
vmjson() { cli vm status "$victim" -o json; }
field() { sed -n "s/.*\"$1\": *\"\{0,1\}\([^\",]*\)\"\{0,1\}.*/\1/p" | head -n1; }
dead=$(vmjson | field node_id)
[[ -n $dead ]] || fail "no node for $victim"
victim_ip=$(vmjson | field ip)
say "simulating the loss of node $dead, the host of $victim: SIGKILL its agent and its qemu processes"
# Only the agent dies, not a whole machine, so the qemu processes that host ran are killed too
# (they are the ones whose command line names the node's data dir).
kill -KILL "$(cat "$demo/node$dead.pid")"
rm -f "$demo/node$dead.pid"
for pid in $(pgrep -f "$demo/node$dead/" || true); do
	[[ $(cat "/proc/$pid/comm" 2>/dev/null) == qemu-system-* ]] && kill -KILL "$pid" && echo "killed qemu pid $pid"
done
lost=$SECONDS
addrs=$(echo "$addrs" | tr ',' '\n' | grep -v "^127.0.0.1:$((7001 + (dead - 1) * 10))$" | paste -sd,)
echo "waiting for gossip to declare node $dead dead and for $victim to run elsewhere"
for n in $(seq 1 300); do
	j=$(vmjson 2>/dev/null || true)
	node=$(field node_id <<<"$j")
	status=$(field status <<<"$j")
	if [[ -n $node && $node != "$dead" && $status == running ]]; then
		break
	fi
	((n < 300)) || fail "$victim did not come back within 60 s (node '$node', status '$status')"
	sleep 0.2
done
echo "$victim running on node $node after $((SECONDS - lost)) s"
for n in $(seq 1 180); do
	cli vm logs "$victim" -n 0 2>/dev/null | grep -q BLIXARD-GUEST-READY && break
	((n < 180)) || fail "$victim never printed BLIXARD-GUEST-READY on node $node"
	sleep 0.5
done
for n in $(seq 1 20); do
	page=$(get "$victim_ip" 2>/dev/null) && [[ -n $page ]] && break
	((n < 20)) || fail "no HTTP answer from $victim at $victim_ip after failover"
	sleep 0.5
done
echo "$victim back at http://$victim_ip/ after $((SECONDS - lost)) s: $page"
say "blixard cluster status (node $dead is down)"
cli cluster status
say "blixard vm list"
cli vm list
say "demo finished in $((SECONDS - start)) s"
