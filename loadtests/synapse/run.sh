#!/usr/bin/env bash
# Start Synapse (the Matrix reference homeserver) on loopback as a comparison
# target for tuwunel load tests.
#
# Usage:
#   run.sh sqlite|postgres <port> <datadir>   install (if needed), configure, start
#   run.sh stop <datadir>                     stop Synapse (and its postgres cluster)
#
# Environment:
#   SYNAPSE_VENV      venv to install Synapse into      (default /work/synapse-venv)
#   SYNAPSE_VERSION   pin a matrix-synapse version      (default: latest on PyPI)
#   SYNAPSE_PG_PORT   port of the private postgres      (default: <port>+1)
#   SYNAPSE_START_TIMEOUT  seconds to wait for /versions (default 60)
#
# Everything listens on 127.0.0.1 only. Federation is disabled and every
# rc_* rate limiter is set to effectively unlimited so the comparison with
# tuwunel (which has no such limits in its load-test config) is fair.
set -euo pipefail

VENV="${SYNAPSE_VENV:-/work/synapse-venv}"
PY="$VENV/bin/python"

die() { echo "run.sh: $*" >&2; exit 1; }
log() { echo "[synapse-run] $*" >&2; }

usage() {
	echo "usage: $0 sqlite|postgres <port> <datadir>" >&2
	echo "       $0 stop <datadir>" >&2
	exit 2
}

# ---------------------------------------------------------------- postgres --
PG_BIN=""
find_pg_bin() {
	local d
	d="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1 || true)"
	[[ -n "$d" && -x "$d/initdb" ]] || return 1
	PG_BIN="$d"
}

ensure_postgres_installed() {
	if ! find_pg_bin; then
		log "installing Debian postgresql"
		export DEBIAN_FRONTEND=noninteractive
		apt-get update -qq
		apt-get install -y -qq --no-install-recommends postgresql >/dev/null
		find_pg_bin || die "postgresql installed but no initdb found"
	fi
}

as_postgres() {
	# run a command as the unprivileged postgres user (postgres refuses root)
	if [[ "$(id -u)" == 0 ]]; then
		runuser -u postgres -- "$@"
	else
		"$@"
	fi
}

start_postgres() {
	local datadir="$1" pgport="$2"
	local pgdata="$datadir/pg" sock="$datadir/pgsock"
	ensure_postgres_installed
	if [[ "$(id -u)" == 0 ]]; then
		id postgres >/dev/null 2>&1 || die "no postgres system user"
		as_postgres test -x "$datadir" || die "postgres user cannot reach $datadir (parent dir permissions)"
	fi
	mkdir -p "$sock"
	if [[ ! -f "$pgdata/PG_VERSION" ]]; then
		mkdir -p "$pgdata"
		if [[ "$(id -u)" == 0 ]]; then chown postgres:postgres "$pgdata" "$sock"; fi
		chmod 700 "$pgdata"
		log "initdb $pgdata"
		# trust auth is fine: the cluster listens only on 127.0.0.1 and a private socket dir
		as_postgres "$PG_BIN/initdb" -D "$pgdata" --encoding=UTF8 --locale=C \
			--auth-local=trust --auth-host=trust -U postgres >"$datadir/initdb.log" 2>&1 \
			|| { cat "$datadir/initdb.log" >&2; die "initdb failed"; }
	fi
	if [[ "$(id -u)" == 0 ]]; then chown postgres:postgres "$sock"; fi
	if as_postgres "$PG_BIN/pg_ctl" -D "$pgdata" status >/dev/null 2>&1; then
		log "postgres already running in $pgdata"
	else
		if (exec 3<>"/dev/tcp/127.0.0.1/$pgport") 2>/dev/null; then
			die "port $pgport (postgres) already in use; set SYNAPSE_PG_PORT"
		fi
		log "starting postgres on 127.0.0.1:$pgport"
		touch "$datadir/postgres.log"
		if [[ "$(id -u)" == 0 ]]; then chown postgres:postgres "$datadir/postgres.log"; fi
		as_postgres "$PG_BIN/pg_ctl" -D "$pgdata" -l "$datadir/postgres.log" -w -t 60 \
			-o "-c listen_addresses=127.0.0.1 -p $pgport -k $sock -c shared_buffers=512MB -c max_connections=100" \
			start >/dev/null || { tail -n 30 "$datadir/postgres.log" >&2; die "postgres failed to start"; }
	fi
	echo "$pgport" >"$datadir/pg.port"
	local psql=("$PG_BIN/psql" -h 127.0.0.1 -p "$pgport" -U postgres -d postgres -qAtX)
	if [[ "$("${psql[@]}" -c "SELECT 1 FROM pg_roles WHERE rolname='synapse'")" != 1 ]]; then
		"${psql[@]}" -c "CREATE ROLE synapse LOGIN"
	fi
	if [[ "$("${psql[@]}" -c "SELECT 1 FROM pg_database WHERE datname='synapse'")" != 1 ]]; then
		log "createdb synapse"
		"$PG_BIN/createdb" -h 127.0.0.1 -p "$pgport" -U postgres \
			--encoding=UTF8 --locale=C --template=template0 --owner=synapse synapse
	fi
}

