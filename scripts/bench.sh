#!/usr/bin/env bash
# `make bench`: the Go benchmarks of the hot paths, then a short load run of
# every pusher-bench scenario against the built server, with the stdout
# message log (redirected to a file) and with -message-log=none, and a
# table of the figures. Each scenario gets a fresh server, so that one
# run's memory and CPU do not show in the next one's figures.
#
# Sizes come from the environment; the defaults finish in 1–2 minutes:
#
#   BENCH_IDLE_CONNS          idle: connections held                            (2000)
#   BENCH_USERS               send: users, one connection each                  (200)
#   BENCH_SENDERS             send, multicast, churn, reconnect: /send clients  (16)
#   BENCH_MESSAGES            send: unicasts in total                           (20000)
#   BENCH_BATCH_MESSAGES      batch: unicasts in total, to BENCH_USERS users    (100000)
#   BENCH_BATCH_ITEMS         batch: unicasts per /send/batch request           (100)
#   BENCH_MC_USERS            multicast: uids in each /send                     (200)
#   BENCH_ROUNDS              multicast: /send requests                         (100)
#   BENCH_MC_SENDERS          multicast: /send requests at a time               (1)
#   BENCH_CHURN_USERS         churn: connections                                (200)
#   BENCH_CHURN_DURATION      churn: how long                                   (10s)
#   BENCH_CHURN_RATE          churn: /send requests per second                  (2000)
#   BENCH_RECONNECT_USERS     reconnect: connections, one per uid               (200)
#   BENCH_RECONNECT_DURATION  reconnect: how long drops go on                   (10s)
#   BENCH_RECONNECT_RATE      reconnect: /send requests per second              (2000)
#   BENCH_RECONNECT_INTERVAL  reconnect: mean time a connection lives           (2s)
#   BENCH_RETRY_MESSAGES      retry: keyed unicasts in total, to BENCH_USERS    (20000)
#   BENCH_RETRY_BATCH_ITEMS   retry: 1 posts keyed /send; more: keyed items of
#                             one /send/batch (at most BENCH_USERS)             (1)
#   BENCH_RETRY_TIMEOUT       retry: first try's timeout, doubled per retry     (2ms)
#   BENCH_RETRY_ABANDON       retry: share of first tries hung up on            (0.05)
#   BENCH_RETRY_REPEAT        retry: share of requests repeated after the 200   (0.05)
#   BENCH_SIZE                message size, bytes                               (64)
#   BENCH_SETTLE              idle: hold before measuring                       (3s)
#   BENCH_MESSAGE_LOGS        server -message-log values to run                 ("stdout none")
#   BENCH_SCENARIOS           scenarios to run            ("idle send batch multicast churn reconnect retry")
#   BENCH_GO                  0 skips the Go benchmarks                         (1)
#   BENCH_OUT                 where the -json reports are kept                  (bin/bench)
#
# reconnect drops each connection at random moments (socket closed without
# a close frame after the reader stalled up to 100 ms) and redials after
# 50-500 ms with ?since= its last offset: lost must be 0, and replay
# latency is from the redial to {"recovered": true}.
#
# batch is send with BENCH_BATCH_ITEMS unicasts per POST /send/batch (the
# server's -max-batch, PUSHER_MAX_BATCH, default 1000, bounds it): every
# item must be answered as sent and arrive once, in order; compare its
# "per server CPU-s" with send's. retry gives every message an
# idempotency key and a short client timeout: a try that times out, or
# one of the BENCH_RETRY_ABANDON first tries the tool hangs up on once
# written (so that retries happen however fast the server is), is tried
# again with the same key until a 200; a 409 waits and tries again.
# Every acknowledged key must arrive exactly once; the report counts
# timeouts, retries, 409s and replayed answers.
#
# The full-size figures (about 5 minutes on 2 cores):
#
#   BENCH_IDLE_CONNS=10000 BENCH_USERS=1000 BENCH_SENDERS=32 BENCH_MESSAGES=100000 \
#   BENCH_BATCH_MESSAGES=1000000 BENCH_RETRY_MESSAGES=100000 BENCH_MC_USERS=1000 BENCH_ROUNDS=100 BENCH_CHURN_USERS=1000 BENCH_CHURN_DURATION=60s \
#   BENCH_RECONNECT_USERS=1000 BENCH_RECONNECT_DURATION=60s BENCH_RECONNECT_INTERVAL=10s \
#   BENCH_SETTLE=10s make bench
#
# The server inherits the environment, so PUSHER_* variables (for example
# PUSHER_SEND_BUFFER) bench other settings.
#
# The server and the tool share the machine's cores: compare the
# "per server CPU-second" figures across machines, not the rates, and
# mind the "other CPU" column (other processes busy during the run).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/smoke-bench.sh # start_server, stop_server

