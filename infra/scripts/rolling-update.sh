#!/usr/bin/env bash
# Rolling update of the Cartae database API replicas, one at a time, with automatic
# rollback: the seed's procedure, made safe by the service's own drain on SIGTERM.
#
#   infra/scripts/rolling-update.sh [TARGET]            update every replica to TARGET
#   RUNTIME=process infra/scripts/rolling-update.sh --bootstrap TARGET
#                                                       (process runtime) start missing
#                                                       instances at TARGET, wait ready
#
# First the migration step: TARGET's `cartae-database-api migrate`, once, before any
# replica is replaced (its migrations are additive, so the replicas still on the old
# version keep working; see docs/deployment.md). If it fails, the script stops there
# with status 1: nothing was replaced, nothing needs rolling back.
#
# Then for each replica in turn:
#   1. replace it. Process runtime: stop the old one (SIGTERM: it answers /ready 503 and
#      keeps serving for DRAIN_DELAY_MS, so the load balancer takes it out first, then
#      finishes in-flight requests and exits), start TARGET in its place. Compose runtime:
#      start one more replica at TARGET beside it (the scaled service grows by one);
#   2. wait until the new one's /ready answers 200, at most WAIT_MAX seconds;
#   3. compose: retire the old one (`docker stop`: the same drain, then it is removed),
#      so the service never has fewer than N ready replicas;
#   4. pause PAUSE seconds so the load balancer's health check takes it back in;
#   5. if it never became ready: roll back, i.e. put the previous version back on this
#      replica and on every replica already updated (newest first), and exit 1. Compose:
#      the replica that never became ready is removed (the old one still serves); each
#      updated one is replaced again, by a new replica at its previous image.
# Before starting: preflight checks, and a backup of the current state in BACKUP_DIR.
#
# Exit status: 0 updated, 1 failed and rolled back (or the migration step failed, and
# nothing was replaced), 2 failed and the rollback failed too (manual action needed),
# 64 usage or preflight error.
#
# ---------------------------------------------------------------------------------------
# Settings (environment variables)
#   RUNTIME        compose (default) or process
#   INSTANCES      names of the replicas, in update order (process runtime; compose:
#                  the ids of the service's running containers, found by the script)
#   WAIT_MAX       seconds to wait for /ready after a start (default 60)
#   PAUSE          seconds between two replicas. Default derived from the balancer's
#                  active check, so that it has taken the new replica back in before the
#                  next one drains (two replicas are never out together):
#                    LB_RISE x LB_CHECK_INTERVAL + LB_CHECK_TIMEOUT + 1 s margin
#                  the first check after /ready turns 200 may come a whole interval later,
#                  and each of the LB_RISE checks may take up to the timeout.
#   LB_CHECK_INTERVAL, LB_CHECK_TIMEOUT, LB_RISE
#                  the balancer's check, in seconds (default 1, 3, 1: Traefik in
#                  infra/traefik/dynamic/load-balancer.yml; HAProxy's haproxy.cfg is
#                  5, 3, 2, so PAUSE 14)
#   POLL_INTERVAL  seconds between two /ready polls (default 2)
#   STOP_TIMEOUT   seconds to wait for a stopped replica to exit before SIGKILL (process
#                  runtime; compose uses the service's stop_grace_period). Default
#                  derived from the service's worst stop: DRAIN_DELAY_MS +
#                  SHUTDOWN_TIMEOUT_MS (default 15 s + 10 s) + 12 s (background tasks 5 s,
#                  metrics server 2 s, pool close 5 s: the service's own bounds) + 8 s
#                  margin = 45 s, as stop_grace_period and terminationGracePeriodSeconds
#   MIGRATE        1 (default): run the migration step first; 0: skip it (the replicas
#                  migrate on start, MIGRATE_ON_START)
#   BACKUP_DIR     where the current state is saved (default /tmp/cartae-rollback-<stamp>)
#   REQUIRE_ALL_READY  1 (default): refuse to start unless every replica is ready now
#
# Runtime "compose" (default): TARGET is an image reference
# (default cartae-database-api:latest).
#   COMPOSE_FILE      default: docker-compose.ha.yml at the repository root
#   COMPOSE_ENV_FILE  default: .env beside the compose file, when present
#   COMPOSE_PROJECT   compose project name (default: the file's `name:`, cartae-ha)
#   COMPOSE_SERVICE   the scaled service (default database-api)
#   The migration step is `docker compose run --rm --no-deps migrate` with
#   CARTAE_API_IMAGE=TARGET (the compose file's one-shot `migrate` service).
#   Each replica is replaced by a new one started with `docker compose up -d --no-deps
#   --no-recreate --scale SERVICE=<count + 1>` and CARTAE_API_IMAGE=TARGET, whatever the
#   replica count (`--scale` works as before, and so does this); readiness is Docker's
#   health status `healthy` (the image's HEALTHCHECK asks /ready; Traefik's Docker
#   provider routes to a container only once it is healthy); the old one is then
#   stopped (it drains within its stop_grace_period) and removed. The previous image is
#   pinned by tagging its image id as cartae-database-api:rollback-<stamp>-<id>, so a moved
#   tag cannot break the rollback. Afterwards set CARTAE_API_IMAGE=TARGET in .env, or a
#   later `up -d` reverts.
#
# Runtime "process": plain processes on this host (used by the HA tests on loopback).
#   TARGET is an opaque "version" string handed to PROCESS_START_CMD (e.g. the path of a
#   binary). Contract:
#   STATE_DIR          required, existing directory. Per instance NAME the script keeps
#                        NAME.pid      pid of the running instance (a process-group leader
#                                      when this script started it)
#                        NAME.version  the version it runs
#                        NAME.log      its stdout and stderr (appended)
#                      Instances started by someone else must have NAME.pid written; their
#                      NAME.version, or PREVIOUS_VERSION, says what to roll back to.
#   PROCESS_START_CMD  required. A bash command run with `setsid bash -c`, detached, in
#                      the background, stdin from /dev/null, output to NAME.log, with
#                        INSTANCE        the instance name
#                        INSTANCE_INDEX  its 1-based position in INSTANCES
#                        VERSION         the version to start
#                        STATE_DIR       as above
#                      exported, plus this script's environment. It must run the service
#                      in the foreground and should `exec` it, e.g.
#                        PORT=$((3100+INSTANCE_INDEX)) METRICS_PORT=$((9100+INSTANCE_INDEX))
#                        INSTANCE_ID=$INSTANCE exec "$VERSION" serve
#   READY_URLS         required. One /ready URL per instance, space-separated, in the
#                      order of INSTANCES, e.g. "http://127.0.0.1:3101/ready ..."
#   PREVIOUS_VERSION   version to roll back to for instances without NAME.version
#   PROCESS_MIGRATE_CMD  the migration step: a bash command run in the foreground with
#                      VERSION exported, e.g. `exec "$VERSION" migrate`. Unset: no step
#                      (the replicas migrate on start).
#   Stopping sends SIGTERM to the instance's process group (its pid if it leads none),
#   waits up to STOP_TIMEOUT seconds for it to exit (the service drains itself), then
#   sends SIGKILL. Readiness is an HTTP 200 from the instance's READY_URL (curl).
# ---------------------------------------------------------------------------------------

