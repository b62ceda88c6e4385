#!/usr/bin/env bash
# The one way to back up the Cartae database. Run it once a day, e.g. from cron at 00:00 UTC:
#   0 0 * * * cd /srv/cartae && infra/scripts/backup.sh >> /var/log/cartae-backup.log 2>&1
#
# BACKUP_METHOD=pgbackrest (the default): a pgBackRest base backup of the stanza `cartae`
# (infra/pgbackrest/pgbackrest.conf), full on BACKUP_WEEKLY_DAY and differential on the
# other days. With PostgreSQL archiving every WAL segment to the same repository
# (archive_command, archive_timeout 30 s), any moment since the oldest kept full backup
# can be restored: infra/scripts/restore.sh, docs/point-in-time-recovery.md. Retention
# (4 full, so 4 weeks of restore points) is pgBackRest's own (repo1-retention-*), applied
# after each backup. The stanza is created on the first run (later runs only check it).
# Run it against the primary: a standby takes no backup in this configuration.
#
# BACKUP_METHOD=dump: a logical pg_dump export instead, with daily / weekly / monthly
# retention (the seed's: keep 7 daily, 4 weekly, 12 monthly). It restores one table or
# one database, or into another PostgreSQL major version, but only to the moment it was
# taken (RPO one day): an export to keep beside pgBackRest, not a replacement for it.
# Each run writes a custom-format archive to BACKUP_ROOT/daily/; on BACKUP_WEEKLY_DAY it
# also keeps a copy in weekly/, on the first day of the month in monthly/ (hard links: no
# extra space). Then each folder is pruned to its newest N archives. The archive is
# written under a temporary name and renamed only once pg_dump succeeded and pg_restore
# can read it, so a failed run never leaves a truncated file among the good ones.
#   Restore:  pg_restore --clean --if-exists -d "$DATABASE_URL" BACKUP_ROOT/daily/cartae-....dump
#
# Settings (environment variables):
#   BACKUP_METHOD        pgbackrest (default) or dump
#   BACKUP_SOURCE        compose (default): the command runs inside the PostgreSQL service's
#                        container (BACKUP_SERVICE); direct: on this host (pgbackrest as
#                        the postgres user; pg_dump connecting with DATABASE_URL or the
#                        usual PGHOST/PGPORT/PGUSER/PGPASSWORD/PGDATABASE)
#   BACKUP_SERVICE       compose service to run in (default: whichever of pg-1 and pg-2
#                        is the primary now: pgBackRest backs up from the primary, and
#                        Patroni may have moved it since the last run)
#   BACKUP_WEEKLY_DAY    day of week for full backups and weekly copies, 1 = Monday ..
#                        7 = Sunday (default 7)
#   BACKUP_TYPE          pgbackrest: full, diff or incr, instead of the weekly rule
#   PGBACKREST_STANZA    pgbackrest: default cartae (PGBACKREST_* variables reach pgBackRest)
#   BACKUP_ROOT          dump: where archives go (default: ./backups)
#   KEEP_DAILY           dump: default 7
#   KEEP_WEEKLY          dump: default 4
#   KEEP_MONTHLY         dump: default 12
#   POSTGRES_DB, POSTGRES_USER   dump, compose: database and role (defaults cartae, cartae_user)
#   COMPOSE_FILE         default: docker-compose.ha.yml at the repository root
#   COMPOSE_ENV_FILE     default: .env beside the compose file, when present
#   BACKUP_DATE          override "today" as YYYY-MM-DD (tests, back-fills)

set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$SCRIPT_DIR/../.." && pwd)"

