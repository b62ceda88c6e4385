#!/bin/sh
# Starts a Sentinel of docker-compose.ha.yml. Environment:
#   REDIS_PASSWORD           the Redis nodes' password (auth-pass of the master set)
#   REDIS_SENTINEL_PASSWORD  the sentinels' own password: clients and the other
#                            sentinels authenticate with it
#   SENTINEL_ANNOUNCE        this sentinel's address, announced to the others
#   REDIS_MASTER_ADDRESS     the first master's address, in place of the monitor line's
#                            redis-1
# The configuration is copied into the volume once (see infra/redis/sentinel.conf, why):
# to change a password afterwards, use SENTINEL SET / CONFIG SET, or remove the volume.
# REDIS_CONF_DIR, REDIS_DATA_DIR and further arguments: as in start-redis.sh.
set -eu

: "${REDIS_PASSWORD:?REDIS_PASSWORD is not set}"
: "${REDIS_SENTINEL_PASSWORD:?REDIS_SENTINEL_PASSWORD is not set}"
: "${SENTINEL_ANNOUNCE:?SENTINEL_ANNOUNCE is not set}"
conf="${REDIS_DATA_DIR:-/data}"/sentinel.conf
if [ ! -f "$conf" ]; then
  umask 077
  {
    sed "s/^sentinel monitor cartae redis-1 /sentinel monitor cartae ${REDIS_MASTER_ADDRESS:-redis-1} /" \
      "${REDIS_CONF_DIR:-/usr/local/etc/redis}"/sentinel.conf
    printf 'sentinel announce-ip "%s"\n' "$SENTINEL_ANNOUNCE"
    printf 'sentinel auth-pass cartae "%s"\n' "$REDIS_PASSWORD"
    printf 'requirepass "%s"\n' "$REDIS_SENTINEL_PASSWORD"
    printf 'sentinel sentinel-pass "%s"\n' "$REDIS_SENTINEL_PASSWORD"
  } > "$conf"
fi
exec redis-server "$conf" --sentinel "$@"
