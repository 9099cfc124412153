#!/usr/bin/env bash
# `dnstap-collector tail` against a live collector (--tail-socket) fed by a real named:
#   - --suffix example.com: one line per exchange at or under example.com (label boundary:
#     notexample.com and example.org are not shown), each name once;
#   - --json: one valid JSON object per exchange, the same questions as stored in PostgreSQL;
#   - --rcode NXDOMAIN: only the NXDOMAIN exchanges, all of them;
#   - --client 127.0.0.0/8 and --client ::1: only IPv4 / only that IPv6 client;
#   - killing tail clients (SIGKILL and SIGTERM) leaves the collector running and storing, and
#     the other tails keep receiving; tails exit when the collector stops.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
require_cmd dig
PYTHON=/usr/bin/python3
[[ -x "$PYTHON" ]] || fail "$PYTHON not found"
ip -6 addr show dev lo 2>/dev/null | grep -q 'inet6 ::1/' || fail "no ::1 on lo: the --client ::1 checks need it"

declare -A TAIL_PID=()
trap '_rc=$?; set +e; for _t in "${!TAIL_PID[@]}"; do [[ -n "${TAIL_PID[$_t]}" ]] && kill -KILL "${TAIL_PID[$_t]}" 2>/dev/null; done; (exit $_rc); _cleanup' EXIT

TAIL_SOCK="$WORK/tail.sock"
start_postgres
collector_migrate
start_collector -u "$WORK/dnstap.sock" --postgres "$CONNINFO" --tail-socket "$TAIL_SOCK"
[[ -S "$TAIL_SOCK" ]] || fail "collector did not create the tail socket $TAIL_SOCK"
mode="$(stat -c '%a' "$TAIL_SOCK")"
[[ "$mode" == 600 ]] || fail "tail socket mode is $mode, expected 600 (lines show client addresses)"
PORT="$(free_port)"
start_named ns1 127.0.0.1 "$PORT" "$COLLECTOR_SOCKET" 'fstrm-set-flush-timeout 1;'
wait_for "(( \$(psql_value 'SELECT count(*) FROM dnstap.exchange') >= 1 ))" 15 || fail "probe exchange not stored"

# start_tail NAME ARGS...: tail in the background into $WORK/tail-NAME.out.
n_tails=0
start_tail() {
  local name="$1"
  shift
  "$COLLECTOR" tail --tail-socket "$TAIL_SOCK" "$@" >"$WORK/tail-$name.out" 2>"$WORK/tail-$name.err" &
  TAIL_PID[$name]=$!
  _track_pid "${TAIL_PID[$name]}"
  n_tails=$((n_tails + 1))
}
start_tail suffix --suffix example.com
start_tail json --json
start_tail nx --rcode NXDOMAIN
start_tail v4 --client 127.0.0.0/8
start_tail v6 --client ::1
wait_for "(( \$(grep -c 'tail attached' '$WORK/collector.log') >= $n_tails ))" 10 \
  || fail "only $(grep -c 'tail attached' "$WORK/collector.log") of $n_tails tails attached: $(cat "$WORK"/tail-*.err)"
for t in "${!TAIL_PID[@]}"; do
  kill -0 "${TAIL_PID[$t]}" 2>/dev/null || fail "tail $t exited at once: $(cat "$WORK/tail-$t.err")"
done

# The questions: "SERVER QNAME QTYPE EXPECTED_RCODE". named serves example.com and refuses
# the rest.
cat >"$WORK/questions.txt" <<'EOF'
4 www.example.com A NOERROR
4 host1.example.com A NOERROR
4 host2.example.com AAAA NOERROR
4 alias4.example.com A NOERROR
4 example.com SOA NOERROR
4 Host3.EXAMPLE.com MX NOERROR
4 nx1.example.com A NXDOMAIN
4 nx2.example.com AAAA NXDOMAIN
4 NX3.Example.Com A NXDOMAIN
4 www.example.org A REFUSED
4 notexample.com A REFUSED
6 host4.example.com AAAA NOERROR
6 nx4.example.com A NXDOMAIN
6 www.example.net A REFUSED
6 host5.example.com A NOERROR
EOF
# ask FILE: send each question of FILE with dig, check its rcode.
ask() {
  local srv qn qt rc out
  while read -r srv qn qt rc; do
    out="$(dig +time=2 +tries=1 @"$([[ $srv == 6 ]] && echo ::1 || echo 127.0.0.1)" -p "$PORT" "$qn" "$qt" 2>&1)" || true
    grep -q "status: $rc" <<<"$out" || { printf '%s\n' "$out" >&2; fail "dig $qn $qt over IPv$srv: expected $rc"; }
  done <"$1"
}
ask "$WORK/questions.txt"
total="$(wc -l <"$WORK/questions.txt")"
# Our exchanges: all but start_named's readiness probe(s), sent before the tails attached.
count_rows() { psql_value "SELECT count(*) FROM dnstap.exchange WHERE qname IS DISTINCT FROM '$PROBE_QNAME'"; }
wait_for "(( \$(count_rows) >= $total ))" 15 || fail "only $(count_rows) of $total exchanges stored"