BACKUP_METHOD="${BACKUP_METHOD:-pgbackrest}"
BACKUP_SOURCE="${BACKUP_SOURCE:-compose}"
BACKUP_SERVICE="${BACKUP_SERVICE:-}"
BACKUP_TYPE="${BACKUP_TYPE:-}"
PGBACKREST_STANZA="${PGBACKREST_STANZA:-cartae}"
BACKUP_ROOT="${BACKUP_ROOT:-./backups}"
KEEP_DAILY="${KEEP_DAILY:-7}"
KEEP_WEEKLY="${KEEP_WEEKLY:-4}"
KEEP_MONTHLY="${KEEP_MONTHLY:-12}"
BACKUP_WEEKLY_DAY="${BACKUP_WEEKLY_DAY:-7}"
POSTGRES_DB="${POSTGRES_DB:-cartae}"
POSTGRES_USER="${POSTGRES_USER:-cartae_user}"
COMPOSE_FILE="${COMPOSE_FILE:-$REPO_ROOT/docker-compose.ha.yml}"
COMPOSE_ENV_FILE="${COMPOSE_ENV_FILE:-}"
BACKUP_DATE="${BACKUP_DATE:-$(date +%Y-%m-%d)}"
TMP_FILE=""

log() { printf '%s  %s\n' "$(date +%H:%M:%S)" "$*"; }
die() {
  printf '%s  [FAIL] %s\n' "$(date +%H:%M:%S)" "$*" >&2
  exit 1
}

for v in KEEP_DAILY KEEP_WEEKLY KEEP_MONTHLY BACKUP_WEEKLY_DAY; do
  [[ "${!v}" =~ ^[0-9]+$ ]] || die "$v must be a whole number, not '${!v}'"
done
[[ "$BACKUP_DATE" =~ ^[0-9]{4}-[0-9]{2}-[0-9]{2}$ ]] || die "BACKUP_DATE must be YYYY-MM-DD"

compose() {
  local args=(-f "$COMPOSE_FILE")
  if [[ -z "$COMPOSE_ENV_FILE" && -f "$(dirname "$COMPOSE_FILE")/.env" ]]; then
    COMPOSE_ENV_FILE="$(dirname "$COMPOSE_FILE")/.env"
  fi
  [[ -n "$COMPOSE_ENV_FILE" ]] && args+=(--env-file "$COMPOSE_ENV_FILE")
  docker compose "${args[@]}" "$@"
}

# The compose service to run in: BACKUP_SERVICE, or the PostgreSQL node that is primary.
primary_service() {
  if [[ -n "$BACKUP_SERVICE" ]]; then
    printf '%s\n' "$BACKUP_SERVICE"
    return
  fi
  local svc
  for svc in pg-1 pg-2; do
    if [[ "$(compose exec -T -u postgres "$svc" psql -tAc 'SELECT pg_is_in_recovery()' 2>/dev/null)" == f* ]]; then
      printf '%s\n' "$svc"
      return
    fi
  done
  die "no primary among pg-1 and pg-2 (is the stack up? set BACKUP_SERVICE to choose)"
}

# Writes the custom-format dump to stdout.
dump() {
  case "$BACKUP_SOURCE" in
    compose)
      compose exec -T "$(primary_service)" pg_dump -U "$POSTGRES_USER" -d "$POSTGRES_DB" -Fc
      ;;
    direct)
      if [[ -n "${DATABASE_URL:-}" ]]; then
        pg_dump -Fc -d "$DATABASE_URL"
      else
        pg_dump -Fc
      fi
      ;;
    *)
      die "BACKUP_SOURCE must be compose or direct, not '$BACKUP_SOURCE'"
      ;;
  esac
}

# Keeps the newest $2 archives of folder $1 (names sort by date).
prune() {
  local dir="$1" keep="$2" f
  local -a files=()
  while IFS= read -r f; do
    files+=("$f")
  done < <(find "$dir" -maxdepth 1 -type f -name 'cartae-*.dump' | sort -r)
  local i
  for (( i = keep; i < ${#files[@]}; i++ )); do
    log "prune: ${files[$i]}"
    rm -f -- "${files[$i]}"
  done
}

# pgbackrest ARGS...: in the PostgreSQL container (as its postgres user), or here.
pgbackrest_run() {
  case "$BACKUP_SOURCE" in
    compose) compose exec -T -u postgres "$(primary_service)" pgbackrest "$@" ;;
    direct) pgbackrest "$@" ;;
    *) die "BACKUP_SOURCE must be compose or direct, not '$BACKUP_SOURCE'" ;;
  esac
}

