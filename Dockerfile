# cartae-database-api: multi-stage build.
#
#   1. builder: compiles the dependency graph alone first (from Cargo.toml and Cargo.lock
#      with stub sources), so that layer is reused until the lock file changes; then the
#      real sources. BuildKit cache mounts keep the cargo registry between builds.
#   2. runtime: distroless "cc" (glibc + libgcc, no shell, no package manager, no curl),
#      running as the image's built-in non-root user (uid 65532).
#
# The image's HEALTHCHECK runs the binary's own `healthcheck` subcommand, which asks
# GET http://127.0.0.1:$PORT/ready. It reflects readiness, not liveness: plain Docker does
# NOT restart a container whose health check fails (restart policies act on process exit
# only); the status marks the container `unhealthy` for operators and tooling, while the
# load balancer runs its own active check on /ready.
#
# Build:  DOCKER_BUILDKIT=1 docker build -t cartae-database-api:latest .
#
# No `# syntax=` line: it would make BuildKit fetch a frontend image from a registry, and
# the built-in frontend has everything this file uses, cache mounts included. The base
# images' stand-ins for machines without a registry: infra/scripts/local-images.sh.

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-slim-bookworm AS builder
WORKDIR /app
ENV CARGO_TERM_COLOR=never

# Dependency layer: stub sources, real manifests (the workspace's test harness member
# must be present for the manifest to resolve, but is not built).
COPY Cargo.toml Cargo.lock ./
COPY harness/Cargo.toml harness/
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    mkdir -p src harness/src \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs harness/src/lib.rs \
    && cargo build --release --locked -p cartae-database-api \
    && rm -rf src target/release/cartae-database-api* \
       target/release/deps/cartae_database_api* target/release/deps/libcartae_database_api* \
       target/release/.fingerprint/cartae-database-api*

# Application layer: sources and embedded migrations (.dockerignore
# keeps target/, .git/, infra/ and docs out of the context).
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    touch src/main.rs src/lib.rs \
    && cargo build --release --locked -p cartae-database-api --bin cartae-database-api \
    && install -D -m 0755 target/release/cartae-database-api /out/cartae-database-api

FROM gcr.io/distroless/cc-debian12:nonroot AS runtime
LABEL org.opencontainers.image.title="cartae-database-api" \
      org.opencontainers.image.description="Highly available database API for Cartae" \
      org.opencontainers.image.licenses="MIT"

COPY --from=builder /out/cartae-database-api /usr/local/bin/cartae-database-api

ENV HOST=0.0.0.0 \
    PORT=3001 \
    METRICS_PORT=9090 \
    LOG_FORMAT=json \
    LOG_LEVEL=info

# 3001: API and probes (/live, /ready, /health, /startup). 9090: GET /metrics, kept off the
# load balancer.
EXPOSE 3001 9090

# 65532 is distroless's "nonroot" user; numeric so Kubernetes can verify runAsNonRoot.
USER 65532:65532

# On SIGTERM the service drains itself (DRAIN_DELAY_MS with /ready answering 503, then up to
# SHUTDOWN_TIMEOUT_MS for in-flight requests): give it that long before SIGKILL
# (compose: stop_grace_period, Kubernetes: terminationGracePeriodSeconds).
STOPSIGNAL SIGTERM

HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["/usr/local/bin/cartae-database-api", "healthcheck"]

ENTRYPOINT ["/usr/local/bin/cartae-database-api"]
CMD ["serve"]
