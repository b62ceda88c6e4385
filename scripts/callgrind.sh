#!/usr/bin/env bash
# Instructions per request of one path, counted by callgrind: unlike throughput, the
# figure does not move with the neighbours' load, so before/after comparisons hold on a
# shared machine. See BENCHMARKS.md ("Making it fast").
#
#   scripts/callgrind.sh BINARY live|hit|miss|floor [SECONDS]
#
# BINARY is a release build of the service; for `floor` it is the harness's
# `floor-server`, answering GET /live with the service's bytes. `live` is GET /live; `hit` an authenticated GET /api/items/{id} from
# the cache; `miss` the same read with CACHE_ITEM_TTL_MS=1, so every read goes to
# PostgreSQL. Counts are zeroed after start-up and a warm-up, then taken over a wrk run
# of 4 connections: whole process, minus what the same span costs without requests.
# Timeouts are raised: under valgrind every call is tens of times slower, and a timed-out
# Redis call would send the reads measured down the fallback path.
# Needs PostgreSQL on 127.0.0.1:5432, Redis on 127.0.0.1:6379, valgrind, wrk, curl, jq.
set -euo pipefail

bin=$(realpath "$1")
what=${2:-live}
secs=${3:-8}
dir=$(mktemp -d)
db="callgrind_$(date +%s)_$$"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
port=$(free_port)
base="http://127.0.0.1:$port"
psql -q -h 127.0.0.1 -U postgres -c "CREATE DATABASE $db" >/dev/null

ttl=30000
[ "$what" = miss ] && ttl=1
command=("$bin" serve)
[ "$what" = floor ] && command=("$bin" "$port" \
    '{"status":"alive","instanceId":"callgrind","uptimeSeconds":12,"timestamp":"2026-11-28T06:00:00.000000Z"}')
env -i PATH="$PATH" HOST=127.0.0.1 PORT="$port" METRICS_PORT="$(free_port)" INSTANCE_ID=callgrind \
    DATABASE_URL="postgres://postgres@127.0.0.1:5432/$db" REDIS_URL="redis://127.0.0.1:6379" \
    CACHE_KEY_PREFIX="callgrind:$db:" JWT_SECRET="$(openssl rand -base64 48)" \
    LOG_LEVEL=info LOG_FORMAT=json PASSWORD_HASH_MEMORY_KIB=64 PASSWORD_HASH_ITERATIONS=1 \
    CACHE_ITEM_TTL_MS="$ttl" DRAIN_DELAY_MS=0 REDIS_TIMEOUT_MS=10000 REQUEST_TIMEOUT_MS=30000 \
    QUEUE_TIMEOUT_MS=10000 POSTGRES_ACQUIRE_TIMEOUT_MS=10000 \
    valgrind -q --tool=callgrind --callgrind-out-file="$dir/cg.out" "${command[@]}" \
    >"$dir/server.log" 2>&1 &
pid=$!
# callgrind_control finds the process by files that valgrind names after $HOST, which the
# service's own HOST setting overrides: hence HOST=127.0.0.1 below.
cleanup() {
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    psql -q -h 127.0.0.1 -U postgres -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null || true
    [ -n "${KEEP:-}" ] || rm -rf "$dir"
}
trap cleanup EXIT

probe="$base/ready"
[ "$what" = floor ] && probe="$base/live"
for _ in $(seq 600); do
    curl -fs "$probe" >/dev/null 2>&1 && break
    sleep 0.2
done
curl -fs "$probe" >/dev/null || { cat "$dir/server.log"; exit 1; }

url="$base/live"
header=()
if [ "$what" = hit ] || [ "$what" = miss ]; then
    creds='{"email":"cg@example.com","password":"callgrind-password-0123"}'
    curl -fs -H 'content-type: application/json' -d "$creds" "$base/api/auth/register" >/dev/null
    token=$(curl -fs -H 'content-type: application/json' -d "$creds" "$base/api/auth/login" | jq -r .token)
    header=(-H "Authorization: Bearer $token")
    id=$(curl -fs "${header[@]}" -H 'content-type: application/json' \
        -d '{"type":"note","title":"callgrind","content":"profiled","tags":["cg"]}' \
        "$base/api/items" | jq -r .id)
    url="$base/api/items/$id"
    curl -fs "${header[@]}" "$url" >/dev/null
fi

# Instructions counted while the command given runs, from zeroed counters.
counted() {
    HOST=127.0.0.1 callgrind_control -z "$pid" >/dev/null 2>&1
    "$@"
    HOST=127.0.0.1 callgrind_control -d "$pid" >/dev/null 2>&1
    awk '/^(summary|totals):/ {print $2; exit}' "$(find "$dir" -maxdepth 1 -name 'cg.out.*' | sort -V | tail -1)"
}
load() { wrk -t1 -c4 -d"${secs}s" "${header[@]}" "$url" >"$dir/wrk.txt"; }
wrk -t1 -c4 -d2s "${header[@]}" "$url" >/dev/null
# The background (health rounds, pool upkeep) over the same span, without requests.
idle=$(counted sleep "$secs")
total=$(counted load)
requests=$(awk '/requests in/ {print $1}' "$dir/wrk.txt")
if grep -q 'Non-2xx' "$dir/wrk.txt"; then cat "$dir/wrk.txt"; exit 1; fi
echo "$what: $(((total - idle) / requests)) instructions per request" \
    "($requests requests, $total instructions, $idle idle over the same span)"
