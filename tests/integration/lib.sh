# shellcheck shell=bash
# Shared harness for the integration tests: a throwaway PostgreSQL cluster, real named
# instances sending dnstap, and the collector under test. Source it from a test script:
#
#   source "$(dirname "$0")/lib.sh"
#   start_postgres; start_collector; start_named ns1 127.0.0.1 "$(free_port)" "$COLLECTOR_SOCKET"
#
# Everything lives under one `mktemp -d` directory ($WORK) on random loopback ports, so a
# run works beside a system named on :53, a system PostgreSQL on :5432 and other runs.
# An EXIT trap stops every process started here and removes $WORK, also on failure
# (KEEP_WORK=1 keeps the directory for debugging). A missing component fails the test.

set -euo pipefail
# Byte-order sort/comm/tr everywhere, whatever the caller's locale.
export LC_ALL=C

SOURCE_DIR="${SOURCE_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}"
BUILD_DIR="${BUILD_DIR:-$SOURCE_DIR/build}"
COLLECTOR="${COLLECTOR:-$BUILD_DIR/dnstap-collector}"

# The test name for messages: the script that sourced us.
TEST_NAME="$(basename "${BASH_SOURCE[-1]}" .sh)"

# Under /tmp, not $TMPDIR: named (user bind) and postgres must traverse every directory
# above their own dirs and the socket, and a private $TMPDIR (0700) would not let them.
WORK="$(mktemp -d "${DNSTAP_TEST_TMPDIR:-/tmp}/dnstap-it.XXXXXX")"
chmod 0755 "$WORK"
export WORK

COLLECTOR_PID=""
COLLECTOR_SOCKET=""
COLLECTOR_EXIT=""
CAPTURE_PID=""
PG_DIR=""
PG_BIN=""
declare -A NAMED_PID=() NAMED_DIR=() NAMED_ADDR=() NAMED_PORT=() NAMED_CTLPORT=() NAMED_STATSPORT=()
ALLOCATED_PORTS=" "

# ---------------------------------------------------------------------------------------
# Messages, failure, cleanup

log() { printf '[%s %s] %s\n' "$(date +%H:%M:%S)" "$TEST_NAME" "$*" >&2; }

_print_logs() {
  local f
  while IFS= read -r f; do
    printf '\n----- last 40 lines of %s -----\n' "${f#"$WORK"/}" >&2
    tail -n 40 "$f" >&2 || true
  done < <(find "$WORK" -name '*.log' -type f 2>/dev/null | sort)
}

# Print MSG, the tail of every log the harness wrote, and exit 1 (the trap cleans up).
fail() {
  _print_logs
  printf '\nFAIL: %s: %s\n' "$TEST_NAME" "$*" >&2
  exit 1
}

# set -e stops a test at any failing top-level command; say which one, with the logs. Only
# when set -e is on (so the shell is about to exit by itself): no exit here, so an EXIT trap
# of a test that chains to _cleanup still runs to the end.
_on_error() {
  local rc=$? line="$1" cmd="$2"
  [[ $- == *e* ]] || return 0
  _print_logs
  printf '\nFAIL: %s: line %s: "%s" exited with status %s\n' "$TEST_NAME" "$line" "$cmd" "$rc" >&2
}
trap '_on_error "$LINENO" "$BASH_COMMAND"' ERR

# Send SIGTERM, give the process TIMEOUT seconds, then SIGKILL. Returns its exit status
# when it is our child, 0 otherwise.
_terminate() {
  local pid="$1" timeout="${2:-10}" i
  kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null; return $?; }
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < timeout * 10; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    log "pid $pid did not exit ${timeout}s after SIGTERM; killing it"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  local rc=0
  wait "$pid" 2>/dev/null || rc=$?
  return "$rc"
}

