# pgverifyproxy in a container: a static binary on distroless, as non-root.
#
#   docker build -t pgverifyproxy --build-arg VERSION=$(git describe --tags --always) .
#   docker run -d --name pgverifyproxy --stop-timeout 40 \
#     -e PGVERIFYPROXY_UPSTREAM=db.example.com:5432 \
#     -v pgverifyproxy-pins:/var/lib/pgverifyproxy -p 127.0.0.1:5432:5432 pgverifyproxy
#
# See examples/docker-compose.yaml for the proxy as an app's sidecar.

FROM golang:1.26-bookworm AS build
ARG VERSION=dev
WORKDIR /src
# Modules first: this layer is reused while go.mod and go.sum are unchanged.
COPY go.mod go.sum ./
RUN go mod download
COPY . .
# Static (no cgo: the pure-Go resolver and no libc), without paths of the
# build machine or debug symbols; the version shows in `pgverifyproxy version`
# and in the build_info metric.
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" \
      -o /out/pgverifyproxy ./cmd/pgverifyproxy \
 && /out/pgverifyproxy version
# The pin directory, owned by the unprivileged user: a new named volume
# mounted there starts as a copy of it, owner and mode included.
RUN mkdir -p /out/state/pgverifyproxy && chmod 0700 /out/state/pgverifyproxy

# distroless/static: no shell, no package manager; /etc/passwd with the
# "nonroot" user (65532), CA certificates and time zones. The binary also
# embeds Mozilla's roots (golang.org/x/crypto/x509roots/fallback), so it
# would trust public CAs on scratch as well.
FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/pgverifyproxy /pgverifyproxy
COPY --from=build --chown=65532:65532 /out/state/ /var/lib/
USER 65532:65532
# Defaults for a container, each overridable with -e or a flag:
# - pins in the volume below (there is no HOME to derive a directory from);
# - listen on every interface, so other containers can connect (the proxy
#   logs a warning about a non-loopback listener: expected here; publish the
#   port on the host's loopback only, or not at all);
# - the admin endpoint (/metrics, /healthz, /readyz) on the container's own
#   loopback, which is where the HEALTHCHECK runs; set 0.0.0.0:9543 to let
#   Prometheus scrape it from another container.
ENV PGVERIFYPROXY_PIN_DIR=/var/lib/pgverifyproxy \
    PGVERIFYPROXY_LISTEN=0.0.0.0:5432 \
    PGVERIFYPROXY_ADMIN=127.0.0.1:9543
VOLUME ["/var/lib/pgverifyproxy"]
EXPOSE 5432
# `pgverifyproxy ready` asks /readyz (there is no curl here): healthy once
# every route's upstream was reached and verified within ready_window.
HEALTHCHECK --interval=10s --timeout=10s --start-period=30s --retries=3 \
  CMD ["/pgverifyproxy", "ready"]
# docker stop sends SIGTERM: the proxy drains sessions for drain_timeout
# (30s) -- run with --stop-timeout 40 (compose: stop_grace_period: 40s).
STOPSIGNAL SIGTERM
ENTRYPOINT ["/pgverifyproxy"]
CMD ["run"]
