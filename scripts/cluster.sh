#!/usr/bin/env bash
# cluster.sh — run a local three-node blixard cluster with the fake driver
# (the README quick start). Nodes listen on 127.0.0.1: api 7001/7011/7021,
# raft 7002/7012/7022 (BLIXARD_BASE_PORT moves them). Logs and data go to
# $BLIXARD_CLUSTER_DIR (default a fresh temp dir). Ctrl-C stops all three
# nodes.
#
#   scripts/cluster.sh            # builds bin/blixard if needed, then runs
#   BLIXARD=/path/to/blixard scripts/cluster.sh
#
# Then, in another shell:
#   export BLIXARD_ADDR=127.0.0.1:7001,127.0.0.1:7011,127.0.0.1:7021
#   bin/blixard cluster status
#   bin/blixard vm create web --vcpus 2 --memory 512 --wait
#   bin/blixard vm list
set -euo pipefail

cd "$(dirname "$0")/.."
bin=${BLIXARD:-bin/blixard}
if [[ -z ${BLIXARD:-} ]]; then
	echo "building $bin" >&2
	go build -o "$bin" ./cmd/blixard
fi

dir=${BLIXARD_CLUSTER_DIR:-$(mktemp -d -t blixard-cluster-XXXXXX)}
mkdir -p "$dir"
port0=${BLIXARD_BASE_PORT:-7001}
initial="1=127.0.0.1:$((port0 + 1)),2=127.0.0.1:$((port0 + 11)),3=127.0.0.1:$((port0 + 21))"

pids=()
stop() {
	trap - INT TERM EXIT
	echo "stopping nodes" >&2
	for pid in "${pids[@]}"; do
		kill -TERM "$pid" 2>/dev/null || true
	done
	wait || true
}
trap stop INT TERM EXIT

for i in 1 2 3; do
	base=$((port0 + (i - 1) * 10))
	"$bin" run --node-id "$i" --data-dir "$dir/node$i" \
		--api-addr "127.0.0.1:$base" --raft-addr "127.0.0.1:$((base + 1))" \
		--gossip-addr "127.0.0.1:$((base + 2))" \
		--initial-cluster "$initial" --driver fake \
		--vcpus "${BLIXARD_VCPUS:-16}" --memory-mb "${BLIXARD_MEMORY_MB:-16384}" \
		--subnet "${BLIXARD_SUBNET:-10.0.0.0/24}" --log-format json >"$dir/node$i.log" 2>&1 &
	pids+=($!)
done

addrs=127.0.0.1:$port0,127.0.0.1:$((port0 + 10)),127.0.0.1:$((port0 + 20))
for _ in $(seq 1 100); do
	if "$bin" --addr "$addrs" cluster status >/dev/null 2>&1; then
		break
	fi
	sleep 0.2
done
"$bin" --addr "$addrs" cluster status
cat <<EOF

three nodes running; logs and data in $dir
  export BLIXARD_ADDR=$addrs
  $bin vm create web --wait
Ctrl-C stops the cluster.
EOF
wait
