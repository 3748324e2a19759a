# go-pusher: `make run` to try it, `make test` to test everything.
GO      ?= go
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X main.version=$(VERSION)
BIN     := bin/go-pusher

.PHONY: build run test lint bench clean

build:
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN) .

# Starts the server with development secrets and prints a token, the
# console URL and a curl line to try it.
run: build
	./scripts/run-dev.sh $(BIN)

# Every test: starts or installs MariaDB, Redis and Chromium when missing,
# then go vet, go test -race ./... and short fuzz runs.
test:
	./scripts/test.sh

lint:
	@test -z "$$(gofmt -l .)" || { echo "gofmt would change:"; gofmt -l .; exit 1; }
	$(GO) vet ./...
	$(GO) mod tidy -diff

bench:
	./scripts/bench.sh

clean:
	rm -rf bin
