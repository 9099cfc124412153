# shellcheck shell=bash
# Helpers for the benchmark scripts. Sources tests/integration/lib.sh (throwaway
# PostgreSQL, ports, logging, EXIT-trap cleanup, $WORK temp dir) and adds what the
# benchmarks need beyond the tests: a named whose dnstap output (none / unix socket /
# file) and query logging are chosen per run, a zone of a few thousand names with a
# realistic query mix, background processes of any kind that the EXIT trap stops, and
# CPU / memory readings from /proc.
#
#   source "$(dirname "$0")/lib-bench.sh"

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export SOURCE_DIR="${SOURCE_DIR:-$(cd "$BENCH_DIR/.." && pwd)}"
export BUILD_DIR="${BUILD_DIR:-$SOURCE_DIR/build-bench}"
export COLLECTOR="${COLLECTOR:-$BUILD_DIR/dnstap-collector}"
LOADGEN="${LOADGEN:-$BUILD_DIR/bench/loadgen}"

# shellcheck source=../tests/integration/lib.sh
source "$SOURCE_DIR/tests/integration/lib.sh"

BENCH_ZONE=bench.example
BENCH_HOSTS="${BENCH_HOSTS:-4000}"

# ---------------------------------------------------------------------------------------
# Background processes: bg_start NAME CMD... runs CMD with stdout+stderr in $WORK/NAME.log
# and sets BG_PID; every one still alive is stopped (SIGTERM, then SIGKILL) on exit.
declare -a BENCH_PIDS=()
declare -A BENCH_NAMED_PIDS=()

bg_start() {
  local name="$1"
  shift
  "$@" >"$WORK/$name.log" 2>&1 &
  BG_PID=$!
  BENCH_PIDS+=("$BG_PID")
}

# bg_stop PID [TIMEOUT]: SIGTERM, wait up to TIMEOUT s, SIGKILL; returns the exit status.
bg_stop() {
  local pid="$1" timeout="${2:-20}" i rc=0
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < timeout * 10; i++)); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
      log "pid $pid still running ${timeout}s after SIGTERM: SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
    fi
  fi
  wait "$pid" 2>/dev/null || rc=$?
  return "$rc"
}

_bench_cleanup() {
  local rc=$?
  set +e
  local pid
  for pid in "${BENCH_NAMED_PIDS[@]}" "${BENCH_PIDS[@]}"; do
    [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null && bg_stop "$pid" 10
  done
  [[ -n "${IDLE_CG:-}" ]] && rmdir "$IDLE_CG" 2>/dev/null
  (exit "$rc")
  _cleanup
}
trap _bench_cleanup EXIT

# ---------------------------------------------------------------------------------------
# Idle CPU group: what a host shared with named should give storage (see docs/benchmarks.md).
# idle_cgroup_setup creates a cgroup with cpu.idle = 1 and sets IDLE_CG (where processes and
# threads go) and IDLE_CG_PARENT (where they come back to); returns 1 when this machine has
# none that the benchmark can use: not root, or no cgroup v1 cpu controller with cpu.idle
# (kernel 5.15+). Under cgroup v2 a thread cannot leave its process's domain cgroup outside
# a threaded subtree; a service manager sets that up (Delegate=yes), a benchmark does not.
IDLE_CG=""
IDLE_CG_PARENT=""
idle_cgroup_setup() {
  local parent=/sys/fs/cgroup/cpu
  [[ $EUID -eq 0 && -f "$parent/cpu.idle" && -w "$parent/tasks" ]] || return 1
  IDLE_CG="$parent/dnstap-bench-idle.$$"
  mkdir -p "$IDLE_CG" && echo 1 >"$IDLE_CG/cpu.idle" || { IDLE_CG=""; return 1; }
  IDLE_CG_PARENT="$parent"
}
# cgroup_move_tree CGROUP PID: PID and its children (processes, all their threads).
cgroup_move_tree() {
  local cg="$1" pid="$2" child
  echo "$pid" >"$cg/cgroup.procs" 2>/dev/null || true
  for child in $(pgrep -P "$pid"); do echo "$child" >"$cg/cgroup.procs" 2>/dev/null || true; done
}

# ---------------------------------------------------------------------------------------
# /proc readings

clk_tck() { getconf CLK_TCK; }

# cpu_seconds PID: utime+stime of PID (all its threads) in seconds.
cpu_seconds() {
  local stat
  stat="$(cat "/proc/$1/stat")" || return 1
  stat="${stat##*) }"   # fields from 3 on; comm may contain spaces
  # shellcheck disable=SC2086
  set -- $stat
  # utime and stime are fields 14 and 15 of the whole line, 12 and 13 from field 3.
  awk -v u="${12}" -v s="${13}" -v t="$(clk_tck)" 'BEGIN { printf "%.2f\n", (u + s) / t }'
}

# cpu_seconds_tree PID: like cpu_seconds plus the reaped children (cutime+cstime) and the
# live children's own time (for PostgreSQL: postmaster and its backends).
cpu_seconds_tree() {
  local pid="$1" total child
  total="$(awk -v t="$(clk_tck)" '{ sub(/^.*\) /, ""); print ($12 + $13 + $14 + $15) / t }' "/proc/$pid/stat")"
  for child in $(pgrep -P "$pid"); do
    total="$(awk -v a="$total" -v b="$(cpu_seconds "$child" 2>/dev/null || echo 0)" 'BEGIN { print a + b }')"
  done
  printf '%.2f\n' "$total"
}

# peak_rss_mib PID: VmHWM in MiB.
peak_rss_mib() {
  awk '/^VmHWM:/ { printf "%.1f\n", $2 / 1024 }' "/proc/$1/status"
}

# cpu_by_thread PID: "ingest workers writer other" CPU seconds of the collector's threads,
# told apart by their names (worker-N, pg-writer / file-writer; the main thread runs ingest
# and the metrics endpoint).
cpu_by_thread() {
  local t name stat main_pid="$1"
  for t in /proc/"$main_pid"/task/*; do
    name="$(cat "$t/comm" 2>/dev/null)" || continue
    stat="$(cat "$t/stat" 2>/dev/null)" || continue
    stat="${stat##*) }"
    # shellcheck disable=SC2086
    set -- $stat
    printf '%s %s %s\n' "${t##*/}" "$name" "$((${12} + ${13}))"
  done | awk -v main="$main_pid" -v tck="$(clk_tck)" '
    $1 == main { c["ingest"] += $3; next }
    $2 ~ /^worker-/ { c["workers"] += $3; next }
    $2 ~ /-writer$/ { c["writer"] += $3; next }
    { c["other"] += $3 }
    END { printf "%.2f %.2f %.2f %.2f\n", c["ingest"] / tck, c["workers"] / tck, c["writer"] / tck, c["other"] / tck }'
}