stop_postgres() {
	local datadir="$1"
	[[ -f "$datadir/pg/PG_VERSION" ]] || return 0
	find_pg_bin || return 0
	if as_postgres "$PG_BIN/pg_ctl" -D "$datadir/pg" status >/dev/null 2>&1; then
		log "stopping postgres"
		as_postgres "$PG_BIN/pg_ctl" -D "$datadir/pg" -m fast -w -t 60 stop >/dev/null
	fi
}

# ----------------------------------------------------------------- synapse --
ensure_synapse() {
	local backend="$1"
	local spec="matrix-synapse${SYNAPSE_VERSION:+==$SYNAPSE_VERSION}"
	if [[ ! -x "$PY" ]]; then
		log "creating venv $VENV"
		python3 -m venv "$VENV"
		"$PY" -m pip install -q --upgrade pip
	fi
	if ! "$PY" -c 'import synapse' 2>/dev/null; then
		log "pip install $spec"
		# prefer prebuilt wheels (synapse has a Rust extension; avoid compiling it)
		"$PY" -m pip install -q --only-binary=:all: "$spec" \
			|| "$PY" -m pip install -q "$spec"
	fi
	if [[ "$backend" == postgres ]] && ! "$PY" -c 'import psycopg2' 2>/dev/null; then
		log "pip install psycopg2-binary"
		"$PY" -m pip install -q psycopg2-binary
	fi
}

synapse_version() {
	"$PY" -c 'import importlib.metadata as m; print(m.version("matrix-synapse"))'
}

write_config() {
	local backend="$1" port="$2" datadir="$3" pgport="${4:-}"
	local cfg="$datadir/homeserver.yaml"
	# A very high limit; Synapse's token bucket treats these as "never limit".
	local PS=1000000 BC=10000000
	local rl="{per_second: $PS, burst_count: $BC}"

	local db
	if [[ "$backend" == sqlite ]]; then
		db="database:
  name: sqlite3
  args:
    database: $datadir/homeserver.db"
	else
		db="database:
  name: psycopg2
  txn_limit: 10000
  args:
    user: synapse
    dbname: synapse
    host: 127.0.0.1
    port: $pgport
    cp_min: 5
    cp_max: 10"
	fi

	# secrets are generated once per datadir and kept across restarts
	local secrets="$datadir/secrets.env"
	if [[ ! -f "$secrets" ]]; then
		{
			echo "REG_SECRET=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')"
			echo "MAC_SECRET=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')"
			echo "FORM_SECRET=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')"
		} >"$secrets"
	fi
	# shellcheck disable=SC1090
	source "$secrets"

	cat >"$datadir/log.config" <<EOF
version: 1
formatters:
  precise:
    format: '%(asctime)s - %(name)s - %(lineno)d - %(levelname)s - %(request)s - %(message)s'
handlers:
  file:
    class: logging.FileHandler
    formatter: precise
    filename: $datadir/homeserver.log
    encoding: utf8
loggers:
  synapse.storage.SQL:
    level: WARNING
  twisted:
    level: WARNING
root:
  level: WARNING
  handlers: [file]
disable_existing_loggers: false
EOF

	cat >"$cfg" <<EOF
# Generated by loadtests/synapse/run.sh ($backend) — do not edit by hand.
server_name: "localhost"
public_baseurl: "http://127.0.0.1:$port/"
pid_file: "$datadir/homeserver.pid"
signing_key_path: "$datadir/localhost.signing.key"
log_config: "$datadir/log.config"
media_store_path: "$datadir/media_store"
report_stats: false
enable_metrics: false

listeners:
  - port: $port
    bind_addresses: ['127.0.0.1']
    type: http
    tls: false
    x_forwarded: false
    resources:
      - names: [client, federation]
        compress: false

$db

registration_shared_secret: "$REG_SECRET"
macaroon_secret_key: "$MAC_SECRET"
form_secret: "$FORM_SECRET"

enable_registration: true
enable_registration_without_verification: true

# no federation, no key servers
federation_domain_whitelist: []
trusted_key_servers: []
suppress_key_server_warning: true
url_preview_enabled: false

presence:
  enabled: true

max_upload_size: 50M

# ---- rate limiting: effectively disabled (every rc_* limiter of $(synapse_version)) ----
rc_message: $rl
rc_registration: $rl
rc_registration_token_validity: $rl
rc_login:
  address: $rl
  account: $rl
  failed_attempts: $rl
rc_joins:
  local: $rl
  remote: $rl
rc_joins_per_room: $rl
rc_invites:
  per_room: $rl
  per_user: $rl
  per_issuer: $rl
rc_third_party_invite: $rl
rc_3pid_validation: $rl
rc_admin_redaction: $rl
rc_key_requests: $rl
rc_media_create: $rl
rc_presence:
  per_user: $rl
rc_delayed_event_mgmt: $rl
rc_room_creation: $rl
rc_reports: $rl
rc_user_directory: $rl
rc_profile: $rl
rc_federation:
  window_size: 1000
  sleep_limit: 1000000
  sleep_delay: 0
  reject_limit: 1000000
  concurrent: 1000000
federation_rr_transactions_per_room_per_second: 1000000
remote_media_download_per_second: 1000M
remote_media_download_burst_count: 10000M
EOF
	echo "$cfg"
}