set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$SCRIPT_DIR/../.." && pwd)"

RUNTIME="${RUNTIME:-compose}"
read -r -a INSTANCE_LIST <<< "${INSTANCES:-}"
WAIT_MAX="${WAIT_MAX:-60}"
LB_CHECK_INTERVAL="${LB_CHECK_INTERVAL:-1}"
LB_CHECK_TIMEOUT="${LB_CHECK_TIMEOUT:-3}"
LB_RISE="${LB_RISE:-1}"
PAUSE="${PAUSE:-}"
POLL_INTERVAL="${POLL_INTERVAL:-2}"
STOP_TIMEOUT="${STOP_TIMEOUT:-}"
MIGRATE="${MIGRATE:-1}"
REQUIRE_ALL_READY="${REQUIRE_ALL_READY:-1}"
STAMP="$(date +%Y%m%d-%H%M%S)"
BACKUP_DIR="${BACKUP_DIR:-/tmp/cartae-rollback-$STAMP}"

COMPOSE_FILE="${COMPOSE_FILE:-$REPO_ROOT/docker-compose.ha.yml}"
COMPOSE_ENV_FILE="${COMPOSE_ENV_FILE:-}"
COMPOSE_PROJECT="${COMPOSE_PROJECT:-}"
COMPOSE_SERVICE="${COMPOSE_SERVICE:-database-api}"
# Compose runtime, per replica (the id of the container it started as): the container
# that serves for it now, and the one started to replace it, until that one is ready.
declare -A SERVING=()
declare -A PENDING=()
ROLLBACK_IMAGE_REPO="${ROLLBACK_IMAGE_REPO:-cartae-database-api}"

