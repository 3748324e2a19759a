#!/usr/bin/env bash
# `make test`: every test of the project, with the services it needs.
# Under CI=true a test whose service is missing fails; it never skips.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/services.sh

ensure_mariadb
ensure_redis
ensure_chromium
ensure_tools

export PUSHER_TEST_MYSQL_DSN=${PUSHER_TEST_MYSQL_DSN:-root@tcp(127.0.0.1:3306)/}
export PUSHER_TEST_REDIS_URL=${PUSHER_TEST_REDIS_URL:-redis://127.0.0.1:6379/0}
export PUSHER_TEST_CHROMIUM=${PUSHER_TEST_CHROMIUM:-$(command -v chromium)}

go vet ./...
go test -race -count=1 ./...
./scripts/test-js.sh # clients/js: dist/ matches its source, the example type-checks, tests against the built server
./scripts/smoke-bench.sh # the load tool against the built server: nothing lost

# Short fuzz runs over the parsers of untrusted input, from the checked-in
# corpus (testdata/fuzz). A finding fails the run and is written there.
# A count, not a duration: Go 1.26's fuzz coordinator can fail a target
# with a bare "context deadline exceeded" when a duration runs out
# (go.dev/issue/75804, fixed in Go 1.27).
fuzz() { go test -run '^$' -fuzz "^$2\$" -fuzztime "${FUZZTIME:-20000x}" "$1"; }
fuzz ./internal/sendreq FuzzParse
fuzz ./internal/sendreq FuzzParseBatch
fuzz . FuzzParseToken
fuzz ./message FuzzAppendLine
