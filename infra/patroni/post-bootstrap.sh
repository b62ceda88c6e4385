#!/bin/sh
# Patroni's post_bootstrap hook (infra/patroni/patroni.yml): runs once, on the node that
# created the cluster, with PostgreSQL up; $1 is a superuser connection string.
# Creates the service's role and database from the same variables the service reads,
# then the pgBackRest stanza the archive_command pushes to.
set -eu

# The password goes through psql's \getenv, never on a command line (ps would show it).
psql -X -v ON_ERROR_STOP=1 -d "$1" <<'SQL'
\getenv app_user POSTGRES_USER
\getenv app_password POSTGRES_PASSWORD
\getenv app_db POSTGRES_DB
CREATE ROLE :"app_user" LOGIN PASSWORD :'app_password';
CREATE DATABASE :"app_db" OWNER :"app_user";
SQL

# Without a stanza every archive_command fails and WAL piles up in pg_wal. A failure
# here is logged, not fatal: the cluster must come up even when the repository is not
# ready, and pg_stat_archiver (and `pgbackrest check`) then show that archiving fails.
# pgBackRest's default configuration is /etc/pgbackrest/pgbackrest.conf, where compose
# mounts infra/pgbackrest/pgbackrest.conf (PGBACKREST_CONFIG moves it).
if ! pgbackrest --stanza=cartae stanza-create; then
  echo "post-bootstrap: pgbackrest stanza-create failed: WAL archiving is NOT working;" \
    "fix /etc/pgbackrest/pgbackrest.conf, then run stanza-create on the primary" >&2
fi
