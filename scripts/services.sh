#!/usr/bin/env bash
# Starts the local PostgreSQL and Redis that the service and its tests use, when they are
# not already answering. Safe to run any number of times.
#
#   scripts/services.sh
set -euo pipefail

pg_up() { pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; }
redis_up() { [ "$(redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null)" = "PONG" ]; }

wait_for() {
  local what="$1" check="$2"
  for _ in $(seq 1 60); do
    if "$check"; then
      return 0
    fi
    sleep 0.5
  done
  echo "services: $what did not come up within 30 s" >&2
  return 1
}

if ! pg_up; then
  echo "services: starting PostgreSQL"
  # shellcheck disable=SC2046 # one word per installed major version
  pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start
  wait_for PostgreSQL pg_up
fi

if ! redis_up; then
  echo "services: starting Redis"
  mkdir -p /var/lib/redis /var/log/redis
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log
  wait_for Redis redis_up
fi

echo "services: PostgreSQL and Redis are up"