# ---------------------------------------------------------------------------------------
# Zone and queries

# bench_write_zone FILE: $BENCH_ZONE with $BENCH_HOSTS hosts (A, some AAAA, MX, TXT,
# CNAME aliases), a few thousand names in all.
bench_write_zone() {
  awk -v zone="$BENCH_ZONE" -v n="$BENCH_HOSTS" 'BEGIN {
    print "$TTL 300"
    printf "@ IN SOA ns1.%s. hostmaster.%s. 1 3600 600 86400 300\n", zone, zone
    print "@ IN NS ns1"; print "@ IN NS ns2"; print "@ IN MX 10 mail"; print "@ IN A 192.0.2.1"
    print "@ IN TXT \"v=spf1 ip4:192.0.2.0/24 -all\""
    print "ns1 IN A 192.0.2.53"; print "ns2 IN A 192.0.2.54"; print "mail IN A 192.0.2.25"
    print "www IN A 192.0.2.80"; print "www IN AAAA 2001:db8::80"
    for (i = 1; i <= n; i++) {
      printf "host%d IN A 198.51.%d.%d\n", i, int(i / 250) % 256, i % 250 + 1
      if (i % 2 == 0) printf "host%d IN AAAA 2001:db8:%x::%x\n", i, int(i / 256), i
      if (i % 3 == 0) printf "host%d IN MX 10 mail\n", i
      if (i % 5 == 0) printf "host%d IN TXT \"host number %d\"\n", i, i
      if (i % 7 == 0) printf "host%d IN A 203.0.113.%d\n", i, i % 250 + 1   # two addresses
      if (i % 4 == 0) printf "alias%d IN CNAME host%d\n", i, i
    }
  }' >"$1"
}

# bench_make_queries FILE [LINES]: a shuffled dnsperf query file with a realistic mix for an
# authoritative server: mostly A and AAAA of existing names, some MX/TXT/CNAME chases,
# NODATA (type the name lacks) and ~10% NXDOMAIN.
bench_make_queries() {
  local file="$1" lines="${2:-50000}"
  awk -v zone="$BENCH_ZONE" -v n="$BENCH_HOSTS" -v lines="$lines" 'BEGIN {
    srand(42)
    for (k = 0; k < lines; k++) {
      r = rand(); h = int(rand() * n) + 1
      if (r < 0.45) printf "host%d.%s A\n", h, zone
      else if (r < 0.63) printf "host%d.%s AAAA\n", h, zone
      else if (r < 0.68) printf "host%d.%s MX\n", h, zone
      else if (r < 0.72) printf "host%d.%s TXT\n", h, zone
      else if (r < 0.78) printf "alias%d.%s A\n", int(h / 4) * 4 + 4, zone
      else if (r < 0.81) printf "www.%s A\n", zone
      else if (r < 0.83) printf "%s MX\n", zone
      else if (r < 0.85) printf "%s TXT\n", zone
      else if (r < 0.90) printf "host%d.%s SRV\n", h, zone                 # NODATA
      else printf "nx%d-%d.%s A\n", h, k % 97, zone                         # NXDOMAIN
    }
  }' >"$file"
}

