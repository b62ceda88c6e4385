#!/usr/bin/env bash
# Point-in-time recovery of the Cartae database from its pgBackRest repository.
#
#   infra/scripts/restore.sh --target '2026-11-28 09:41:07+00' --pgdata /srv/pg/restored \
#       [--port 5433] [--socket-dir DIR] [--listen ADDRESSES] [--no-archive] [--wait SECONDS]
#
# 1. restores the newest backup taken before TARGET into PGDATA, a fresh directory (absent
#    or empty: a restore never overwrites a data directory);
# 2. starts PostgreSQL on it. It replays the archived WAL up to TARGET, inclusive: every
#    transaction committed at or before TARGET is there, none committed after it. Then it
#    promotes itself (a new timeline) and accepts writes;
# 3. waits until recovery has finished (`pg_is_in_recovery()` false), at most --wait
#    seconds, and leaves the server running.
# Then follow docs/point-in-time-recovery.md: point the service at the restored server
# and empty the cache (`cartae-database-api cache-bump`), whose entries are newer than
# the restored data.
#
# Run it as the operating-system user PostgreSQL runs as (usually `postgres`, e.g.
# `sudo -u postgres infra/scripts/restore.sh ...`), on a host where pgBackRest reaches
# the repository: /etc/pgbackrest/pgbackrest.conf (infra/pgbackrest/pgbackrest.conf), or
# PGBACKREST_CONFIG and any PGBACKREST_* variable, which override the file.
#
# Options
#   --target TIME       the moment to restore to, as PostgreSQL reads a timestamptz; give
#                       the time zone (e.g. '2026-11-28 09:41:07+00'). Required.
#   --pgdata DIR        the new data directory. Required.
#   --port N            the port to start PostgreSQL on (default 5432)
#   --socket-dir DIR    where its Unix socket goes (default /var/run/postgresql)
#   --listen ADDRESSES  listen_addresses for the restored server (default: as backed up)
#   --no-archive        the restored server archives no WAL (archive_mode=off): for a
#                       restore drill or an inspection copy, which must not push a new
#                       timeline into the production repository. Leave it out when the
#                       restored server becomes the new primary.
#   --wait SECONDS      how long recovery may take (default 600)
#   --stanza NAME       default cartae
# Environment: PG_BIN, the PostgreSQL binaries (default: the newest under
# /usr/lib/postgresql); PGUSER, the role to check recovery with (default postgres).
#
# Exit status: 0 restored and running, 1 the restore or the recovery failed, 64 usage.

set -euo pipefail

TARGET=""
PGDATA_DIR=""
PORT=5432
SOCKET_DIR=/var/run/postgresql
LISTEN=""
NO_ARCHIVE=0
WAIT=600
STANZA=cartae

log() { printf '%s  %s\n' "$(date +%H:%M:%S)" "$*"; }
die() {
  printf '%s  [FAIL] %s\n' "$(date +%H:%M:%S)" "$*" >&2
  exit 1
}
# usage [MESSAGE]: the whole help, or MESSAGE and the synopsis.
usage() {
  if [[ -z "${1:-}" ]]; then
    sed -n '2,/^$/{s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}" >&2
  else
    printf 'restore.sh: %s\nusage: %s --target TIME --pgdata DIR [--port N] [--socket-dir DIR] [--listen ADDRESSES] [--no-archive] [--wait SECONDS] (--help for more)\n' "$1" "$0" >&2
  fi
  exit 64
}

parse_args() {
  while [[ $# -gt 0 ]]; do
    case "$1" in
      --target | --pgdata | --port | --socket-dir | --listen | --wait | --stanza)
        [[ $# -ge 2 ]] || usage "$1 needs a value"
        case "$1" in
          --target) TARGET="$2" ;;
          --pgdata) PGDATA_DIR="$2" ;;
          --port) PORT="$2" ;;
          --socket-dir) SOCKET_DIR="$2" ;;
          --listen) LISTEN="$2" ;;
          --wait) WAIT="$2" ;;
          --stanza) STANZA="$2" ;;
        esac
        shift 2
        ;;
      --no-archive) NO_ARCHIVE=1; shift ;;
      -h | --help) usage ;;
      *) usage "unknown argument '$1'" ;;
    esac
  done
  [[ -n "$TARGET" ]] || usage "--target is required"
  [[ -n "$PGDATA_DIR" ]] || usage "--pgdata is required"
  [[ "$PORT" =~ ^[0-9]+$ && "$PORT" -ge 1 && "$PORT" -le 65535 ]] \
    || usage "--port must be a port number, not '$PORT'"
  [[ "$WAIT" =~ ^[0-9]+$ && "$WAIT" -ge 1 ]] || usage "--wait must be a number of seconds, not '$WAIT'"
  # pg_ctl hands its options to a shell: a quote in a path would break them.
  [[ "$PGDATA_DIR$SOCKET_DIR$LISTEN" != *"'"* ]] || usage "paths and addresses must not contain a quote"
}

