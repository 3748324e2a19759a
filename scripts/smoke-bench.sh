#!/usr/bin/env bash
# A tiny pusher-bench run against the built server, for `make test` and CI:
# a few dozen connections and a few hundred messages through `send` and
# `multicast`, 3 seconds of `reconnect` (connections dropping and coming
# back with ?since=), then `batch` (/send/batch) and `retry` (idempotency
# keys, on /send and on /send/batch items, with tries that time out or
# are hung up on and are tried again), checking that the tool exits 0
# and reports lost=0. It never asserts a speed: machines differ, and a
# loaded CI machine is slow.
#
# scripts/bench.sh sources this file for start_server and stop_server.
set -euo pipefail

# start_server BIN LOGDIR [server flags...]: starts BIN on a free loopback
# port with development secrets, stdout (the message log) and stderr in
# LOGDIR, and waits for /healthz. Sets SERVER_PID and SERVER_URL.
start_server() {
	local bin=$1 dir=$2
	shift 2
	: >"$dir/server.err"
	JWT_SECRET=$JWT_SECRET PUSHER_API_KEY=$PUSHER_API_KEY \
		"$bin" -addr 127.0.0.1:0 "$@" >"$dir/server.out" 2>"$dir/server.err" &
	SERVER_PID=$!
	# The port is the kernel's choice (no clash with anything running):
	# the server logs it once it listens.
	local addr="" i
	for i in $(seq 100); do
		addr=$(grep -m1 -o 'msg=listening addr=[0-9.]*:[0-9]*' "$dir/server.err" | sed 's/.*addr=//') || true
		[ -n "$addr" ] && break
		if ! kill -0 "$SERVER_PID" 2>/dev/null; then
			echo "server exited at start:" >&2
			cat "$dir/server.err" >&2
			return 1
		fi
		sleep 0.1
	done
	if [ -z "$addr" ]; then
		echo "server did not log its address within 10 s" >&2
		return 1
	fi
	SERVER_URL=http://$addr
	for i in $(seq 100); do
		healthz "$addr" && return 0
		sleep 0.1
	done
	echo "server at $SERVER_URL: /healthz not 200 within 10 s" >&2
	return 1
}

# healthz HOST:PORT succeeds when GET /healthz answers 200 (bash's
# /dev/tcp, so that no curl is needed).
healthz() {
	local host=${1%:*} port=${1##*:} status
	# Braces: a bare exec would send the rest of the script's stderr away.
	{ exec 3<>"/dev/tcp/$host/$port"; } 2>/dev/null || return 1
	printf 'GET /healthz HTTP/1.0\r\nHost: %s\r\n\r\n' "$1" >&3
	status=$(head -n1 <&3 || true)
	exec 3>&-
	[[ $status == *" 200 "* ]]
}

# stop_server stops the server started last (SIGTERM, then its drain),
# if it runs. Safe to call twice.
stop_server() {
	if [ -n "${SERVER_PID:-}" ]; then
		kill "$SERVER_PID" 2>/dev/null || true
		wait "$SERVER_PID" 2>/dev/null || true
		SERVER_PID=
	fi
}

smoke() {
	cd "$(dirname "${BASH_SOURCE[0]}")/.."
	export JWT_SECRET=smoke-only-jwt-secret-0123456789-abcdef
	export PUSHER_API_KEY=smoke-only-api-key
	# Global, not local: the EXIT trap runs after smoke has returned.
	tmp=$(mktemp -d)
	trap 'stop_server; rm -rf "$tmp"' EXIT
	trap 'exit 130' INT TERM # so that the EXIT trap stops the server then too
	go build -o "$tmp/go-pusher" .
	go build -o "$tmp/pusher-bench" ./cmd/pusher-bench
	start_server "$tmp/go-pusher" "$tmp" -message-log stdout

	local common=(-url "$SERVER_URL" -server-pid "$SERVER_PID" -json -users 40 -senders 4 -drain 10s -max-time 2m)
	local reconnect=(-duration 3s -rate 400 -messages 1200 -drop-interval 500ms -redial-min 10ms -redial-max 100ms -settle 200ms)
	# retry: a 1 ms first try times out now and then, and a tenth of the
	# first tries are hung up on, so that retries happen on any machine.
	local retry=(-messages 300 -retry-timeout 1ms -retry-abandon 0.1 -retry-repeat 0.1)
	local run sc reports=()
	for run in send multicast reconnect batch retry retry-batch; do
		local extra=()
		sc=$run
		case $run in
		reconnect) extra=("${reconnect[@]}") ;;
		batch) extra=(-batch-items 20) ;;
		retry) extra=("${retry[@]}") ;;
		retry-batch)
			sc=retry
			extra=("${retry[@]}" -batch-items 10 -label batch-items=10)
			;;
		esac
		if ! "$tmp/pusher-bench" "${common[@]}" -scenario "$sc" -messages 400 -rounds 20 "${extra[@]}" >"$tmp/$run.json"; then
			echo "smoke-bench: pusher-bench -scenario $sc ($run) failed:" >&2
			cat "$tmp/$run.json" >&2
			return 1
		fi
		if ! grep -q '"lost": 0,' "$tmp/$run.json"; then
			echo "smoke-bench: $run reports lost messages:" >&2
			cat "$tmp/$run.json" >&2
			return 1
		fi
		reports+=("$tmp/$run.json")
	done
	"$tmp/pusher-bench" table "${reports[@]}"
	stop_server
	echo "smoke-bench: ok"
}

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
	smoke
fi