# Full on the weekly day, differential otherwise (pgBackRest itself makes the first
# backup of a stanza full).
backup_type() {
  if [[ -n "$BACKUP_TYPE" ]]; then
    printf '%s\n' "$BACKUP_TYPE"
  elif [[ "$(date -d "$BACKUP_DATE" +%u)" -eq "$BACKUP_WEEKLY_DAY" ]]; then
    printf 'full\n'
  else
    printf 'diff\n'
  fi
}

physical_backup() {
  local type
  type="$(backup_type)"
  [[ "$type" =~ ^(full|diff|incr)$ ]] || die "BACKUP_TYPE must be full, diff or incr, not '$type'"
  # Idempotent: creates the stanza on the first run, checks it matches on later ones.
  pgbackrest_run --stanza="$PGBACKREST_STANZA" stanza-create || die "pgbackrest stanza-create failed"
  log "pgbackrest $type backup of stanza $PGBACKREST_STANZA ($BACKUP_SOURCE)"
  pgbackrest_run --stanza="$PGBACKREST_STANZA" --type="$type" backup || die "pgbackrest backup failed"
  log "done; retention is pgBackRest's (repo1-retention-*): pgbackrest --stanza=$PGBACKREST_STANZA info"
}

logical_backup() {
  local stamp dow dom name daily
  stamp="${BACKUP_DATE//-/}-$(date +%H%M%S)"
  dow="$(date -d "$BACKUP_DATE" +%u)"
  dom="$(date -d "$BACKUP_DATE" +%d)"
  name="cartae-$stamp.dump"

  umask 077
  mkdir -p "$BACKUP_ROOT/daily" "$BACKUP_ROOT/weekly" "$BACKUP_ROOT/monthly"
  daily="$BACKUP_ROOT/daily/$name"
  TMP_FILE="$daily.partial"
  trap 'rm -f -- "$TMP_FILE"' EXIT

  log "pg_dump ($BACKUP_SOURCE) -> $daily"
  dump > "$TMP_FILE" || die "pg_dump failed"
  [[ -s "$TMP_FILE" ]] || die "pg_dump wrote nothing"
  if command -v pg_restore >/dev/null 2>&1; then
    pg_restore --list "$TMP_FILE" >/dev/null || die "archive is not readable by pg_restore"
  fi
  mv -- "$TMP_FILE" "$daily"
  log "daily backup: $daily ($(du -h "$daily" | cut -f1))"

  if [[ "$dow" -eq "$BACKUP_WEEKLY_DAY" ]]; then
    ln -f "$daily" "$BACKUP_ROOT/weekly/$name" 2>/dev/null || cp -- "$daily" "$BACKUP_ROOT/weekly/$name"
    log "weekly copy: $BACKUP_ROOT/weekly/$name"
  fi
  if [[ "$dom" == "01" ]]; then
    ln -f "$daily" "$BACKUP_ROOT/monthly/$name" 2>/dev/null || cp -- "$daily" "$BACKUP_ROOT/monthly/$name"
    log "monthly copy: $BACKUP_ROOT/monthly/$name"
  fi

  prune "$BACKUP_ROOT/daily" "$KEEP_DAILY"
  prune "$BACKUP_ROOT/weekly" "$KEEP_WEEKLY"
  prune "$BACKUP_ROOT/monthly" "$KEEP_MONTHLY"
  log "done (keeping $KEEP_DAILY daily, $KEEP_WEEKLY weekly, $KEEP_MONTHLY monthly)"
}

main() {
  case "$BACKUP_METHOD" in
    pgbackrest) physical_backup ;;
    dump) logical_backup ;;
    *) die "BACKUP_METHOD must be pgbackrest or dump, not '$BACKUP_METHOD'" ;;
  esac
}

main "$@"
