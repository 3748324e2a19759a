#!/usr/bin/env bash
# scripts/bench-cluster.sh LABEL MASTERS REPLICAS [pusher-bench flags...]
#
# One go-pusher node (-message-log none) on a fresh Redis of its own, then
# pusher-bench's send scenario (1,000 users, 32 senders, 30,000 unicasts
# unless the flags say otherwise), and per Redis master: the publishes it
# ran (INFO commandstats, evalsha) and the CPU it used (INFO cpu) during
# the run. MASTERS 0 is a single Redis (not a cluster); otherwise a Redis
# Cluster of MASTERS masters, slots split evenly, with REPLICAS replicas
# each (publishes then WAIT for one). "per server CPU-s" in the report
# counts the node and every redis-server of the run.
#
#   scripts/bench-cluster.sh one 1 0
#   scripts/bench-cluster.sh wait 1 1
#   scripts/bench-cluster.sh two 2 0 -rate 10000 -messages 60000
#
# Needs redis-server and redis-cli; builds bin/go-pusher (or runs
# BENCH_SERVER, another build to compare) and bin/pusher-bench.
# Ports: BENCH_REDIS_PORT (7300) and up, 8181, 8182.
set -euo pipefail
cd "$(dirname "$0")/.."
label=$1 masters=$2 replicas=$3
shift 3
base=${BENCH_REDIS_PORT:-7300}
dir=$(mktemp -d)
server=${BENCH_SERVER:-bin/go-pusher}
[ -n "${BENCH_SERVER:-}" ] || go build -o bin/go-pusher .
go build -o bin/pusher-bench ./cmd/pusher-bench

nodes=$((masters * (replicas + 1)))
url="redis+cluster://127.0.0.1:$base"
if [ "$masters" = 0 ]; then
	nodes=1 masters=1 url="redis://127.0.0.1:$base/0"
fi
cleanup() {
	[ -n "${gp:-}" ] && kill "$gp" 2>/dev/null && wait "$gp" 2>/dev/null
	for i in $(seq 0 $((nodes - 1))); do redis-cli -p $((base + i)) shutdown nosave >/dev/null 2>&1 || true; done
	rm -rf "$dir"
}
trap cleanup EXIT

for i in $(seq 0 $((nodes - 1))); do
	p=$((base + i))
	mkdir -p "$dir/$p"
	cluster=()
	[ "$url" != "${url#redis+cluster}" ] && cluster=(--cluster-enabled yes --cluster-config-file "$dir/$p/nodes.conf" --cluster-node-timeout 2000)
	redis-server --port $p --bind 127.0.0.1 --save "" --appendonly no --daemonize yes --dir "$dir/$p" \
		--logfile "$dir/$p/log" --repl-diskless-sync-delay 0 "${cluster[@]}"
done
for i in $(seq 0 $((nodes - 1))); do until redis-cli -p $((base + i)) ping >/dev/null 2>&1; do sleep 0.05; done; done
if [ "$url" != "${url#redis+cluster}" ]; then
	for i in $(seq 1 $((nodes - 1))); do redis-cli -p "$base" cluster meet 127.0.0.1 $((base + i)) >/dev/null; done
	per=$((16384 / masters))
	for m in $(seq 0 $((masters - 1))); do
		lo=$((m * per)) hi=$((m == masters - 1 ? 16383 : (m + 1) * per - 1))
		redis-cli -p $((base + m)) cluster addslotsrange $lo $hi >/dev/null
	done
	for m in $(seq 0 $((masters - 1))); do
		until id=$(redis-cli -p $((base + m)) cluster myid) && [ -n "$id" ]; do sleep 0.1; done
		for r in $(seq 1 "$replicas"); do
			rp=$((base + masters + m * replicas + r - 1))
			until redis-cli -p $rp cluster replicate "$id" 2>/dev/null | grep -q OK; do sleep 0.2; done
		done
	done
	until redis-cli -p "$base" cluster info | grep -q cluster_state:ok; do sleep 0.1; done
	for m in $(seq 0 $((masters - 1))); do
		until [ "$(redis-cli -p $((base + m)) info replication | grep -c '^slave[0-9]*:.*state=online')" -ge "$replicas" ]; do sleep 0.1; done
	done
fi

export JWT_SECRET=${JWT_SECRET:-dev-only-jwt-secret-change-me-0123456789}
export PUSHER_API_KEY=${PUSHER_API_KEY:-dev-only-api-key-change-me-0123456789}
PUSHER_REDIS_URL=$url "$server" -addr 127.0.0.1:8181 -internal-addr 127.0.0.1:8182 \
	-message-log none -log-level warn >/dev/null 2>"$dir/go-pusher.log" &
gp=$!
until curl -fs http://127.0.0.1:8182/readyz >/dev/null 2>&1; do sleep 0.1; done
pids=$gp
for i in $(seq 0 $((nodes - 1))); do
	pids="$pids,$(redis-cli -p $((base + i)) info server | awk -F: '/^process_id:/{print $2}' | tr -d '\r')"
done
stats() { # port → "cpu-seconds publishes"
	local cpu calls
	cpu=$(redis-cli -p "$1" info cpu | awk -F: '/^used_cpu_(sys|user):/{s+=$2} END{printf "%.3f", s}')
	calls=$(redis-cli -p "$1" info commandstats | awk -F'[=,:]' '/^cmdstat_evalsha:/{print $3}')
	echo "$cpu ${calls:-0}"
}
declare -A cpu0 pub0
for m in $(seq 0 $((masters - 1))); do read -r cpu0[$m] pub0[$m] < <(stats $((base + m))); done
bin/pusher-bench -url http://127.0.0.1:8181 -internal-url http://127.0.0.1:8182 -server-pid "$pids" \
	-scenario send -users 1000 -senders 32 -messages 30000 -label "$label" "$@"
for m in $(seq 0 $((masters - 1))); do
	read -r cpu pubs < <(stats $((base + m)))
	awk -v l="$label" -v m="$m" -v c="$cpu" -v c0="${cpu0[$m]}" -v p="$pubs" -v p0="${pub0[$m]}" 'BEGIN {
		printf "%s: master %d: %d publishes, %.3f CPU-s, %.1f us per publish\n", l, m, p - p0, c - c0, (c - c0) * 1e6 / (p - p0 > 0 ? p - p0 : 1) }'
done