_cleanup() {
  local rc=$?
  set +e
  trap - ERR
  local name pid
  for pid in "${STOP_AT_EXIT[@]}"; do _terminate "$pid" 10; done
  for name in "${!NAMED_PID[@]}"; do
    [[ -n "${NAMED_PID[$name]}" ]] && _terminate "${NAMED_PID[$name]}" 10
  done
  [[ -n "$COLLECTOR_PID" ]] && _terminate "$COLLECTOR_PID" 20
  [[ -n "$CAPTURE_PID" ]] && _terminate "$CAPTURE_PID" 5
  [[ -n "$PG_DIR" ]] && stop_postgres
  # In sanitizer builds a report does not always change an exit status the test looks at
  # (a helper command's output, a collector killed on purpose): any report fails the test.
  local reports
  reports="$(grep -rIlE --exclude-dir=pg 'ERROR: (Address|Leak|Thread)Sanitizer|WARNING: ThreadSanitizer|runtime error: ' "$WORK" 2>/dev/null)"
  if [[ -n "$reports" ]]; then
    local f
    for f in $reports; do
      log "sanitizer report in ${f#"$WORK"/}:"
      grep -m1 -A12 -E 'Sanitizer|runtime error: ' "$f" >&2
    done
    ((rc != 0)) || rc=1
  fi
  touch "$WORK/.done"
  if [[ "${KEEP_WORK:-0}" == 1 ]]; then
    log "keeping $WORK (KEEP_WORK=1)"
  else
    rm -rf "$WORK"
  fi
  if ((rc == 0)); then log "${HARNESS_OK_MSG:-PASS}"; else log "exit status $rc"; fi
  exit "$rc"
}
trap _cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# If this shell is killed outright (SIGKILL, e.g. a ctest timeout), the EXIT trap never
# runs: a watcher then kills what we started (pids in $WORK/.pids, the cluster in
# $WORK/.pgdata) and removes $WORK. After a normal cleanup, $WORK/.done tells it to go.
_start_reaper() {
  local parent=$$
  (
    set +e # some of the pids are long gone; carry on regardless
    trap '' INT TERM
    while kill -0 "$parent" 2>/dev/null; do sleep 1; done
    [[ -d "$WORK" && ! -e "$WORK/.done" ]] || exit 0
    xargs -r kill -KILL <"$WORK/.pids" 2>/dev/null
    if [[ -s "$WORK/.pgdata" ]]; then
      _as_postgres "$(cat "$WORK/.pgbin")/pg_ctl" -D "$(cat "$WORK/.pgdata")" -m immediate stop
    fi
    rm -rf "$WORK"
  ) </dev/null >/dev/null 2>&1 &
  disown
}
_track_pid() { echo "$1" >>"$WORK/.pids"; }

# stop_at_exit PID: a server a test started itself (unbound, kresd, ...) is stopped by the
# harness at exit, before named and the collector, like the processes started here.
STOP_AT_EXIT=()
stop_at_exit() {
  STOP_AT_EXIT+=("$1")
  _track_pid "$1"
}

# wait_for CMD TIMEOUT: poll CMD (a shell string, may call functions) every 0.1 s until it
# succeeds; returns 1 after TIMEOUT seconds.
wait_for() {
  local cmd="$1" timeout="${2:-10}"
  local deadline=$((SECONDS + timeout))
  while ((SECONDS < deadline)); do
    if eval "$cmd" >/dev/null 2>&1; then return 0; fi
    sleep 0.1
  done
  eval "$cmd" >/dev/null 2>&1
}

require_cmd() {
  local c
  for c in "$@"; do
    command -v "$c" >/dev/null 2>&1 || fail "required command '$c' not found (run scripts/install-deps)"
  done
}

# ---------------------------------------------------------------------------------------
# Ports

port_in_use() {
  [[ -n "$(ss -Hlntu "( sport = :$1 )" 2>/dev/null)" ]]
}

# free_port [BASE RANGE]: a random port nobody listens on and this run has not handed out.
free_port() {
  local base="${1:-20000}" range="${2:-40000}" p i
  for ((i = 0; i < 200; i++)); do
    p=$((base + (RANDOM * 32768 + RANDOM) % range))
    [[ "$ALLOCATED_PORTS" == *" $p "* ]] && continue
    port_in_use "$p" && continue
    ALLOCATED_PORTS+="$p "
    printf '%s\n' "$p"
    return 0
  done
  fail "no free port found"
}

# ---------------------------------------------------------------------------------------
# PostgreSQL

