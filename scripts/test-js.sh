#!/usr/bin/env bash
# The JavaScript client, clients/js: installs its pinned dev tools, checks
# that the committed dist/ is what its source builds to (the server embeds
# dist/index.js, so `go build` needs no npm), type-checks the README's
# example against the declarations, and runs its tests against a go-pusher
# built from this tree. Anything missing is a failure, never a skip.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

for tool in node npm go; do
	command -v "$tool" >/dev/null || { echo "test-js: $tool is not installed" >&2; exit 1; }
done
node -e 'process.exit(Number(process.versions.node.split(".")[0]) >= 20 ? 0 : 1)' ||
	{ echo "test-js: Node $(node --version) is too old: the client's tests need Node 20 or later" >&2; exit 1; }

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

cd clients/js
npm ci --no-audit --no-fund --loglevel=error >/dev/null # errors still go to stderr

node_modules/.bin/tsc -p tsconfig.json --outDir "$tmp/dist"
if ! diff -r dist "$tmp/dist" >"$tmp/dist.diff"; then
	cat "$tmp/dist.diff" >&2
	echo "test-js: clients/js/dist differs from a fresh build of clients/js/src: run 'npm run build' in clients/js and commit dist/" >&2
	exit 1
fi
node_modules/.bin/tsc -p tsconfig.examples.json

(cd "$root" && go build -o "$tmp/go-pusher" .)
# Node 20 has a global WebSocket only with --experimental-websocket.
PUSHER_BIN=$tmp/go-pusher node --experimental-websocket --test test/*.test.js