wait_ready() {
	local port="$1" pid="$2" timeout="${SYNAPSE_START_TIMEOUT:-60}"
	local deadline=$((SECONDS + timeout))
	while ((SECONDS < deadline)); do
		kill -0 "$pid" 2>/dev/null || return 1
		if curl -fs -m 2 -o /dev/null "http://127.0.0.1:$port/_matrix/client/versions"; then
			return 0
		fi
		sleep 0.25
	done
	return 1
}

stop_synapse() {
	local datadir="$1" pid
	[[ -f "$datadir/synapse.pid" ]] || return 0
	pid="$(cat "$datadir/synapse.pid")"
	if kill -0 "$pid" 2>/dev/null; then
		log "stopping synapse pid $pid"
		kill -TERM "$pid"
		for _ in $(seq 1 120); do
			kill -0 "$pid" 2>/dev/null || break
			sleep 0.25
		done
		if kill -0 "$pid" 2>/dev/null; then
			log "synapse pid $pid still alive after 30s, SIGKILL"
			kill -KILL "$pid" 2>/dev/null || true
		fi
	fi
	rm -f "$datadir/synapse.pid"
}

cmd_start() {
	local backend="$1" port="$2" datadir="$3"
	[[ "$port" =~ ^[0-9]+$ ]] || die "bad port: $port"
	mkdir -p "$datadir"
	datadir="$(cd "$datadir" && pwd)"
	chmod 755 "$datadir"

	if [[ -f "$datadir/synapse.pid" ]] && kill -0 "$(cat "$datadir/synapse.pid")" 2>/dev/null; then
		die "synapse already running from $datadir (pid $(cat "$datadir/synapse.pid")); run '$0 stop $datadir'"
	fi
	if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
		die "port $port already in use"
	fi

	ensure_synapse "$backend"
	local version
	version="$(synapse_version)"
	echo "$version" >"$datadir/synapse-version.txt"
	log "matrix-synapse $version ($VENV)"

	local pgport=""
	if [[ "$backend" == postgres ]]; then
		pgport="${SYNAPSE_PG_PORT:-$((port + 1))}"
		start_postgres "$datadir" "$pgport"
	fi

	local cfg
	cfg="$(write_config "$backend" "$port" "$datadir" "$pgport")"
	mkdir -p "$datadir/media_store"
	# create the signing key if missing (no server start)
	"$PY" -m synapse.app.homeserver -c "$cfg" --generate-keys >/dev/null

	log "starting synapse on 127.0.0.1:$port"
	local start_ns
	start_ns=$(date +%s%N)
	nohup "$PY" -m synapse.app.homeserver -c "$cfg" \
		>>"$datadir/synapse.stdout.log" 2>&1 </dev/null &
	local pid=$!
	echo "$pid" >"$datadir/synapse.pid"
	if ! wait_ready "$port" "$pid"; then
		tail -n 40 "$datadir/synapse.stdout.log" "$datadir/homeserver.log" >&2 2>/dev/null || true
		stop_synapse "$datadir"
		die "synapse did not answer /_matrix/client/versions within ${SYNAPSE_START_TIMEOUT:-60}s"
	fi
	local ms=$((($(date +%s%N) - start_ns) / 1000000))
	log "synapse ready after ${ms} ms (pid $pid, backend $backend, version $version)"
	echo "$pid"
}

cmd_stop() {
	local datadir="$1"
	[[ -d "$datadir" ]] || die "no such datadir: $datadir"
	stop_synapse "$datadir"
	stop_postgres "$datadir"
}

[[ $# -ge 1 ]] || usage
case "$1" in
	sqlite | postgres)
		[[ $# -eq 3 ]] || usage
		cmd_start "$1" "$2" "$3"
		;;
	stop)
		[[ $# -eq 2 ]] || usage
		cmd_stop "$2"
		;;
	*) usage ;;
esac
