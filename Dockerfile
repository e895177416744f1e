# One image per llmd-kn command, from this one Dockerfile:
#
#   docker build --build-arg CMD=activator  -t REGISTRY/llmd-kn/activator:TAG .
#   docker build --build-arg CMD=autoscaler -t REGISTRY/llmd-kn/autoscaler:TAG .
#   docker build --build-arg CMD=webhook    -t REGISTRY/llmd-kn/webhook:TAG .
#
# (kn-llmd builds too, for running the simulator in a cluster.) The result
# is a static binary on an empty base image, run as an unprivileged user;
# it needs no shell and no writable root file system. docs/deploy.md has
# the whole procedure, and the ko alternative (.ko.yaml).

ARG GO_VERSION=1.26

FROM golang:${GO_VERSION} AS build
ARG CMD=activator
ARG TARGETOS=linux
ARG TARGETARCH
WORKDIR /src
# Dependencies first, so that a source change does not download them again.
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN test -d "cmd/${CMD}" || { echo "no such command: cmd/${CMD} (activator, autoscaler, webhook, kn-llmd)" >&2; exit 1; }
RUN CGO_ENABLED=0 GOOS=${TARGETOS} GOARCH=${TARGETARCH} \
    go build -trimpath -ldflags="-s -w" -o /out/app "./cmd/${CMD}"

FROM scratch
# Root CAs for outbound TLS (object storage for offloaded KV blocks); the
# in-cluster API server's CA comes with the ServiceAccount token.
COPY --from=build /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=build /out/app /app
USER 65532:65532
ENTRYPOINT ["/app"]