# Expected lines per tail.
lc() { tr '[:upper:]' '[:lower:]'; }
awk '{print $2}' "$WORK/questions.txt" | lc | awk '$1 == "example.com" || $1 ~ /\.example\.com$/' | sort >"$WORK/want-suffix.txt"
awk '{print $2}' "$WORK/questions.txt" | lc | sort >"$WORK/want-json.txt"
awk '$4 == "NXDOMAIN" {print $2}' "$WORK/questions.txt" | lc | sort >"$WORK/want-nx.txt"
awk '$1 == 4 {print $2}' "$WORK/questions.txt" | lc | sort >"$WORK/want-v4.txt"
awk '$1 == 6 {print $2}' "$WORK/questions.txt" | lc | sort >"$WORK/want-v6.txt"
lines() { grep -vc '^#' "$WORK/tail-$1.out" || true; }
for t in suffix json nx v4 v6; do
  want="$(wc -l <"$WORK/want-$t.txt")"
  wait_for "(( \$(lines $t) >= $want ))" 10 || true
done
sleep 1   # a line too many would show up now

# Text lines: "TIME TYPES IDENTITY CLIENT -> SERVER PROTO QNAME/CLASS/TYPE RCODE an=N LATENCYus".
# qnames_of NAME: the lowercase qnames of that tail's text lines.
qnames_of() { grep -v '^#' "$WORK/tail-$1.out" | grep -oE '[^ ]+/IN/[A-Z0-9]+' | sed -E 's#/IN/[A-Z0-9]+$##' | lc | sort; }
check_tail() { # check_tail NAME DESCRIPTION
  local t="$1" what="$2"
  qnames_of "$t" >"$WORK/got-$t.txt"
  local n got
  n="$(lines "$t")"
  got="$(wc -l <"$WORK/got-$t.txt")"
  ((n == got)) || { cat "$WORK/tail-$t.out" >&2; fail "tail $what: $n lines but $got with a question"; }
  if ! cmp -s "$WORK/want-$t.txt" "$WORK/got-$t.txt"; then
    log "tail $what output:"
    cat "$WORK/tail-$t.out" >&2
    diff "$WORK/want-$t.txt" "$WORK/got-$t.txt" >&2 || true
    fail "tail $what shows other names than expected (< expected, > shown)"
  fi
  log "tail $what: $n lines, the expected names"
}
check_tail suffix "--suffix example.com"
check_tail nx "--rcode NXDOMAIN"
check_tail v4 "--client 127.0.0.0/8"
check_tail v6 "--client ::1"
bad="$(grep -v '^#' "$WORK/tail-nx.out" | grep -vc ' NXDOMAIN ' || true)"
((bad == 0)) || fail "tail --rcode NXDOMAIN shows $bad lines without NXDOMAIN: $(cat "$WORK/tail-nx.out")"
bad="$(grep -v '^#' "$WORK/tail-v4.out" | grep -vc ' 127\.0\.0\.1:[0-9]* -> ' || true)"
((bad == 0)) || fail "tail --client 127.0.0.0/8 shows $bad lines from other clients: $(cat "$WORK/tail-v4.out")"
bad="$(grep -v '^#' "$WORK/tail-v6.out" | grep -vc ' \[::1\]:[0-9]* -> ' || true)"
((bad == 0)) || fail "tail --client ::1 shows $bad lines from other clients: $(cat "$WORK/tail-v6.out")"
bad="$(grep -v '^#' "$WORK/tail-suffix.out" | grep -vc ' ns1 ' || true)"
((bad == 0)) || fail "tail lines without the identity ns1: $(cat "$WORK/tail-suffix.out")"

