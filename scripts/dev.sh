#!/usr/bin/env bash
# Runs the service on this machine against the local PostgreSQL and Redis:
#
#   scripts/dev.sh
#
# API on http://127.0.0.1:3001, metrics on http://127.0.0.1:9090/metrics. Starts
# PostgreSQL and Redis if they are down and creates the `cartae` database if missing.
# Any variable already set in the environment wins over the defaults below.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/services.sh

if ! psql -h 127.0.0.1 -U postgres -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname = 'cartae'" | grep -q 1; then
  psql -h 127.0.0.1 -U postgres -d postgres -qc 'CREATE DATABASE cartae'
fi

export DATABASE_URL="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/cartae?sslmode=disable}"
export REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379/0}"
export HOST="${HOST:-127.0.0.1}"
export LOG_FORMAT="${LOG_FORMAT:-pretty}"
# A fresh random secret per run unless you set one (the service refuses published or
# guessable secrets): tokens from an earlier run are then simply invalid.
export JWT_SECRET="${JWT_SECRET:-$(head -c 48 /dev/urandom | base64 | tr -d '\n')}"
# A short drain: nothing sits in front of a development run.
export DRAIN_DELAY_MS="${DRAIN_DELAY_MS:-500}"

cargo build --release -q -p cartae-database-api
# Not from the repository root: its .env is the compose stack's (a Sentinel password there
# would be refused without Sentinels). Set variables in the environment instead.
cd target
exec ./release/cartae-database-api serve
