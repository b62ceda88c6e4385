#!/bin/sh
# Starts a Redis node of docker-compose.ha.yml. Environment:
#   REDIS_PASSWORD   requirepass, and masterauth: any node may become a replica later
#   REDIS_ANNOUNCE   this node's fixed address, announced to Sentinel
#   REDIS_REPLICA_OF the first master's address, for the node that starts as a replica
#   REDIS_MASTER_PORT the first master's port (6379)
# The configuration is copied into the volume once (see infra/redis/redis.conf, why).
# REDIS_CONF_DIR and REDIS_DATA_DIR move the files, and further arguments go to
# redis-server, for infra/ci/check-infra.sh, which runs this script on loopback.
set -eu

: "${REDIS_PASSWORD:?REDIS_PASSWORD is not set}"
: "${REDIS_ANNOUNCE:?REDIS_ANNOUNCE is not set}"
conf="${REDIS_DATA_DIR:-/data}"/redis.conf
if [ ! -f "$conf" ]; then
  cp "${REDIS_CONF_DIR:-/usr/local/etc/redis}"/redis.conf "$conf"
  if [ -n "${REDIS_REPLICA_OF:-}" ]; then
    echo "replicaof $REDIS_REPLICA_OF ${REDIS_MASTER_PORT:-6379}" >> "$conf"
  fi
fi
# The password is expanded here, inside the container, never written by compose.
exec redis-server "$conf" \
  --requirepass "$REDIS_PASSWORD" \
  --masterauth "$REDIS_PASSWORD" \
  --replica-announce-ip "$REDIS_ANNOUNCE" "$@"