STATE_DIR="${STATE_DIR:-}"
PROCESS_START_CMD="${PROCESS_START_CMD:-}"
read -r -a READY_URL_LIST <<< "${READY_URLS:-}"
PREVIOUS_VERSION="${PREVIOUS_VERSION:-}"
PROCESS_MIGRATE_CMD="${PROCESS_MIGRATE_CMD:-}"

BOOTSTRAP=0
TARGET=""

# ------------------------------------------------------------------------------ output
ts() { date +%H:%M:%S; }
log() { printf '%s  %s\n' "$(ts)" "$*"; }
step() { printf '\n%s  ==> %s\n' "$(ts)" "$*"; }
ok() { printf '%s  [ OK ] %s\n' "$(ts)" "$*"; }
warn() { printf '%s  [WARN] %s\n' "$(ts)" "$*" >&2; }
fail() { printf '%s  [FAIL] %s\n' "$(ts)" "$*" >&2; }
die() {
  fail "$*"
  exit 64
}

usage() {
  sed -n '2,32p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

is_uint() { [[ "$1" =~ ^[0-9]+$ ]]; }

# ------------------------------------------------------------------ compose runtime
compose() {
  local args=(-f "$COMPOSE_FILE")
  [[ -n "$COMPOSE_ENV_FILE" ]] && args+=(--env-file "$COMPOSE_ENV_FILE")
  [[ -n "$COMPOSE_PROJECT" ]] && args+=(-p "$COMPOSE_PROJECT")
  docker compose "${args[@]}" "$@"
}

# The ids of the service's running containers, one a line.
compose_containers() {
  compose ps -q "$COMPOSE_SERVICE" 2>/dev/null
}

compose_preflight() {
  command -v docker >/dev/null 2>&1 || die "docker not found"
  docker info >/dev/null 2>&1 || die "Docker engine not reachable (docker info failed)"
  docker compose version >/dev/null 2>&1 || die "docker compose v2 not available"
  [[ -f "$COMPOSE_FILE" ]] || die "compose file not found: $COMPOSE_FILE"
  if [[ -z "$COMPOSE_ENV_FILE" && -f "$(dirname "$COMPOSE_FILE")/.env" ]]; then
    COMPOSE_ENV_FILE="$(dirname "$COMPOSE_FILE")/.env"
  fi
  # Validates the file and that every required secret (${VAR:?}) is set.
  compose config -q || die "docker compose config failed (missing secrets in .env?)"
  docker image inspect "$TARGET" >/dev/null 2>&1 \
    || die "image $TARGET not found locally (docker build -t $TARGET . or docker pull)"
  # The replicas are the service's containers, however many it is scaled to.
  read -r -a INSTANCE_LIST <<< "$(compose_containers | tr '\n' ' ')"
  [[ "${#INSTANCE_LIST[@]}" -gt 0 ]] || die "service $COMPOSE_SERVICE has no container (run up -d first)"
  local name
  for name in "${INSTANCE_LIST[@]}"; do
    SERVING[$name]="$name"
  done
}

compose_backup() {
  local name
  for name in "${INSTANCE_LIST[@]}"; do
    docker inspect "$name" > "$BACKUP_DIR/$name.inspect.json"
  done
  compose config > "$BACKUP_DIR/compose.resolved.yml"
}

# Pins the image a replica runs now under a rollback tag and prints that tag.
compose_current_version() {
  local name="$1" image_id tag
  image_id="$(docker inspect --format '{{.Image}}' "${SERVING[$name]}")" || return 1
  tag="$ROLLBACK_IMAGE_REPO:rollback-$STAMP-${name:0:12}"
  docker tag "$image_id" "$tag" >/dev/null
  printf '%s\n' "$tag"
}

# Starts one more replica of the service at `version`, beside the one it replaces.
compose_replace() {
  local name="$1" version="$2" before count new
  before="$(compose_containers | sort)"
  count="$(grep -c . <<< "$before")"
  CARTAE_API_IMAGE="$version" compose up -d --no-deps --no-build --pull never \
    --no-recreate --scale "$COMPOSE_SERVICE=$((count + 1))" "$COMPOSE_SERVICE" || return 1
  new="$(comm -13 <(printf '%s\n' "$before") <(compose_containers | sort) | head -n 1)"
  [[ -n "$new" ]] || { fail "$name: no new container appeared"; return 1; }
  PENDING[$name]="$new"
  log "$name: new replica ${new:0:12} started at $version"
}

# The new replica is ready: the old one drains (SIGTERM, stop_grace_period) and goes.
compose_retire() {
  local name="$1" old="${SERVING[$1]}"
  log "$name: stopping ${old:0:12} (drains, then exits)"
  docker stop "$old" >/dev/null && docker rm "$old" >/dev/null || return 1
  SERVING[$name]="${PENDING[$name]}"
  unset "PENDING[$name]"
}

# A replacement that never became ready is removed; the replica it was to replace still
# serves, untouched. Fails when there was none (the replica must be replaced again).
compose_abandon() {
  local name="$1" new="${PENDING[$1]:-}"
  [[ -n "$new" ]] || return 1
  log "$name: removing ${new:0:12}, which never became ready"
  docker rm -f "$new" >/dev/null || return 1
  unset "PENDING[$name]"
}

compose_migrate() {
  CARTAE_API_IMAGE="$TARGET" compose run --rm --no-deps migrate
}

# Docker's own health status, not /ready asked from inside: Traefik's Docker provider routes
# to a container only once Docker marks it healthy (up to one healthcheck interval after
# /ready turns 200), so retiring the old replica any sooner would leave fewer routed.
compose_is_ready() {
  local name="$1"
  [[ "$(docker inspect --format '{{if .State.Health}}{{.State.Health.Status}}{{end}}' \
    "${PENDING[$name]:-${SERVING[$name]}}" 2>/dev/null)" == healthy ]]
}

# A container that exits is restarted by its restart policy: keep polling.
compose_still_running() { return 0; }

# ------------------------------------------------------------------ process runtime
instance_index() {
  local name="$1" i
  for i in "${!INSTANCE_LIST[@]}"; do
    if [[ "${INSTANCE_LIST[$i]}" == "$name" ]]; then
      printf '%s\n' "$((i + 1))"
      return 0
    fi
  done
  return 1
}

pid_alive() {
  local pid="$1" state
  kill -0 "$pid" 2>/dev/null || return 1
  # A zombie (exited, not yet reaped by its parent) counts as gone.
  if [[ -r "/proc/$pid/stat" ]]; then
    state="$(sed -E 's/^[0-9]+ \(.*\) ([A-Za-z]).*/\1/' "/proc/$pid/stat" 2>/dev/null || true)"
    [[ "$state" != "Z" ]] || return 1
  fi
  return 0
}

process_pid() {
  local f="$STATE_DIR/$1.pid"
  [[ -s "$f" ]] || return 1
  local pid
  pid="$(tr -dc '0-9' < "$f")"
  [[ -n "$pid" ]] || return 1
  printf '%s\n' "$pid"
}

process_preflight() {
  [[ -n "$STATE_DIR" ]] || die "RUNTIME=process needs STATE_DIR"
  [[ -d "$STATE_DIR" ]] || die "STATE_DIR does not exist: $STATE_DIR"
  [[ -n "$PROCESS_START_CMD" ]] || die "RUNTIME=process needs PROCESS_START_CMD"
  command -v curl >/dev/null 2>&1 || die "curl not found"
  command -v setsid >/dev/null 2>&1 || die "setsid not found (util-linux)"
  [[ "${#READY_URL_LIST[@]}" -eq "${#INSTANCE_LIST[@]}" ]] \
    || die "READY_URLS has ${#READY_URL_LIST[@]} entries for ${#INSTANCE_LIST[@]} instances"
  [[ -n "$TARGET" ]] || die "RUNTIME=process needs a TARGET version argument"
  if [[ "$BOOTSTRAP" -eq 0 ]]; then
    local name pid
    for name in "${INSTANCE_LIST[@]}"; do
      pid="$(process_pid "$name")" || die "$name: no pid file $STATE_DIR/$name.pid"
      pid_alive "$pid" || die "$name: pid $pid is not running"
      if [[ ! -s "$STATE_DIR/$name.version" && -z "$PREVIOUS_VERSION" ]]; then
        die "$name: no $STATE_DIR/$name.version and no PREVIOUS_VERSION: nothing to roll back to"
      fi
    done
  fi
}

process_backup() {
  local name
  for name in "${INSTANCE_LIST[@]}"; do
    [[ -f "$STATE_DIR/$name.pid" ]] && cp "$STATE_DIR/$name.pid" "$BACKUP_DIR/"
    [[ -f "$STATE_DIR/$name.version" ]] && cp "$STATE_DIR/$name.version" "$BACKUP_DIR/"
  done
  return 0
}

process_current_version() {
  local f="$STATE_DIR/$1.version"
  if [[ -s "$f" ]]; then
    head -n 1 "$f"
  elif [[ -n "$PREVIOUS_VERSION" ]]; then
    printf '%s\n' "$PREVIOUS_VERSION"
  else
    return 1
  fi
}

process_stop() {
  local name="$1" pid waited=0
  pid="$(process_pid "$name")" || return 0
  if ! pid_alive "$pid"; then
    rm -f "$STATE_DIR/$name.pid"
    return 0
  fi
  log "$name: SIGTERM to pid $pid (drains, then exits; up to ${STOP_TIMEOUT}s)"
  # The whole process group when the instance leads one (started by this script),
  # otherwise the process alone.
  kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
  while pid_alive "$pid"; do
    if (( waited >= STOP_TIMEOUT )); then
      warn "$name: still running after ${STOP_TIMEOUT}s, sending SIGKILL"
      kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
      sleep 1
      break
    fi
    sleep 1
    waited=$((waited + 1))
  done
  rm -f "$STATE_DIR/$name.pid"
  log "$name: stopped after ${waited}s"
}

process_start() {
  local name="$1" version="$2" index pid
  index="$(instance_index "$name")" || { fail "unknown instance $name"; return 1; }
  # setsid makes the instance lead its own process group, so a stop reaches the whole
  # group even if PROCESS_START_CMD does not exec.
  INSTANCE="$name" INSTANCE_INDEX="$index" VERSION="$version" STATE_DIR="$STATE_DIR" \
    setsid bash -c "$PROCESS_START_CMD" < /dev/null >> "$STATE_DIR/$name.log" 2>&1 &
  pid=$!
  printf '%s\n' "$pid" > "$STATE_DIR/$name.pid"
  printf '%s\n' "$version" > "$STATE_DIR/$name.version"
  log "$name: started version $version as pid $pid (log: $STATE_DIR/$name.log)"
}

process_replace() {
  local name="$1" version="$2"
  process_stop "$name"
  process_start "$name" "$version"
}

# The process runtime replaces in place: nothing is left to retire or to abandon.
process_retire() { return 0; }
process_abandon() { return 1; }

process_still_running() {
  local pid
  pid="$(process_pid "$1")" && pid_alive "$pid"
}

process_migrate() {
  if [[ -z "$PROCESS_MIGRATE_CMD" ]]; then
    log "no PROCESS_MIGRATE_CMD: the replicas migrate on start"
    return 0
  fi
  VERSION="$TARGET" bash -c "$PROCESS_MIGRATE_CMD" < /dev/null
}

process_is_ready() {
  local name="$1" index url
  index="$(instance_index "$name")" || return 1
  url="${READY_URL_LIST[$((index - 1))]}"
  curl -fsS -o /dev/null --max-time "$POLL_INTERVAL" "$url" 2>/dev/null
}

# ---------------------------------------------------------------- runtime dispatch
preflight() { "${RUNTIME}_preflight"; }
backup_state() { "${RUNTIME}_backup"; }
current_version() { "${RUNTIME}_current_version" "$1"; }
replace_instance() { "${RUNTIME}_replace" "$1" "$2"; }
retire_instance() { "${RUNTIME}_retire" "$1"; }
abandon_instance() { "${RUNTIME}_abandon" "$1"; }
is_ready() { "${RUNTIME}_is_ready" "$1"; }
still_running() { "${RUNTIME}_still_running" "$1"; }
migrate() { "${RUNTIME}_migrate"; }

# Polls readiness every POLL_INTERVAL seconds, for at most WAIT_MAX seconds.
wait_ready() {
  local name="$1" start now elapsed
  start="$(date +%s)"
  log "$name: waiting for /ready (max ${WAIT_MAX}s)"
  while true; do
    if is_ready "$name"; then
      now="$(date +%s)"
      ok "$name is ready after $((now - start))s"
      return 0
    fi
    if ! still_running "$name"; then
      fail "$name exited before becoming ready"
      return 1
    fi
    now="$(date +%s)"
    elapsed=$((now - start))
    if (( elapsed >= WAIT_MAX )); then
      fail "$name did not become ready within ${WAIT_MAX}s"
      return 1
    fi
    sleep "$POLL_INTERVAL"
  done
}

# ------------------------------------------------------------------------- rollback
# Puts every touched replica back on its previous version, newest first.
# Arguments: pairs "name=version".
rollback() {
  local entry name version status=0 i
  step "Rolling back ${#} replica(s) to their previous version"
  for (( i = $#; i >= 1; i-- )); do
    entry="${!i}"
    name="${entry%%=*}"
    version="${entry#*=}"
    if abandon_instance "$name"; then
      ok "$name still runs its previous version"
      continue
    fi
    log "$name: restoring $version"
    if replace_instance "$name" "$version" && wait_ready "$name" && retire_instance "$name"; then
      ok "$name restored to $version"
    else
      fail "$name could not be restored to $version"
      status=1
    fi
  done
  return "$status"
}

# --------------------------------------------------------------------------- main
parse_args() {
  while [[ $# -gt 0 ]]; do
    case "$1" in
      -h|--help)
        usage
        exit 0
        ;;
      --bootstrap)
        BOOTSTRAP=1
        ;;
      -*)
        die "unknown option $1 (see --help)"
        ;;
      *)
        [[ -z "$TARGET" ]] || die "only one TARGET may be given"
        TARGET="$1"
        ;;
    esac
    shift
  done
  if [[ -z "$TARGET" && "$RUNTIME" == "compose" ]]; then
    TARGET="cartae-database-api:latest"
  fi
}

check_settings() {
  case "$RUNTIME" in
    compose|process) ;;
    *) die "RUNTIME must be compose or process, not '$RUNTIME'" ;;
  esac
  local v
  for v in LB_CHECK_INTERVAL LB_CHECK_TIMEOUT LB_RISE; do
    is_uint "${!v}" || die "$v must be a whole number of seconds, not '${!v}'"
  done
  local derived_pause=$((LB_RISE * LB_CHECK_INTERVAL + LB_CHECK_TIMEOUT + 1))
  PAUSE="${PAUSE:-$derived_pause}"
  STOP_TIMEOUT="${STOP_TIMEOUT:-$(derived_stop_timeout)}"
  for v in WAIT_MAX PAUSE POLL_INTERVAL STOP_TIMEOUT; do
    is_uint "${!v}" || die "$v must be a whole number of seconds, not '${!v}'"
  done
  (( POLL_INTERVAL > 0 )) || die "POLL_INTERVAL must be at least 1"
  if (( PAUSE < derived_pause )); then
    warn "PAUSE ${PAUSE}s is below the balancer's ${derived_pause}s (LB_RISE x LB_CHECK_INTERVAL + LB_CHECK_TIMEOUT + 1): two replicas may be out of rotation together"
  fi
  [[ "$MIGRATE" == "0" || "$MIGRATE" == "1" ]] || die "MIGRATE must be 0 or 1, not '$MIGRATE'"
  if [[ "$RUNTIME" == "process" && "${#INSTANCE_LIST[@]}" -eq 0 ]]; then
    die "INSTANCES is empty"
  fi
  if [[ "$BOOTSTRAP" -eq 1 && "$RUNTIME" != "process" ]]; then
    die "--bootstrap is for RUNTIME=process (compose: docker compose up -d)"
  fi
}

