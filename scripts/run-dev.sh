#!/usr/bin/env bash
# Runs go-pusher with development secrets and prints how to try it.
# Never use these secrets in production.
set -euo pipefail
BIN=${1:-bin/go-pusher}
shift || true # the rest are the server's flags
export JWT_SECRET=${JWT_SECRET:-dev-only-jwt-secret-change-me-0123456789}
export PUSHER_API_KEY=${PUSHER_API_KEY:-dev-only-api-key-change-me-0123456789}
ADDR=${PUSHER_ADDR:-:8181}
PORT=${ADDR##*:}
TOKEN=$("$BIN" token -uid alice -ttl 24h)

# urlencode percent-encodes $1 for the console URL's fragment.
urlencode() {
	local s=$1 out= c i
	for ((i = 0; i < ${#s}; i++)); do
		c=${s:i:1}
		case $c in
		[A-Za-z0-9._~-]) out+=$c ;;
		*) out+=$(printf '%%%02X' "'$c") ;;
		esac
	done
	printf '%s' "$out"
}

cat <<TXT

go-pusher (development secrets; do not use them in production)

  Console:  http://localhost:$PORT/#token=$(urlencode "$TOKEN")&key=$(urlencode "$PUSHER_API_KEY")

  Token for uid "alice" (valid 24h):
    $TOKEN

  Listen in a browser console (any page on http://localhost:$PORT):
    new WebSocket("ws://localhost:$PORT/ws?token=$TOKEN").onmessage = e => console.log(e.data)

  Push to alice:
    curl -H "Authorization: Bearer $PUSHER_API_KEY" -d uid=alice -d message=hello http://localhost:$PORT/send

  The console page has a send panel too. Stop the server with Ctrl-C.

TXT
exec "$BIN" "$@"