# --json: valid objects, the questions stored in PostgreSQL (less the probe, sent before).
cat >"$WORK/tailjson.py" <<'EOF'
import json, sys
for i, line in enumerate(open(sys.argv[1]), 1):
    if line.startswith("#"):
        continue
    try:
        o = json.loads(line)
    except ValueError as e:
        sys.exit(f"line {i} is not JSON ({e}): {line[:300]}")
    if not isinstance(o, dict) or "qname" not in o:
        sys.exit(f"line {i}: not an object with a qname: {line[:300]}")
    print(o["qname"], o.get("qtype"), o.get("rcode"), json.dumps(o.get("has_query")),
          json.dumps(o.get("has_response")), o.get("query_address"))
EOF
"$PYTHON" "$WORK/tailjson.py" "$WORK/tail-json.out" >"$WORK/json.cols" 2>"$WORK/json.err" \
  || fail "tail --json: $(cat "$WORK/json.err")"
awk '{print $1}' "$WORK/json.cols" | sort >"$WORK/got-json.txt"
cmp -s "$WORK/want-json.txt" "$WORK/got-json.txt" \
  || { diff "$WORK/want-json.txt" "$WORK/got-json.txt" >&2; fail "tail --json shows other names than sent"; }
psql_value "SELECT qname || ' ' || qtype || ' ' || rcode || ' true true ' || host(query_address) FROM dnstap.exchange
  WHERE qname <> '$PROBE_QNAME'" | sort >"$WORK/db.cols"
sort "$WORK/json.cols" >"$WORK/json.sorted"
cmp -s "$WORK/db.cols" "$WORK/json.sorted" \
  || { diff "$WORK/db.cols" "$WORK/json.sorted" >&2; fail "tail --json (>) differs from the rows in PostgreSQL (<)"; }
log "tail --json: $(wc -l <"$WORK/json.cols") valid objects, as stored in PostgreSQL"

# Kill two tails outright; the collector keeps running, storing and feeding the others.
kill -KILL "${TAIL_PID[suffix]}"; wait "${TAIL_PID[suffix]}" 2>/dev/null || true; TAIL_PID[suffix]=""
kill -TERM "${TAIL_PID[json]}"; wait "${TAIL_PID[json]}" 2>/dev/null || true; TAIL_PID[json]=""
cat >"$WORK/more.txt" <<'EOF'
4 host6.example.com A NOERROR
4 nx5.example.com A NXDOMAIN
6 nx6.example.com AAAA NXDOMAIN
EOF
ask "$WORK/more.txt"
collector_running || fail "collector died after tail clients were killed"
total=$((total + 3))
wait_for "(( \$(count_rows) >= $total ))" 15 || fail "after killing tails: only $(count_rows) of $total exchanges stored"
# The collector notices a gone tail when it next writes to it (lines for both came since).
wait_for "(( \$(grep -c 'tail detached' '$WORK/collector.log') >= 2 ))" 5 \
  || fail "collector logged $(grep -c 'tail detached' "$WORK/collector.log") 'tail detached' lines for 2 killed tails"
printf 'nx5.example.com\nnx6.example.com\n' >>"$WORK/want-nx.txt"
sort -o "$WORK/want-nx.txt" "$WORK/want-nx.txt"
wait_for "(( \$(lines nx) >= $(wc -l <"$WORK/want-nx.txt") ))" 10 || true
check_tail nx "--rcode NXDOMAIN (after two tails were killed)"

# Tails end when the collector stops.
stop_named ns1
stop_collector
[[ "$COLLECTOR_EXIT" == 0 ]] || fail "collector exited with status $COLLECTOR_EXIT"
rows="$(count_rows)"
((rows == total)) || fail "expected $total exchanges after shutdown, found $rows"
for t in nx v4 v6; do
  wait_for "! kill -0 ${TAIL_PID[$t]}" 10 || fail "tail $t still running 10 s after the collector stopped"
  rc=0; wait "${TAIL_PID[$t]}" || rc=$?
  TAIL_PID[$t]=""
  log "tail $t exited with status $rc after the collector stopped"
done
log "tail filters and lifecycle as expected"
