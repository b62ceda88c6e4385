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
# A development secret: set your own JWT_SECRET anywhere that matters.
export JWT_SECRET="${JWT_SECRET:-dev-only-secret-change-me-0123456789abcdef}"
# A short drain: nothing sits in front of a development run.
export DRAIN_DELAY_MS="${DRAIN_DELAY_MS:-500}"

exec cargo run --release -- serve