# ---------------------------------------------------------------------------------------
# named

# bench_start_named NAME PORT DNSTAP QUERYLOG [EXTRA OPTIONS...]
#   DNSTAP: none | unix:/path/sock | file:/path/file
#   QUERYLOG: 0 | 1 (querylog yes to a file channel in the named directory)
# Sets NAMED_STATS_PORT and BENCH_NAMED_DIR; waits until it answers.
bench_start_named() {
  require_cmd named named-checkconf dig
  local name="$1" port="$2" dnstap="$3" querylog="$4"
  shift 4
  local extra="$*" dir="$WORK/named-$name"
  mkdir -p "$dir"
  NAMED_STATS_PORT="$(free_port)"
  BENCH_NAMED_DIR="$dir"
  bench_write_zone "$dir/$BENCH_ZONE.zone"
  local dt=""
  case "$dnstap" in
    none) ;;
    unix:*) dt="dnstap { client; auth; }; dnstap-output unix \"${dnstap#unix:}\"; dnstap-identity \"$name\";" ;;
    file:*) dt="dnstap { client; auth; }; dnstap-output file \"${dnstap#file:}\"; dnstap-identity \"$name\";" ;;
    *) fail "bench_start_named: bad dnstap mode $dnstap" ;;
  esac
  # named runs with -f, not -g (-g sends all logging to stderr and ignores channels).
  local logging="logging { channel main { file \"$dir/named.log\"; print-time yes; severity info; }; category default { main; };"
  if [[ "$querylog" == 1 ]]; then
    logging="$logging channel ql { file \"$dir/query.log\" versions 3 size 2g; print-time yes; severity info; }; category queries { ql; };"
    dt="$dt querylog yes;"
  fi
  logging="$logging };"
  cat >"$dir/named.conf" <<EOF
options {
	directory "$dir";
	pid-file "$dir/named.pid";
	session-keyfile "$dir/session.key";
	managed-keys-directory "$dir";
	listen-on port $port { 127.0.0.1; };
	listen-on-v6 { none; };
	recursion no;
	dnssec-validation no;
	notify no;
	$dt
	$extra
};
$logging
statistics-channels {
	inet 127.0.0.1 port $NAMED_STATS_PORT allow { 127.0.0.1; };
};
zone "$BENCH_ZONE" {
	type primary;
	file "$dir/$BENCH_ZONE.zone";
};
EOF
  if [[ "$(id -u)" -eq 0 ]]; then chown -R bind:bind "$dir"; fi
  named-checkconf -z "$dir/named.conf" >"$dir/checkconf.out" 2>&1 \
    || { cat "$dir/checkconf.out" >&2; fail "named-checkconf rejected $dir/named.conf"; }
  local user_args=()
  if [[ "$(id -u)" -eq 0 ]]; then user_args=(-u bind); fi
  named "${user_args[@]}" -c "$dir/named.conf" -f >"$WORK/named-$name.log" 2>&1 &
  BENCH_NAMED_PIDS[$name]=$!
  local deadline=$((SECONDS + 30))
  until dig +norec +time=1 +tries=1 @127.0.0.1 -p "$port" "www.$BENCH_ZONE" A 2>/dev/null | grep -q 'status: NOERROR'; do
    kill -0 "${BENCH_NAMED_PIDS[$name]}" 2>/dev/null || fail "named '$name' exited during startup"
    ((SECONDS < deadline)) || fail "named '$name' does not answer on port $port within 30 s"
    sleep 0.2
  done
}

bench_stop_named() {
  local name="$1"
  [[ -n "${BENCH_NAMED_PIDS[$name]:-}" ]] || return 0
  bg_stop "${BENCH_NAMED_PIDS[$name]}" 20 || true
  BENCH_NAMED_PIDS[$name]=""
}

# bench_named_dnstap NAME: "SUCCESS DROPPED" from named's statistics channel.
bench_named_dnstap() {
  local json s d
  json="$(curl -fsS --max-time 5 "http://127.0.0.1:$NAMED_STATS_PORT/json/v1/server")" || { echo "? ?"; return 0; }
  s="$(grep -oE '"DNSTAPsuccess":[0-9]+' <<<"$json" | head -n 1 | cut -d: -f2 || true)"
  d="$(grep -oE '"DNSTAPdropped":[0-9]+' <<<"$json" | head -n 1 | cut -d: -f2 || true)"
  echo "${s:-0} ${d:-0}"
}