# Run a command as the postgres user (initdb/postgres refuse to run as root).
_as_postgres() {
  if [[ "$(id -u)" -eq 0 ]]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

_find_pg_bin() {
  local v
  v="$(ls /usr/lib/postgresql 2>/dev/null | sort -V | tail -n 1)"
  [[ -n "$v" && -x "/usr/lib/postgresql/$v/bin/initdb" ]] \
    || fail "PostgreSQL server binaries not found under /usr/lib/postgresql (run scripts/install-deps)"
  PG_BIN="/usr/lib/postgresql/$v/bin"
}

# start_postgres [DIR]: initdb + start a cluster under DIR (default $WORK/pg), listening
# only on a Unix socket in DIR. Exports PGHOST PGPORT PGUSER PGDATABASE and CONNINFO.
start_postgres() {
  _find_pg_bin
  require_cmd psql
  PG_DIR="${1:-$WORK/pg}"
  mkdir -p "$PG_DIR"
  chmod 0755 "$PG_DIR"
  if [[ "$(id -u)" -eq 0 ]]; then chown postgres:postgres "$PG_DIR"; fi

  local port
  port="$(free_port 15432 10000)"
  log "initdb in $PG_DIR/data"
  _as_postgres "$PG_BIN/initdb" -D "$PG_DIR/data" -U postgres -A trust -E UTF8 --no-locale \
    --no-sync >"$PG_DIR/initdb.out" 2>&1 || { cat "$PG_DIR/initdb.out" >&2; fail "initdb failed"; }

  log "starting PostgreSQL on port $port (socket dir $PG_DIR)"
  _as_postgres "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -l "$PG_DIR/postgres.log" -w -t 60 \
    -o "-p $port -k $PG_DIR -c listen_addresses='' -c fsync=off -c synchronous_commit=off -c full_page_writes=off" \
    start >/dev/null || fail "pg_ctl start failed"

  echo "$PG_DIR/data" >"$WORK/.pgdata"
  echo "$PG_BIN" >"$WORK/.pgbin"
  export PGHOST="$PG_DIR" PGPORT="$port" PGUSER=postgres PGDATABASE=postgres
  export CONNINFO="host=$PG_DIR port=$port user=postgres dbname=postgres"
  wait_for "psql_value 'select 1'" 30 || fail "PostgreSQL does not answer"
}

stop_postgres() {
  [[ -n "$PG_DIR" && -f "$PG_DIR/data/postmaster.pid" ]] || { PG_DIR=""; return 0; }
  _as_postgres "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -m fast -w -t 30 stop >/dev/null 2>&1 \
    || _as_postgres "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -m immediate -w stop >/dev/null 2>&1 \
    || true
  PG_DIR=""
}

# psql_value SQL: the result of SQL, unaligned, no headers; fails the test on SQL errors.
psql_value() {
  psql -X -q -A -t -v ON_ERROR_STOP=1 -c "$1" || { echo "SQL failed: $1" >&2; return 1; }
}

# ---------------------------------------------------------------------------------------
# The collector

require_collector() {
  [[ -x "$COLLECTOR" ]] || fail "collector binary '$COLLECTOR' not found or not executable (build it: scripts/build)"
}

collector_migrate() {
  require_collector
  "$COLLECTOR" migrate --postgres "$CONNINFO" >"$WORK/migrate.log" 2>&1 \
    || fail "'dnstap-collector migrate' failed (exit $?)"
}

# start_collector [ARGS...]: `$COLLECTOR serve ARGS` in the background, logging to
# $WORK/collector.log; -u defaults to $WORK/dnstap.sock and --postgres to $CONNINFO.
# Waits until the socket exists; fails with the log if the collector dies first.
start_collector() {
  require_collector
  local args=("$@") sock="" have_pg=0 i
  for ((i = 0; i < ${#args[@]}; i++)); do
    case "${args[i]}" in
      -u|--unix|--socket) sock="${args[i+1]:-}" ;;
      --postgres) have_pg=1 ;;
    esac
  done
  if [[ -z "$sock" ]]; then sock="$WORK/dnstap.sock"; args=(-u "$sock" "${args[@]}"); fi
  if ((have_pg == 0)); then
    [[ -n "${CONNINFO:-}" ]] || fail "start_collector: no --postgres and no CONNINFO (start_postgres first)"
    args+=(--postgres "$CONNINFO")
  fi
  COLLECTOR_SOCKET="$sock"
  COLLECTOR_EXIT=""

  log "starting collector: $COLLECTOR serve ${args[*]}"
  "$COLLECTOR" serve "${args[@]}" >"$WORK/collector.log" 2>&1 &
  COLLECTOR_PID=$!
  _track_pid "$COLLECTOR_PID"
  local deadline=$((SECONDS + 30))
  until [[ -S "$sock" ]]; do
    if ! kill -0 "$COLLECTOR_PID" 2>/dev/null; then
      local rc=0
      wait "$COLLECTOR_PID" || rc=$?
      COLLECTOR_PID=""
      fail "collector exited (status $rc) before creating its socket $sock"
    fi
    ((SECONDS < deadline)) || fail "collector did not create its socket $sock within 30 s"
    sleep 0.1
  done
  log "collector pid $COLLECTOR_PID listening on $sock ($(stat -c '%A %U:%G' "$sock"))"
}

# block_exchange_writes [SECONDS]: a session (application_name 'blocker') holds ACCESS
# EXCLUSIVE on dnstap.exchange, so every write of the collector blocks; sets BLOCKER_PID.
# unblock_exchange_writes ends it.
block_exchange_writes() {
  psql -X -q -v ON_ERROR_STOP=1 -c "SET application_name = 'blocker'" \
    -c "BEGIN" -c "LOCK TABLE dnstap.exchange IN ACCESS EXCLUSIVE MODE" -c "SELECT pg_sleep(${1:-300})" -c "COMMIT" \
    >"$WORK/blocker.out" 2>&1 &
  BLOCKER_PID=$!
  _track_pid "$BLOCKER_PID"
  wait_for "[[ \$(psql_value \"SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid)
    WHERE a.application_name = 'blocker' AND l.mode = 'AccessExclusiveLock' AND l.granted\") -ge 1 ]]" 10 \
    || fail "the blocking session did not get its lock on dnstap.exchange"
}
unblock_exchange_writes() {
  psql_value "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'blocker'" >/dev/null
  wait "$BLOCKER_PID" 2>/dev/null || true
}

collector_running() {
  [[ -n "$COLLECTOR_PID" ]] && kill -0 "$COLLECTOR_PID" 2>/dev/null
}

# stop_collector [TIMEOUT]: SIGTERM, wait for it to drain and exit, print its stats line.
# Sets COLLECTOR_EXIT to the exit status ("137" etc. when it had to be killed).
stop_collector() {
  local timeout="${1:-30}"
  [[ -n "$COLLECTOR_PID" ]] || fail "stop_collector: collector not started"
  log "stopping collector (SIGTERM)"
  local rc=0
  _terminate "$COLLECTOR_PID" "$timeout" || rc=$?
  COLLECTOR_PID=""
  COLLECTOR_EXIT="$rc"
  log "collector exited with status $rc"
  local stats
  stats="$(grep -E '(^|[^a-z_])stats:' "$WORK/collector.log" | tail -n 1 || true)"
  if [[ -n "$stats" ]]; then log "collector $stats"; else log "collector printed no stats line"; fi
}

# collector_stat NAME: the value of NAME=... from the collector's last stats line.
collector_stat() {
  grep -E '(^|[^a-z_])stats:' "$WORK/collector.log" | tail -n 1 \
    | grep -oE "(^|[[:space:]])$1=[0-9]+" | head -n 1 | cut -d= -f2
}

# metrics_text: the collector's /metrics at 127.0.0.1:$MPORT (nothing when it does not answer).
# metric NAME: the first sample of NAME (empty when absent or unreachable); metric_sum NAME:
# NAME's samples summed over all their labels (0 then); dropped_total: metric_sum of
# dnstap_collector_dropped_total, over reasons. MPORT=PORT metric NAME reads another port.
metrics_text() { curl -fsS --max-time 2 "http://127.0.0.1:$MPORT/metrics" 2>/dev/null; }
metric() {
  metrics_text | awk -v n="$1" '$1 == n && v == "" { v = $2 } END { if (v != "") print v }'  # no early exit: curl would fail writing
}
metric_sum() {
  metrics_text | awk -v n="$1" '$1 == n || index($1, n "{") == 1 { t += $2 } END { print t + 0 }'
}
dropped_total() { metric_sum dnstap_collector_dropped_total; }

# start_capture SOCKET FILE: fstrm_capture as a stand-in receiver, e.g. to check what named
# really sends (read FILE with dnstap-read afterwards, once stop_capture has run).
start_capture() {
  require_cmd fstrm_capture
  local sock="$1" file="$2"
  fstrm_capture -t protobuf:dnstap.Dnstap -u "$sock" -w "$file" >"$WORK/capture.log" 2>&1 &
  CAPTURE_PID=$!
  _track_pid "$CAPTURE_PID"
  wait_for "[[ -S '$sock' ]]" 10 || fail "fstrm_capture did not create $sock"
  # fstrm_capture creates the socket with the umask; named runs as bind and must write to it.
  chmod 0666 "$sock"
}

stop_capture() {
  [[ -n "$CAPTURE_PID" ]] || return 0
  # fstrm_capture flushes and closes its output file on SIGINT/SIGTERM.
  _terminate "$CAPTURE_PID" 5 || true
  CAPTURE_PID=""
}

# ---------------------------------------------------------------------------------------
# named

# The test zone: example.com with a few hundred names. Tests build their query files
# from the same names (see zone_names).
ZONE=example.com
ZONE_HOSTS=300
PROBE_QNAME="readiness-probe.$ZONE"

_write_zone() {
  local file="$1" i
  {
    printf '$TTL 300\n'
    printf '@ IN SOA ns1.%s. hostmaster.%s. 1 3600 600 86400 300\n' "$ZONE" "$ZONE"
    printf '@ IN NS ns1\n@ IN MX 10 mail\n@ IN A 192.0.2.1\n@ IN TXT "v=spf1 -all"\n'
    printf 'ns1 IN A 192.0.2.53\nmail IN A 192.0.2.25\nwww IN A 192.0.2.80\nwww IN AAAA 2001:db8::80\n'
    for ((i = 1; i <= ZONE_HOSTS; i++)); do
      printf 'host%d IN A 192.0.2.%d\n' "$i" $((i % 250 + 1))
      ((i % 2 == 0)) && printf 'host%d IN AAAA 2001:db8::%x\n' "$i" "$i"
      ((i % 3 == 0)) && printf 'host%d IN MX 10 mail\n' "$i"
      ((i % 5 == 0)) && printf 'host%d IN TXT "host number %d"\n' "$i" "$i"
      ((i % 4 == 0)) && printf 'alias%d IN CNAME host%d\n' "$i" "$i"
    done
    :
  } >"$file"
}

# make_queries FILE: a dnsperf query file ("name type" per line) of distinct questions
# for $ZONE: existing names of each type, CNAMEs, empty answers (NODATA), NXDOMAIN names,
# and every seventh name in mixed case. Distinct even after lowercasing, so the sorted
# lowercase file is exactly the (qname, qtype) list the collector must store.
make_queries() {
  local file="$1" i
  _mixed() { # Host14.EXAMPLE.com: same name, other case
    local n="$1"
    printf '%s%s.%s.com' "$(tr '[:lower:]' '[:upper:]' <<<"${n:0:1}")" "${n:1}" \
      "$(tr '[:lower:]' '[:upper:]' <<<"${ZONE%.com}")"
  }
  {
    printf '%s %s\n' "$ZONE" SOA "$ZONE" NS "$ZONE" MX "$ZONE" TXT \
      "www.$ZONE" A "www.$ZONE" AAAA "mail.$ZONE" A "ns1.$ZONE" A
    for ((i = 1; i <= ZONE_HOSTS; i++)); do
      local host="host$i.$ZONE"
      ((i % 7 == 0)) && host="$(_mixed "host$i")"
      printf '%s A\n' "$host"
      ((i % 2 == 0)) && printf '%s AAAA\n' "$host"
      ((i % 3 == 0)) && printf '%s MX\n' "$host"
      ((i % 5 == 0)) && printf '%s TXT\n' "$host"
      ((i <= 100)) && printf '%s SRV\n' "$host"                 # NODATA
      ((i % 4 == 0)) && printf 'alias%d.%s CNAME\nalias%d.%s A\n' "$i" "$ZONE" "$i" "$ZONE"
      ((i <= 150)) && printf 'nx%d.%s A\n' "$i" "$ZONE"        # NXDOMAIN
      ((i <= 100)) && printf 'NX-%d.%s AAAA\n' "$i" "${ZONE^^}"  # NXDOMAIN, upper case
    done
    : # the loop ends on a false (( )); that is not a failure
  } >"$file"
}

# start_named NAME ADDR PORT SOCKET [EXTRA OPTIONS...]: a real named serving $ZONE on
# ADDR:PORT with dnstap (client + auth) to SOCKET. EXTRA OPTIONS are appended verbatim
# inside options { } (e.g. 'fstrm-set-input-queue-size 16384;').
start_named() {
  require_cmd named named-checkconf dig rndc curl
  local name="$1" addr="$2" port="$3" sock="$4"
  shift 4
  local extra="$*"
  local dir="$WORK/named-$name"
  local ctlport statsport
  ctlport="$(free_port)"
  statsport="$(free_port)"
  mkdir -p "$dir"

  # Listen on ::1 as well where the loopback has it; never on the wildcard (port 53 may be
  # taken by a system named, and the default listen-on-v6 is "any").
  local v6="listen-on-v6 { none; };"
  if [[ "$addr" == 127.* ]] && ip -6 addr show dev lo 2>/dev/null | grep -q 'inet6 ::1/'; then
    v6="listen-on-v6 port $port { ::1; };"
  fi

  local secret
  secret="$(head -c 32 /dev/urandom | base64)"
  cat >"$dir/rndc.key" <<EOF
key "rndc-key" {
	algorithm hmac-sha256;
	secret "$secret";
};
EOF
  _write_zone "$dir/$ZONE.zone"
  cat >"$dir/named.conf" <<EOF
include "$dir/rndc.key";
options {
	directory "$dir";
	pid-file "$dir/named.pid";
	session-keyfile "$dir/session.key";
	managed-keys-directory "$dir";
	listen-on port $port { $addr; };
	$v6
	recursion no;
	dnssec-validation no;
	notify no;
	dnstap { client; auth; };
	dnstap-output unix "$sock";
	dnstap-identity "$name";
	fstrm-set-reopen-interval 1;
	$extra
};
controls {
	inet 127.0.0.1 port $ctlport allow { 127.0.0.1; } keys { "rndc-key"; };
};
statistics-channels {
	inet 127.0.0.1 port $statsport allow { 127.0.0.1; };
};
zone "$ZONE" {
	type primary;
	file "$dir/$ZONE.zone";
};
EOF
  if [[ "$(id -u)" -eq 0 ]]; then chown -R bind:bind "$dir"; fi
  named-checkconf -z "$dir/named.conf" >"$dir/checkconf.out" 2>&1 \
    || { cat "$dir/checkconf.out" >&2; fail "named-checkconf rejected $dir/named.conf"; }

  local user_args=()
  if [[ "$(id -u)" -eq 0 ]]; then user_args=(-u bind); fi
  log "starting named '$name' on $addr port $port (control $ctlport, stats $statsport), dnstap -> $sock"
  named "${user_args[@]}" -c "$dir/named.conf" -g -n 2 >"$WORK/named-$name.log" 2>&1 &
  NAMED_PID[$name]=$!
  _track_pid "${NAMED_PID[$name]}"
  NAMED_DIR[$name]="$dir"
  NAMED_ADDR[$name]="$addr"
  NAMED_PORT[$name]="$port"
  NAMED_CTLPORT[$name]="$ctlport"
  NAMED_STATSPORT[$name]="$statsport"

  # Readiness probe: RD=0 (named logs it as AQ/AR) for a name of its own, so tests can
  # tell its rows in dnstap.exchange from those of their own queries.
  local deadline=$((SECONDS + 30))
  until dig +norec +time=1 +tries=1 @"$addr" -p "$port" "$PROBE_QNAME" A 2>/dev/null | grep -q 'status: NXDOMAIN'; do
    kill -0 "${NAMED_PID[$name]}" 2>/dev/null || { NAMED_PID[$name]=""; fail "named '$name' exited during startup"; }
    ((SECONDS < deadline)) || fail "named '$name' does not answer on $addr port $port within 30 s"
    sleep 0.2
  done
  log "named '$name' pid ${NAMED_PID[$name]} answers"
}

stop_named() {
  local name="$1"
  [[ -n "${NAMED_PID[$name]:-}" ]] || return 0
  log "stopping named '$name'"
  _terminate "${NAMED_PID[$name]}" 10 || true
  NAMED_PID[$name]=""
}

# rndc_named NAME ARGS...: run rndc against that named.
rndc_named() {
  local name="$1"
  shift
  rndc -s 127.0.0.1 -p "${NAMED_CTLPORT[$name]}" -k "${NAMED_DIR[$name]}/rndc.key" "$@"
}

# named_port NAME: the DNS port of that named.
named_port() { printf '%s\n' "${NAMED_PORT[$1]}"; }

# named_dnstap_stats NAME: "DNSTAPsuccess=N DNSTAPdropped=M" from named's statistics
# channel (JSON /json/v1/server, object "dnstapstats"; named leaves out counters that are
# still zero, so a missing one prints as 0). One dnstap message per query and response.
named_dnstap_stats() {
  local name="$1" json success dropped
  json="$(curl -fsS --max-time 5 "http://127.0.0.1:${NAMED_STATSPORT[$name]}/json/v1/server")" || return 1
  success="$(grep -oE '"DNSTAPsuccess":[0-9]+' <<<"$json" | head -n 1 | cut -d: -f2 || true)"
  dropped="$(grep -oE '"DNSTAPdropped":[0-9]+' <<<"$json" | head -n 1 | cut -d: -f2 || true)"
  printf 'DNSTAPsuccess=%s DNSTAPdropped=%s\n' "${success:-0}" "${dropped:-0}"
}

# ---------------------------------------------------------------------------------------
# Other DNS servers as senders (the compat tests)

# wait_answers LABEL PID PORT: until the server LABEL (process PID) answers on 127.0.0.1:PORT
# (an NXDOMAIN for ready.$ZONE, a name named does not have), or fail after 20 s.
wait_answers() {
  local label="$1" pid="$2" port="$3" deadline=$((SECONDS + 20))
  until dig +time=1 +tries=1 @127.0.0.1 -p "$port" "ready.$ZONE" A 2>/dev/null | grep -q 'status: NXDOMAIN'; do
    kill -0 "$pid" 2>/dev/null || fail "$label exited during startup"
    ((SECONDS < deadline)) || fail "$label does not answer on port $port"
    sleep 0.2
  done
  log "$label pid $pid answers"
}

# send_questions LABEL PORT FILE [QPS]: dnsperf asks every question of FILE once, through
# 127.0.0.1:PORT; fails unless every one is answered.
send_questions() {
  local label="$1" port="$2" file="$3" qps="${4:-1000}" n sent completed
  n="$(wc -l <"$file")"
  dnsperf -s 127.0.0.1 -p "$port" -d "$file" -n 1 -c 2 -q 16 -Q "$qps" -t 5 >"$WORK/dnsperf.out" 2>&1 \
    || { cat "$WORK/dnsperf.out" >&2; fail "dnsperf against $label failed"; }
  sent="$(awk '/Queries sent:/ {print $3}' "$WORK/dnsperf.out")"
  completed="$(awk '/Queries completed:/ {print $3}' "$WORK/dnsperf.out")"
  [[ "$sent" == "$n" && "$completed" == "$n" ]] \
    || { cat "$WORK/dnsperf.out" >&2; fail "$label: sent $sent, completed $completed of $n"; }
  log "$label: $n queries answered"
}

# check_questions_stored LABEL FILE ROWS: the rows selected by ROWS ("dnstap.exchange WHERE
# ...") hold exactly the questions of FILE (names compared lowercase), once each.
check_questions_stored() {
  local label="$1" file="$2" rows="$3"
  awk '{print tolower($1), $2}' "$file" | sort >"$WORK/expected.txt"
  psql_value "SELECT qname || ' ' || qtype FROM $rows" | sort >"$WORK/stored.txt"
  cmp -s "$WORK/expected.txt" "$WORK/stored.txt" || {
    comm -3 "$WORK/expected.txt" "$WORK/stored.txt" | head -n 10 >&2
    fail "$label: stored questions differ from those sent"
  }
}

require_cmd ss runuser
touch "$WORK/.pids"
_start_reaper