export JWT_SECRET=${JWT_SECRET:-dev-only-jwt-secret-change-me-0123456789}
export PUSHER_API_KEY=${PUSHER_API_KEY:-dev-only-api-key-change-me-0123456789}
IDLE_CONNS=${BENCH_IDLE_CONNS:-2000}
USERS=${BENCH_USERS:-200}
SENDERS=${BENCH_SENDERS:-16}
MESSAGES=${BENCH_MESSAGES:-20000}
BATCH_MESSAGES=${BENCH_BATCH_MESSAGES:-100000}
BATCH_ITEMS=${BENCH_BATCH_ITEMS:-100}
MC_USERS=${BENCH_MC_USERS:-200}
ROUNDS=${BENCH_ROUNDS:-100}
MC_SENDERS=${BENCH_MC_SENDERS:-1}
CHURN_USERS=${BENCH_CHURN_USERS:-200}
CHURN_DURATION=${BENCH_CHURN_DURATION:-10s}
CHURN_RATE=${BENCH_CHURN_RATE:-2000}
RECONNECT_USERS=${BENCH_RECONNECT_USERS:-200}
RECONNECT_DURATION=${BENCH_RECONNECT_DURATION:-10s}
RECONNECT_RATE=${BENCH_RECONNECT_RATE:-2000}
RECONNECT_INTERVAL=${BENCH_RECONNECT_INTERVAL:-2s}
RETRY_MESSAGES=${BENCH_RETRY_MESSAGES:-20000}
RETRY_BATCH_ITEMS=${BENCH_RETRY_BATCH_ITEMS:-1}
RETRY_TIMEOUT=${BENCH_RETRY_TIMEOUT:-2ms}
RETRY_ABANDON=${BENCH_RETRY_ABANDON:-0.05}
RETRY_REPEAT=${BENCH_RETRY_REPEAT:-0.05}
SIZE=${BENCH_SIZE:-64}
SETTLE=${BENCH_SETTLE:-3s}
MESSAGE_LOGS=${BENCH_MESSAGE_LOGS:-stdout none}
SCENARIOS=${BENCH_SCENARIOS:-idle send batch multicast churn reconnect retry}
OUT=${BENCH_OUT:-bin/bench}

# Both the server and the tool hold one descriptor per connection.
ulimit -n "$(ulimit -Hn)"

tmp=$(mktemp -d)
TOOL_PID=
stop_tool() {
	if [ -n "$TOOL_PID" ]; then
		kill "$TOOL_PID" 2>/dev/null || true
		wait "$TOOL_PID" 2>/dev/null || true
		TOOL_PID=
	fi
}
trap 'stop_tool; stop_server; rm -rf "$tmp"' EXIT
# A signal ends the script at once (bash runs traps only between
# foreground commands, hence the tool runs in the background and is
# waited for), and the EXIT trap stops the tool and the server.
trap 'exit 130' INT TERM
failed=()

go build -o bin/go-pusher .
go build -o bin/pusher-bench ./cmd/pusher-bench

if [ "${BENCH_GO:-1}" != 0 ]; then
	echo "== Go benchmarks (root package)"
	go test -run '^$' -bench . -benchmem . || failed+=("go benchmarks")
fi

mkdir -p "$OUT"
rm -f "$OUT"/*.json
reports=()
for log in $MESSAGE_LOGS; do
	for sc in $SCENARIOS; do
		case $sc in
		idle) size=(-users "$IDLE_CONNS" -settle "$SETTLE") ;;
		send) size=(-users "$USERS" -senders "$SENDERS" -messages "$MESSAGES") ;;
		batch) size=(-users "$USERS" -senders "$SENDERS" -messages "$BATCH_MESSAGES" -batch-items "$BATCH_ITEMS") ;;
		multicast) size=(-users "$MC_USERS" -senders "$MC_SENDERS" -rounds "$ROUNDS") ;;
		churn) size=(-users "$CHURN_USERS" -senders "$SENDERS" -messages 10000000 -rate "$CHURN_RATE" -duration "$CHURN_DURATION") ;;
		reconnect)
			size=(-users "$RECONNECT_USERS" -senders "$SENDERS" -messages 10000000 -rate "$RECONNECT_RATE"
				-duration "$RECONNECT_DURATION" -drop-interval "$RECONNECT_INTERVAL" -redial-min 50ms -redial-max 500ms)
			;;
		retry)
			size=(-users "$USERS" -senders "$SENDERS" -messages "$RETRY_MESSAGES" -batch-items "$RETRY_BATCH_ITEMS"
				-retry-timeout "$RETRY_TIMEOUT" -retry-abandon "$RETRY_ABANDON" -retry-repeat "$RETRY_REPEAT")
			;;
		*)
			echo "unknown scenario $sc in BENCH_SCENARIOS" >&2
			exit 1
			;;
		esac
		echo "== $sc, -message-log=$log"
		# The message log goes to a file: a terminal would be the bottleneck.
		start_server bin/go-pusher "$tmp" -message-log "$log"
		report=$OUT/$sc-$log.json
		rc=0
		bin/pusher-bench -url "$SERVER_URL" -server-pid "$SERVER_PID" -scenario "$sc" -label "log=$log" \
			-size "$SIZE" "${size[@]}" -json >"$report" &
		TOOL_PID=$!
		wait "$TOOL_PID" || rc=$?
		TOOL_PID=
		stop_server
		if [ -s "$report" ]; then
			reports+=("$report")
		fi
		# 2: the run finished and its report shows a failure (the table
		# says which); anything else: the tool could not run.
		if [ "$rc" != 0 ]; then
			failed+=("$sc log=$log (exit $rc)")
			[ "$rc" = 2 ] || tail -n 20 "$tmp/server.err" >&2
		fi
	done
done

echo
echo "== figures ($(nproc) cores; reports in $OUT)"
if [ ${#reports[@]} -gt 0 ]; then
	bin/pusher-bench table "${reports[@]}"
fi
if [ ${#failed[@]} -gt 0 ]; then
	printf 'bench: failed: %s\n' "${failed[@]}" >&2
	exit 1
fi
