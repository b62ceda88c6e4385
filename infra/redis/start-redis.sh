#!/bin/sh
# Starts a Redis node of docker-compose.ha.yml. Environment:
#   REDIS_PASSWORD   requirepass, and masterauth: any node may become a replica later
#   REDIS_ANNOUNCE   this node's service name, announced to Sentinel instead of its address
#   REDIS_REPLICA_OF the first master's service name, for the node that starts as a replica
# The configuration is copied into the volume once (see infra/redis/redis.conf, why).
set -eu

: "${REDIS_PASSWORD:?REDIS_PASSWORD is not set}"
: "${REDIS_ANNOUNCE:?REDIS_ANNOUNCE is not set}"
conf=/data/redis.conf
if [ ! -f "$conf" ]; then
  cp /usr/local/etc/redis/redis.conf "$conf"
  if [ -n "${REDIS_REPLICA_OF:-}" ]; then
    echo "replicaof $REDIS_REPLICA_OF 6379" >> "$conf"
  fi
fi
# The password is expanded here, inside the container, never written by compose.
exec redis-server "$conf" \
  --requirepass "$REDIS_PASSWORD" \
  --masterauth "$REDIS_PASSWORD" \
  --replica-announce-ip "$REDIS_ANNOUNCE"