# The service's worst stop, in seconds: drain + shutdown timeout + its own bounds on
# background tasks (5 s), the metrics server (2 s) and the pool close (5 s), + 8 s margin.
derived_stop_timeout() {
  local drain_ms="${DRAIN_DELAY_MS:-15000}" shutdown_ms="${SHUTDOWN_TIMEOUT_MS:-10000}"
  is_uint "$drain_ms" || die "DRAIN_DELAY_MS must be a whole number, not '$drain_ms'"
  is_uint "$shutdown_ms" || die "SHUTDOWN_TIMEOUT_MS must be a whole number, not '$shutdown_ms'"
  printf '%s\n' "$(((drain_ms + shutdown_ms + 999) / 1000 + 12 + 8))"
}

bootstrap() {
  step "Bootstrap: starting instances at $TARGET"
  local name pid status=0
  for name in "${INSTANCE_LIST[@]}"; do
    if pid="$(process_pid "$name")" && pid_alive "$pid"; then
      log "$name: already running (pid $pid)"
    else
      process_start "$name" "$TARGET"
    fi
  done
  for name in "${INSTANCE_LIST[@]}"; do
    wait_ready "$name" || status=1
  done
  return "$status"
}

main() {
  parse_args "$@"
  check_settings

  printf '%s\n' "================================================================"
  log "Cartae rolling update: runtime=$RUNTIME target=${TARGET:-?}"
  log "wait max ${WAIT_MAX}s, pause ${PAUSE}s, poll every ${POLL_INTERVAL}s"
  printf '%s\n' "================================================================"

  step "Preflight checks"
  preflight
  local total="${#INSTANCE_LIST[@]}"
  log "$total replica(s): ${INSTANCE_LIST[*]}"
  if [[ "$BOOTSTRAP" -eq 1 ]]; then
    if bootstrap; then
      ok "all instances ready"
      exit 0
    fi
    fail "bootstrap: some instances did not become ready"
    exit 1
  fi
  local name
  for name in "${INSTANCE_LIST[@]}"; do
    if is_ready "$name"; then
      ok "$name is ready"
    elif [[ "$REQUIRE_ALL_READY" == "1" ]]; then
      die "$name is not ready: refusing to start a rolling update on a degraded fleet (REQUIRE_ALL_READY=0 to force)"
    else
      warn "$name is not ready (REQUIRE_ALL_READY=0: continuing)"
    fi
  done

  if [[ "$MIGRATE" == "1" ]]; then
    step "Migration step: $TARGET migrate"
    if ! migrate; then
      fail "Migration step FAILED: no replica was replaced; the fleet still runs its current version"
      exit 1
    fi
    ok "migrations applied"
  fi

  step "Backing up current state to $BACKUP_DIR"
  (umask 077 && mkdir -p "$BACKUP_DIR")
  backup_state
  ok "state saved"

  local -a touched=()
  local i=0 previous
  for name in "${INSTANCE_LIST[@]}"; do
    i=$((i + 1))
    previous="$(current_version "$name")" || {
      fail "$name: cannot determine its current version"
      exit 64
    }
    step "[$i/$total] Updating $name: $previous -> $TARGET"
    touched+=("$name=$previous")
    if replace_instance "$name" "$TARGET" && wait_ready "$name" && retire_instance "$name"; then
      ok "[$i/$total] $name updated"
    else
      fail "[$i/$total] $name failed to become ready on $TARGET"
      if rollback "${touched[@]}"; then
        fail "Rolling update FAILED; rolled back to the previous version"
        log "state backup: $BACKUP_DIR"
        exit 1
      fi
      fail "Rolling update FAILED and the rollback FAILED too: manual action needed"
      log "state backup: $BACKUP_DIR"
      exit 2
    fi
    if (( i < total && PAUSE > 0 )); then
      log "pausing ${PAUSE}s before the next replica"
      sleep "$PAUSE"
    fi
  done

  printf '\n%s\n' "================================================================"
  ok "Rolling update completed: ${total}/${total} replicas on $TARGET"
  if [[ "$RUNTIME" == "compose" ]]; then
    log "Set CARTAE_API_IMAGE=$TARGET in .env so that a later 'up -d' keeps it."
  fi
  printf '%s\n' "================================================================"
}

main "$@"
