#!/usr/bin/env bash
# Prometheus metrics (--metrics 127.0.0.1:PORT) tell the truth about a real run:
#   - before named connects: connections_active 0, database_up 1;
#   - while named is connected: connections_active 1;
#   - after N queries to named: frames_received_total +2N, pairs_matched_total +N,
#     rows_written_total +N, messages_stored_total +2N, received_bytes_total up, a batch
#     written (batch latency sum up), nothing dropped, queue empty, spool empty;
#   - after named stops: connections_active 0; the final stats line agrees with the last scrape;
#   - the exposition is valid text format 0.0.4: every sample line matches the sample grammar,
#     every family has # HELP and # TYPE before its samples, counter samples end in _total,
#     _sum/_count only belong to summaries and histograms, no series appears twice.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
require_cmd dnsperf curl
PYTHON=/usr/bin/python3
[[ -x "$PYTHON" ]] || fail "$PYTHON not found"

NAME=ns1
N=300
MPORT="$(free_port)"
URL="http://127.0.0.1:$MPORT/metrics"

start_postgres
collector_migrate
start_collector -u "$WORK/dnstap.sock" --postgres "$CONNINFO" --metrics "127.0.0.1:$MPORT"

# scrape: fetch the metrics into a new $WORK/scrape.XXXXXX file; prints its name (called
# in $(...), so the name cannot come from a counter in this shell).
scrape() {
  local f
  f="$(mktemp "$WORK/scrape.XXXXXX")"
  curl -fsS --max-time 5 -D "$f.headers" -o "$f" "$URL" || return 1
  printf '%s\n' "$f"
}
# metric FILE SERIES: the value of SERIES (a full name with labels) in FILE; fails if absent.
metric() {
  local v
  v="$(awk -v s="$2" '$1 == s { print $2; found = 1 } END { exit !found }' "$1")" \
    || fail "metric $2 missing from $(basename "$1"): $(grep -v '^#' "$1" | cut -d' ' -f1 | tr '\n' ' ')"
  printf '%s\n' "$v"
}
M=dnstap_collector_
# Integer value of a counter or gauge (they are integers here, printed without exponent).
ival() {
  local v
  v="$(metric "$1" "$2")"
  [[ "$v" =~ ^[0-9]+$ ]] || fail "$2 = '$v' is not a non-negative integer"
  printf '%s\n' "$v"
}

wait_for "curl -fsS --max-time 2 -o /dev/null '$URL'" 15 || fail "no metrics at $URL"
s0="$(scrape)" || fail "scrape failed"
grep -qi '^content-type: text/plain' "$s0.headers" \
  || fail "metrics Content-Type is not text/plain: $(grep -i '^content-type' "$s0.headers")"
[[ "$(ival "$s0" ${M}connections_active)" == 0 ]] || fail "connections_active before named: $(metric "$s0" ${M}connections_active)"
[[ "$(ival "$s0" ${M}database_up)" == 1 ]] || fail "database_up is $(metric "$s0" ${M}database_up) with PostgreSQL running"
[[ "$(ival "$s0" ${M}frames_received_total)" == 0 ]] || fail "frames_received_total is not 0 before any sender"

PORT="$(free_port)"
start_named "$NAME" 127.0.0.1 "$PORT" "$COLLECTOR_SOCKET" 'fstrm-set-input-queue-size 16384;' 'fstrm-set-flush-timeout 1;'
# The readiness probe: 1 exchange, 2 frames. Wait until it is written, then take the baseline.
wait_for "(( \$(psql_value 'SELECT count(*) FROM dnstap.exchange') >= 1 ))" 15 || fail "probe exchange not stored"
wait_for "s=\$(scrape) && (( \$(ival \"\$s\" ${M}rows_written_total) >= 1 ))" 10 || fail "rows_written_total never reached 1"
s1="$(scrape)"
[[ "$(ival "$s1" ${M}connections_active)" == 1 ]] || fail "connections_active is $(metric "$s1" ${M}connections_active) while named is connected"
[[ "$(ival "$s1" ${M}connections_total)" == 1 ]] || fail "connections_total is $(metric "$s1" ${M}connections_total) after one connection"
base_rows="$(psql_value 'SELECT count(*) FROM dnstap.exchange')"
declare -A B=()
for c in frames_received_total received_bytes_total messages_stored_total pairs_matched_total rows_written_total batches_written_total; do
  B[$c]="$(ival "$s1" "$M$c")"
done
B[batch_latency_seconds_sum]="$(metric "$s1" ${M}batch_latency_seconds_sum)"
log "baseline: $(for c in "${!B[@]}"; do printf '%s=%s ' "$c" "${B[$c]}"; done)"
[[ "${B[rows_written_total]}" == "$base_rows" ]] || fail "rows_written_total=${B[rows_written_total]} but $base_rows rows in PostgreSQL"

