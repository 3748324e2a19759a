# go-pusher in a container: a static binary (CGO_ENABLED=0) on an empty
# image, running as a non-root user, listening on 8181.
#
#   docker build -t go-pusher .          (or podman build)
#   docker run -p 8181:8181 -e JWT_SECRET -e PUSHER_API_KEY go-pusher
#
# Flags go after the image name, or as PUSHER_<FLAG> variables. The image
# has no shell and no curl: its health check is the binary's own
# "go-pusher healthcheck", which asks /healthz on PUSHER_INTERNAL_ADDR, or
# else PUSHER_ADDR, so give the listeners as those variables, not flags.
# Trusted CA roots are compiled into the binary.
#
# BINARY=prebuilt takes a binary built outside (bin/image/go-pusher, as
# `make image` does) instead of building one in a golang image: for a
# machine that can reach the Go module proxy but not an image registry.
# Either way the builder must skip the stage it does not use: BuildKit
# (Docker's builder since 23.0) and Buildah (podman) do; the legacy
# builder (DOCKER_BUILDKIT=0) fails on the missing prebuilt binary.
ARG BINARY=build

FROM docker.io/library/golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o /out/go-pusher .

FROM scratch AS prebuilt
COPY bin/image/go-pusher /out/go-pusher

FROM ${BINARY} AS binary

FROM scratch
COPY --from=binary /out/go-pusher /go-pusher
# 65532: no user of the host's, no home, no shell (the nonroot of distroless).
USER 65532:65532
ENV PUSHER_ADDR=:8181
EXPOSE 8181
HEALTHCHECK --interval=10s --timeout=5s --start-period=5s CMD ["/go-pusher", "healthcheck"]
ENTRYPOINT ["/go-pusher"]
