#!/usr/bin/env bash
# Every client query to a real named appears exactly once in dnstap.exchange, with the
# right qname, qtype and client address, within 5 seconds of the last query.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
require_cmd dnsperf comm

DEADLINE_S=5   # the promise: rows are in PostgreSQL this long after the last query
NAME=ns1

start_postgres
collector_migrate
start_collector -u "$WORK/dnstap.sock" --postgres "$CONNINFO"
PORT="$(free_port)"
# A large named-side queue so a burst is not dropped inside named before the collector
# even sees it (named counts those as DNSTAPdropped; checked below).
start_named "$NAME" 127.0.0.1 "$PORT" "$COLLECTOR_SOCKET" \
  'fstrm-set-input-queue-size 16384;' 'fstrm-set-flush-timeout 1;'

QUERIES="$WORK/queries.txt"
make_queries "$QUERIES"
# Names compare case-insensitively (stored lowercase), types as named prints them.
awk '{ print tolower($1), $2 }' "$QUERIES" | sort >"$WORK/expected.txt"
n_queries="$(wc -l <"$QUERIES")"
((n_queries >= 1000)) || fail "query file has only $n_queries queries"

before="$(named_dnstap_stats "$NAME" || true)"
log "named dnstap counters before: ${before:-unreachable}"

# Rate-limited and over UDP on the loopback, so nothing should be lost; -n 1 sends the
# file exactly once.
log "sending $n_queries queries with dnsperf"
dnsperf -s 127.0.0.1 -p "$PORT" -d "$QUERIES" -n 1 -c 4 -q 64 -Q 4000 -t 5 \
  >"$WORK/dnsperf.out" 2>&1 || { cat "$WORK/dnsperf.out" >&2; fail "dnsperf failed"; }
last_query=$EPOCHREALTIME
sent="$(awk '/Queries sent:/ {print $3}' "$WORK/dnsperf.out")"
completed="$(awk '/Queries completed:/ {print $3}' "$WORK/dnsperf.out")"
log "dnsperf: sent=$sent completed=$completed"
[[ "$sent" == "$n_queries" && "$completed" == "$sent" ]] \
  || { cat "$WORK/dnsperf.out" >&2; fail "dnsperf sent $sent / completed $completed of $n_queries queries"; }

# Our rows: this named's identity, minus the readiness probe of start_named.
ROWS="dnstap.exchange WHERE identity = '$NAME' AND qname IS DISTINCT FROM '$PROBE_QNAME'"
count_rows() { psql_value "SELECT count(*) FROM $ROWS"; }

# Poll until every query is stored or the deadline passes.
elapsed_ms() { echo $(( (${EPOCHREALTIME/./} - ${last_query/./}) / 1000 )); }
count=0
while :; do
  count="$(count_rows)"
  ((count >= sent)) && break
  (($(elapsed_ms) >= DEADLINE_S * 1000)) && break
  sleep 0.1
done
took_ms="$(elapsed_ms)"
if ((count < sent)); then
  # Diagnose: do the rows come late, or never?
  late=0
  wait_for "(( \$(count_rows) >= $sent ))" 25 && late=1
  now="$(count_rows)"
  if ((late)); then
    fail "only $count of $sent exchanges stored ${DEADLINE_S}s after the last query (all $now arrived after $(elapsed_ms) ms)"
  fi
  collector_running || log "the collector is no longer running"
  fail "only $count of $sent exchanges stored ${DEADLINE_S}s after the last query ($now after $(elapsed_ms) ms)"
fi
log "$count exchanges stored $took_ms ms after the last query"

# Give a straggling duplicate a moment to show up before counting exactly.
sleep 1
count="$(count_rows)"
((count == sent)) || fail "expected exactly $sent exchanges, found $count"

dups="$(psql_value "SELECT count(*) FROM (SELECT 1 FROM $ROWS
  GROUP BY qname, qtype, query_port, dns_id HAVING count(*) > 1) d")"
((dups == 0)) || fail "$dups (qname, qtype, query_port, dns_id) groups stored more than once"