# N questions, each answered: 2N frames, N pairs, N rows.
make_queries "$WORK/all.txt"
head -n "$N" "$WORK/all.txt" >"$WORK/q.txt"
dnsperf -s 127.0.0.1 -p "$PORT" -d "$WORK/q.txt" -n 1 -c 2 -q 32 -Q 2000 -t 5 >"$WORK/dnsperf.out" 2>&1 \
  || { cat "$WORK/dnsperf.out" >&2; fail "dnsperf failed"; }
completed="$(awk '/Queries completed:/ {print $3}' "$WORK/dnsperf.out")"
[[ "$completed" == "$N" ]] || { cat "$WORK/dnsperf.out" >&2; fail "dnsperf completed $completed of $N"; }

want_rows=$((base_rows + N))
wait_for "(( \$(psql_value 'SELECT count(*) FROM dnstap.exchange') >= $want_rows ))" 20 \
  || fail "only $(psql_value 'SELECT count(*) FROM dnstap.exchange') of $want_rows rows stored"
wait_for "s=\$(scrape) && (( \$(ival \"\$s\" ${M}rows_written_total) >= $want_rows ))" 10 \
  || fail "rows_written_total stays below $want_rows though PostgreSQL has the rows"
sleep 1   # anything late (a duplicate row, a stray frame) shows up in the next scrape
s2="$(scrape)"
delta() { echo $(($(ival "$s2" "$M$1") - B[$1])); }
log "after $N queries: frames +$(delta frames_received_total) bytes +$(delta received_bytes_total) stored +$(delta messages_stored_total) pairs +$(delta pairs_matched_total) rows +$(delta rows_written_total) batches +$(delta batches_written_total)"
(($(delta frames_received_total) == 2 * N)) || fail "frames_received_total rose by $(delta frames_received_total), expected $((2 * N))"
# named writes over the Unix socket: the per-kind counter says so, and TCP saw nothing.
[[ "$(ival "$s2" "${M}connection_frames_total{kind=\"unix\"}")" == "$(ival "$s2" ${M}frames_received_total)" ]] \
  || fail "connection_frames_total{kind=\"unix\"} differs from frames_received_total"
[[ "$(ival "$s2" "${M}connection_frames_total{kind=\"tcp\"}")" == 0 ]] || fail "TCP frames counted with no TCP sender"
(($(delta messages_stored_total) == 2 * N)) || fail "messages_stored_total rose by $(delta messages_stored_total), expected $((2 * N))"
(($(delta pairs_matched_total) == N)) || fail "pairs_matched_total rose by $(delta pairs_matched_total), expected $N"
(($(delta rows_written_total) == N)) || fail "rows_written_total rose by $(delta rows_written_total), expected $N"
(($(delta received_bytes_total) >= 2 * N * 50)) || fail "received_bytes_total rose by only $(delta received_bytes_total) for $((2 * N)) frames"
(($(delta batches_written_total) >= 1)) || fail "batches_written_total did not rise"
lat2="$(metric "$s2" ${M}batch_latency_seconds_sum)"
"$PYTHON" -c "import sys; sys.exit(0 if float('$lat2') > float('${B[batch_latency_seconds_sum]}') else 1)" \
  || fail "batch_latency_seconds_sum did not rise (${B[batch_latency_seconds_sum]} -> $lat2)"
rows_now="$(psql_value 'SELECT count(*) FROM dnstap.exchange')"
[[ "$(ival "$s2" ${M}rows_written_total)" == "$rows_now" ]] \
  || fail "rows_written_total=$(metric "$s2" ${M}rows_written_total) but $rows_now rows in PostgreSQL"
[[ "$(ival "$s2" ${M}connections_active)" == 1 ]] || fail "connections_active is $(metric "$s2" ${M}connections_active) while named is connected"
[[ "$(ival "$s2" ${M}database_up)" == 1 ]] || fail "database_up is $(metric "$s2" ${M}database_up)"
[[ "$(ival "$s2" ${M}queue_depth)" == 0 ]] || fail "queue_depth is $(metric "$s2" ${M}queue_depth) with everything stored"
[[ "$(ival "$s2" ${M}spool_bytes)" == 0 ]] || fail "spool_bytes is $(metric "$s2" ${M}spool_bytes) with PostgreSQL up"
for c in queries_timed_out_total responses_orphaned_total duplicates_total dns_parse_errors_total connections_rejected_total; do
  [[ "$(ival "$s2" "$M$c")" == 0 ]] || fail "$M$c is $(metric "$s2" "$M$c") in a clean run"
done
reasons="$(grep -oE "^${M}dropped_total\{reason=\"[a-z_]+\"\}" "$s2" | sed -E 's/.*reason="([a-z_]+)".*/\1/' | sort | tr '\n' ' ')"
for r in queue_full filtered; do
  [[ " $reasons" == *" $r "* ]] || fail "no dropped_total{reason=\"$r\"} series (reasons: $reasons)"
done
nonzero="$(awk -v m="${M}dropped_total{" 'index($1, m) == 1 && $2 != 0' "$s2")"
[[ -z "$nonzero" ]] || fail "drops in a clean run: $nonzero"

stop_named "$NAME"
wait_for "s=\$(scrape) && [[ \$(ival \"\$s\" ${M}connections_active) == 0 ]]" 10 \
  || fail "connections_active is still $(ival "$(scrape)" ${M}connections_active) after named stopped"
s3="$(scrape)"
[[ "$(ival "$s3" ${M}connections_total)" == 1 ]] || fail "connections_total is $(metric "$s3" ${M}connections_total) after one connection"

# The exposition format, on the busiest scrape.
cat >"$WORK/promcheck.py" <<'EOF'
import re, sys
SAMPLE = re.compile(r'^[a-zA-Z_:][a-zA-Z0-9_:]*(\{.*\})? [0-9.eE+-]+$')
NAME = re.compile(r'^[a-zA-Z_:][a-zA-Z0-9_:]*$')
LABELS = re.compile(r'^\{([a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\.)*")(,[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\.)*")*,?\}$')
errors, helps, types, seen, families_with_samples = [], {}, {}, set(), set()
text = open(sys.argv[1], encoding="utf-8").read()
if not text.endswith("\n"):
    errors.append("exposition does not end with a newline")
def family(name):
    # the family a sample belongs to: itself, or a summary/histogram it is a suffix of
    for suffix in ("_sum", "_count", "_bucket"):
        base = name[: -len(suffix)]
        if name.endswith(suffix) and types.get(base) in ("summary", "histogram"):
            return base
    return name
for i, line in enumerate(text.splitlines(), 1):
    if not line:
        continue
    if line.startswith("#"):
        parts = line.split(None, 3)
        if len(parts) >= 3 and parts[1] in ("HELP", "TYPE"):
            name = parts[2]
            if not NAME.match(name):
                errors.append(f"line {i}: bad metric name in {parts[1]}: {line}")
            if parts[1] == "HELP":
                if name in helps: errors.append(f"line {i}: second HELP for {name}")
                if len(parts) < 4 or not parts[3].strip(): errors.append(f"line {i}: empty HELP for {name}")
                helps[name] = i
            else:
                if name in types: errors.append(f"line {i}: second TYPE for {name}")
                t = parts[3].strip() if len(parts) == 4 else ""
                if t not in ("counter", "gauge", "summary", "histogram", "untyped"):
                    errors.append(f"line {i}: unknown TYPE '{t}' for {name}")
                if name in families_with_samples:
                    errors.append(f"line {i}: TYPE for {name} after its samples")
                types[name] = t
        continue
    if not SAMPLE.match(line):
        errors.append(f"line {i}: not a valid sample line: {line!r}")
        continue
    series, value = line.rsplit(" ", 1)
    m = re.match(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{.*\})?$', series)
    name, labels = m.group(1), m.group(2)
    if labels and not LABELS.match(labels):
        errors.append(f"line {i}: bad label set {labels}")
    try:
        float(value)
    except ValueError:
        errors.append(f"line {i}: value {value!r} is not a number")
    if series in seen:
        errors.append(f"line {i}: series {series} appears twice")
    seen.add(series)
    fam = family(name)
    families_with_samples.add(fam)
    if fam not in helps: errors.append(f"line {i}: {name} has no # HELP")
    if fam not in types:
        errors.append(f"line {i}: {name} has no # TYPE")
        continue
    t = types[fam]
    if t == "counter" and not name.endswith("_total"):
        errors.append(f"line {i}: counter {name} does not end with _total (TYPE {fam} counter)")
    if t in ("counter", "gauge") and re.search(r'_(sum|count|bucket)$', name) and fam == name:
        errors.append(f"line {i}: {t} {name} ends with a summary/histogram suffix; "
                      f"expose it as a summary (or a counter named ..._total)")
    if t == "counter" and float(value) < 0:
        errors.append(f"line {i}: counter {name} is negative")
for name in set(helps) | set(types):
    if name not in families_with_samples:
        errors.append(f"{name} has HELP/TYPE but no samples")
if errors:
    print("\n".join(errors))
    sys.exit(1)
print(f"{len(seen)} series in {len(types)} families, all valid")
EOF
for f in "$s0" "$s2"; do
  "$PYTHON" "$WORK/promcheck.py" "$f" >"$WORK/promcheck.out" 2>&1 || {
    cat "$WORK/promcheck.out" >&2
    fail "invalid Prometheus exposition in $(basename "$f") ($(wc -l <"$WORK/promcheck.out") problems, above)"
  }
  log "$(basename "$f"): $(cat "$WORK/promcheck.out")"
done

# The stats line at exit agrees with the last scrape (nothing happened in between).
stop_collector
[[ "$COLLECTOR_EXIT" == 0 ]] || fail "collector exited with status $COLLECTOR_EXIT"
for c in frames_received pairs_matched rows_written messages_stored; do
  st="$(collector_stat "$c")"
  [[ "$st" == "$(ival "$s3" "$M${c}_total")" ]] || fail "stats line $c=$st, last scrape ${M}${c}_total=$(metric "$s3" "$M${c}_total")"
done
log "metrics agree with named's traffic, PostgreSQL and the stats line"
