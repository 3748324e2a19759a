# go-pusher: `make run` to try it, `make test` to test everything.
GO      ?= go
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X main.version=$(VERSION)
BIN     := bin/go-pusher

.PHONY: build run test lint fmt golangci-lint bench image clean

# golangci-lint is pinned: the same linters and rules for everyone. It is
# built from source with this machine's Go (a release binary built with an
# older Go cannot load a module on a newer one) into bin/tools, and only
# when the pinned version is not there yet.
GOLANGCI_LINT_VERSION := v2.15.0
GOLANGCI_LINT         := bin/tools/golangci-lint

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

# golangci-lint with .golangci.yml (linters, and gofumpt and gci as
# formatters: `make fmt` applies them), then go vet and go mod tidy.
lint: golangci-lint
	$(GOLANGCI_LINT) run ./...
	$(GO) vet ./...
	$(GO) mod tidy -diff

fmt: golangci-lint
	$(GOLANGCI_LINT) fmt

golangci-lint:
	@$(GOLANGCI_LINT) version 2>/dev/null | grep -qF 'has version $(GOLANGCI_LINT_VERSION:v%=%) ' || { \
		echo "installing golangci-lint $(GOLANGCI_LINT_VERSION) into bin/tools"; \
		GOBIN=$(CURDIR)/bin/tools $(GO) install github.com/golangci/golangci-lint/v2/cmd/golangci-lint@$(GOLANGCI_LINT_VERSION); \
	}

bench:
	./scripts/bench.sh

# The container image (Dockerfile), with podman or docker. The static
# binary is built here and copied in (BINARY=prebuilt), so that only the
# Go module proxy is needed, not an image registry; `docker build .`
# alone builds it in a golang image instead.
IMAGE     ?= go-pusher:$(VERSION)
CONTAINER ?= $(shell command -v podman || command -v docker)
image:
	@test -n "$(CONTAINER)" || { echo "make image: neither podman nor docker is installed" >&2; exit 1; }
	mkdir -p bin/image
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "-s -w $(LDFLAGS)" -o bin/image/go-pusher .
	$(CONTAINER) build $(if $(findstring podman,$(CONTAINER)),--format docker) \
		--build-arg BINARY=prebuilt --build-arg VERSION=$(VERSION) -t $(IMAGE) .

clean:
	rm -rf bin