check_target() {
  local target_epoch
  target_epoch="$(date -d "$TARGET" +%s 2>/dev/null)" \
    || usage "--target '$TARGET' is not a time (e.g. '2026-11-28 09:41:07+00')"
  [[ "$target_epoch" -le "$(date +%s)" ]] || usage "--target '$TARGET' is in the future"
}

pg_bin() {
  if [[ -n "${PG_BIN:-}" ]]; then
    printf '%s\n' "$PG_BIN"
    return
  fi
  local newest
  newest="$(find /usr/lib/postgresql -mindepth 1 -maxdepth 1 -printf '%f\n' 2>/dev/null | sort -n | tail -n 1)"
  [[ -n "$newest" ]] || die "no PostgreSQL under /usr/lib/postgresql: set PG_BIN"
  printf '/usr/lib/postgresql/%s/bin\n' "$newest"
}

preflight() {
  [[ "$(id -u)" -ne 0 ]] \
    || die "run as the PostgreSQL user, not root (e.g. sudo -u postgres $0 ...): PostgreSQL refuses to run as root"
  command -v pgbackrest >/dev/null || die "pgbackrest not found: apt-get install pgbackrest"
  BIN="$(pg_bin)"
  [[ -x "$BIN/pg_ctl" ]] || die "$BIN/pg_ctl not found: set PG_BIN to PostgreSQL's bin directory"
  if [[ -e "$PGDATA_DIR" ]]; then
    [[ -d "$PGDATA_DIR" ]] || die "$PGDATA_DIR exists and is not a directory"
    [[ -z "$(ls -A "$PGDATA_DIR")" ]] \
      || die "$PGDATA_DIR is not empty: restore into a fresh directory, never over a data directory"
  else
    mkdir -p "$PGDATA_DIR" || die "cannot create $PGDATA_DIR"
  fi
  chmod 700 "$PGDATA_DIR"
  PGDATA_DIR="$(cd "$PGDATA_DIR" && pwd)"
}

restore() {
  local -a args=(--stanza="$STANZA" --pg1-path="$PGDATA_DIR" --type=time --target="$TARGET"
    --target-action=promote)
  [[ "$NO_ARCHIVE" -eq 1 ]] && args+=(--archive-mode=off)
  log "pgbackrest restore of stanza $STANZA to $TARGET into $PGDATA_DIR"
  pgbackrest "${args[@]}" restore || die "pgbackrest restore failed (see its messages above)"
}

start() {
  local opts="-p $PORT -c unix_socket_directories='$SOCKET_DIR'"
  [[ -n "$LISTEN" ]] && opts+=" -c listen_addresses='$LISTEN'"
  SERVER_LOG="$PGDATA_DIR/restore-startup.log"
  log "starting PostgreSQL on port $PORT (log: $SERVER_LOG)"
  # -W: pg_ctl's own wait gives up after 60 s, and replaying a day of WAL takes longer;
  # wait_recovered waits instead, for recovery's end rather than the first connection.
  "$BIN/pg_ctl" -D "$PGDATA_DIR" -l "$SERVER_LOG" -o "$opts" -W start >/dev/null \
    || fail_with_log "PostgreSQL did not start"
}

fail_with_log() {
  tail -n 20 "$SERVER_LOG" >&2 2>/dev/null || true
  die "$1 (server log: $SERVER_LOG)"
}

# Recovery is over when the server answers and is no longer in recovery. A target the
# archive does not reach stops the server ("recovery ended before configured recovery
# target was reached"): it is caught as the server's exit.
wait_recovered() {
  local deadline=$((SECONDS + WAIT)) state
  while ((SECONDS < deadline)); do
    sleep 0.5
    "$BIN/pg_ctl" -D "$PGDATA_DIR" status >/dev/null 2>&1 \
      || fail_with_log "PostgreSQL stopped during recovery"
    state="$("$BIN/psql" -h "$SOCKET_DIR" -p "$PORT" -U "${PGUSER:-postgres}" -d postgres \
      -XAtc 'SELECT pg_is_in_recovery()' 2>/dev/null || true)"
    if [[ "$state" == "f" ]]; then
      return 0
    fi
  done
  fail_with_log "recovery did not finish within ${WAIT}s; PostgreSQL is still running on port $PORT"
}

main() {
  parse_args "$@"
  check_target
  preflight
  restore
  start
  wait_recovered
  log "recovered to $TARGET and promoted: PostgreSQL on port $PORT, data in $PGDATA_DIR"
  log "next: point DATABASE_URL at it, then run 'cartae-database-api cache-bump' (docs/point-in-time-recovery.md)"
}

main "$@"