psql_value "SELECT lower(qname) || ' ' || qtype FROM $ROWS" | sort >"$WORK/stored.txt"
if ! diff -q "$WORK/expected.txt" "$WORK/stored.txt" >/dev/null; then
  # Through files, not `comm | head`: head's early exit is a SIGPIPE failure under pipefail.
  comm -23 "$WORK/expected.txt" "$WORK/stored.txt" >"$WORK/missing.txt"
  comm -13 "$WORK/expected.txt" "$WORK/stored.txt" >"$WORK/unexpected.txt"
  log "$(wc -l <"$WORK/missing.txt") questions sent but not stored (first 10):"
  head -n 10 "$WORK/missing.txt" >&2
  log "$(wc -l <"$WORK/unexpected.txt") questions stored but not sent (first 10):"
  head -n 10 "$WORK/unexpected.txt" >&2
  fail "stored (qname, qtype) list differs from the query file"
fi

bad_addr="$(psql_value "SELECT count(*) FROM $ROWS AND query_address IS DISTINCT FROM '127.0.0.1'::inet")"
((bad_addr == 0)) || fail "$bad_addr exchanges with query_address other than 127.0.0.1: $(
  psql_value "SELECT DISTINCT query_address FROM $ROWS LIMIT 5" | tr '\n' ' ')"

unpaired="$(psql_value "SELECT count(*) FROM $ROWS AND NOT (has_query AND has_response)")"
((unpaired == 0)) || fail "$unpaired exchanges lack their query or response"

# named types the query by whether it will recurse (recursion no: AQ) and the response
# by the query's RD bit (dnsperf sets RD: CR). Check the collector kept what named sent.
types="$(psql_value "SELECT coalesce(kind,'-') || '/' || coalesce(query_type,'-') || '/' ||
  coalesce(response_type,'-') || '=' || count(*) FROM $ROWS
  GROUP BY kind, query_type, response_type ORDER BY 1" | tr '\n' ' ')"
log "kind/query_type/response_type: $types"
bad_types="$(psql_value "SELECT count(*) FROM $ROWS AND (query_type IS DISTINCT FROM 'AQ'
  OR response_type IS DISTINCT FROM 'CR')")"
((bad_types == 0)) || fail "$bad_types exchanges not typed AQ/CR as named sent them: $types"

# Spot checks of decoded content.
rcodes="$(psql_value "SELECT rcode || '=' || count(*) FROM $ROWS GROUP BY rcode ORDER BY 1" | tr '\n' ' ')"
log "rcodes: $rcodes"
nx_expected="$(grep -ciE '^nx' "$QUERIES")"
nx="$(psql_value "SELECT count(*) FROM $ROWS AND rcode = 'NXDOMAIN'")"
((nx == nx_expected)) || fail "expected $nx_expected NXDOMAIN exchanges, found $nx ($rcodes)"
www="$(psql_value "SELECT answers::text FROM $ROWS AND qname = 'www.example.com' AND qtype = 'A'")"
[[ "$www" == *192.0.2.80* ]] || fail "answers of www.example.com A lack 192.0.2.80: $www"

after="$(named_dnstap_stats "$NAME" || true)"
if [[ -n "$before" && -n "$after" ]]; then
  log "named dnstap counters after: $after"
  b_ok="${before#DNSTAPsuccess=}"; b_ok="${b_ok%% *}"
  a_ok="${after#DNSTAPsuccess=}"; a_ok="${a_ok%% *}"
  a_drop="${after##*DNSTAPdropped=}"
  ((a_drop == 0)) || fail "named dropped $a_drop dnstap messages"
  ((a_ok - b_ok == 2 * sent)) \
    || fail "named sent $((a_ok - b_ok)) dnstap messages for $sent queries (expected $((2 * sent)))"
else
  log "named statistics channel unreachable; skipping the DNSTAPsuccess cross-check"
fi

stop_named "$NAME"
stop_collector
[[ "$COLLECTOR_EXIT" == 0 ]] || fail "collector exited with status $COLLECTOR_EXIT after SIGTERM (expected 0)"
dropped="$(collector_stat dropped_total || true)"
[[ -z "$dropped" || "$dropped" == 0 ]] || fail "collector reports dropped_total=$dropped"

# Nothing more may appear after the drain (no duplicates written at shutdown).
count="$(count_rows)"
((count == sent)) || fail "after shutdown: expected $sent exchanges, found $count"
log "all $sent client queries stored exactly once"
