#!/usr/bin/env bash
# PostgreSQL backup of the Cartae database with daily / weekly / monthly retention
# (the seed's strategy: keep 7 daily, 4 weekly, 12 monthly).
#
#   infra/scripts/backup.sh             one backup now, then prune
#
# Run it once a day, e.g. from cron at 00:00 UTC:
#   0 0 * * * cd /srv/cartae && infra/scripts/backup.sh >> /var/log/cartae-backup.log 2>&1
#
# Each run writes a pg_dump custom-format archive (compressed, restorable table by table
# with pg_restore) to BACKUP_ROOT/daily/. On BACKUP_WEEKLY_DAY it also keeps a copy in
# weekly/, on the first day of the month in monthly/ (hard links: no extra space).
# Then each folder is pruned to its newest N archives. The archive is written under a
# temporary name and renamed only once pg_dump succeeded and pg_restore can read it,
# so a failed run never leaves a truncated file among the good ones.
#
# Restore:  pg_restore --clean --if-exists -d "$DATABASE_URL" BACKUP_ROOT/daily/cartae-....dump
#   (compose: docker compose -f docker-compose.ha.yml exec -T postgres \
#      pg_restore --clean --if-exists -U cartae_user -d cartae < archive.dump)
#
# Settings (environment variables):
#   BACKUP_SOURCE        compose (default): pg_dump inside the postgres service container;
#                        direct: the local pg_dump, connecting with DATABASE_URL or the
#                        usual PGHOST/PGPORT/PGUSER/PGPASSWORD/PGDATABASE
#   BACKUP_ROOT          where archives go (default: ./backups)
#   KEEP_DAILY           default 7
#   KEEP_WEEKLY          default 4
#   KEEP_MONTHLY         default 12
#   BACKUP_WEEKLY_DAY    day of week for weekly copies, 1 = Monday .. 7 = Sunday (default 7)
#   POSTGRES_DB, POSTGRES_USER   database and role (compose; defaults cartae, cartae_user)
#   COMPOSE_FILE         default: docker-compose.ha.yml at the repository root
#   COMPOSE_ENV_FILE     default: .env beside the compose file, when present
#   BACKUP_DATE          override "today" as YYYY-MM-DD (tests, back-fills)

set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$SCRIPT_DIR/../.." && pwd)"

BACKUP_SOURCE="${BACKUP_SOURCE:-compose}"
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

# Writes the custom-format dump to stdout.
dump() {
  case "$BACKUP_SOURCE" in
    compose)
      compose exec -T postgres pg_dump -U "$POSTGRES_USER" -d "$POSTGRES_DB" -Fc
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

main() {
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

main "$@"
