#!/usr/bin/env bash
# A real Knot DNS (Debian's knotd 3.2 with knot-module-dnstap) as a sender: an authoritative
# server for the test zone on the loopback, mod-dnstap with `sink: unix:SOCKET`. Every query
# is stored once, paired, as kind 'auth' (AQ/AR) with identity knot1 and the right answers.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
require_cmd knotd knotc dnsperf comm
export LC_ALL=C

KNOT_PID=""

start_postgres
collector_migrate
start_collector -u "$WORK/dnstap.sock" --postgres "$CONNINFO" --query-timeout 2

PORT="$(free_port)"
DIR="$WORK/knot"
mkdir -p "$DIR"
_write_zone "$DIR/$ZONE.zone"   # the zone lib.sh gives named
cat >"$DIR/knot.conf" <<EOF
server:
    rundir: "$DIR"
    listen: 127.0.0.1@$PORT
    pidfile: "$DIR/knot.pid"
log:
  - target: stderr
    any: info
database:
    storage: "$DIR/db"
mod-dnstap:
  - id: tap
    sink: "unix:$COLLECTOR_SOCKET"
    identity: knot1
    log-queries: on
    log-responses: on
template:
  - id: default
    storage: "$DIR"
    global-module: mod-dnstap/tap
zone:
  - domain: $ZONE
    file: "$DIR/$ZONE.zone"
EOF
knotc -c "$DIR/knot.conf" conf-check >"$DIR/check.out" 2>&1 \
  || { cat "$DIR/check.out" >&2; fail "knotc conf-check rejected the configuration"; }
log "starting knotd $(knotd --version | grep -oE '[0-9]+\.[0-9.]+') on 127.0.0.1 port $PORT, dnstap -> $COLLECTOR_SOCKET"
knotd -c "$DIR/knot.conf" >"$WORK/knotd.log" 2>&1 &
KNOT_PID=$!
stop_at_exit "$KNOT_PID"
deadline=$((SECONDS + 20))
until dig +norec +time=1 +tries=1 @127.0.0.1 -p "$PORT" "ready.$ZONE" A 2>/dev/null | grep -q 'status: NXDOMAIN'; do
  kill -0 "$KNOT_PID" 2>/dev/null || { KNOT_PID=""; fail "knotd exited during startup"; }
  ((SECONDS < deadline)) || fail "knotd does not answer on port $PORT"
  sleep 0.2
done
log "knotd pid $KNOT_PID answers"

make_queries "$WORK/q.txt"
n="$(wc -l <"$WORK/q.txt")"
send_questions knotd "$PORT" "$WORK/q.txt" 2000

C="dnstap.exchange WHERE identity = 'knot1' AND qname NOT LIKE 'ready.%'"
wait_for "(( \$(psql_value \"SELECT count(*) FROM $C AND has_query AND has_response\") >= n ))" 20 || true
sleep 1
types="$(psql_value "SELECT coalesce(kind,'-') || '/' || coalesce(query_type,'-') || '/' || coalesce(response_type,'-') || '/' || coalesce(transport,'-') || '=' || count(*)
  FROM dnstap.exchange WHERE identity = 'knot1' GROUP BY kind, query_type, response_type, transport ORDER BY 1" | tr '\n' ' ')"
log "knot1 rows (kind/query_type/response_type/transport): $types"
got="$(psql_value "SELECT count(*) FROM $C")"
((got == n)) || fail "knot1: expected $n exchanges, found $got ($types)"
unpaired="$(psql_value "SELECT count(*) FROM $C AND NOT (has_query AND has_response)")"
((unpaired == 0)) || fail "knot1: $unpaired exchanges lack their query or response ($types)"
bad="$(psql_value "SELECT count(*) FROM $C AND (kind IS DISTINCT FROM 'auth' OR query_type IS DISTINCT FROM 'AQ'
  OR response_type IS DISTINCT FROM 'AR' OR query_address IS DISTINCT FROM '127.0.0.1'::inet OR rcode IS NULL)")"
((bad == 0)) || fail "knot1: $bad exchanges not auth AQ/AR from 127.0.0.1 with an rcode ($types)"
awk '{print tolower($1), $2}' "$WORK/q.txt" | sort >"$WORK/expected.txt"
psql_value "SELECT qname || ' ' || qtype FROM $C" | sort >"$WORK/stored.txt"
cmp -s "$WORK/expected.txt" "$WORK/stored.txt" || {
  comm -3 "$WORK/expected.txt" "$WORK/stored.txt" | head -n 10 >&2
  fail "knot1: stored questions differ from those sent"
}
nx_expected="$(grep -ciE '^nx' "$WORK/q.txt")"
nx="$(psql_value "SELECT count(*) FROM $C AND rcode = 'NXDOMAIN'")"
((nx == nx_expected)) || fail "knot1: expected $nx_expected NXDOMAIN exchanges, found $nx"
www="$(psql_value "SELECT answers::text FROM $C AND qname = 'www.example.com' AND qtype = 'A'")"
[[ "$www" == *192.0.2.80* ]] || fail "knot1: answers of www.example.com A lack 192.0.2.80: $www"
dups="$(psql_value "SELECT count(*) FROM (SELECT 1 FROM $C GROUP BY qname, qtype, query_port, dns_id HAVING count(*) > 1) d")"
((dups == 0)) || fail "knot1: $dups exchanges stored more than once"
log "knot1: $n exchanges stored once, paired, right questions and answers"

_terminate "$KNOT_PID" 10 || true
KNOT_PID=""
sleep 0.5
log "collector, after knotd stopped: $(grep -E 'connection closed: unix:' "$WORK/collector.log" | tail -n 1)"
stop_collector
[[ "$COLLECTOR_EXIT" == 0 ]] || fail "collector exited with status $COLLECTOR_EXIT"
received="$(collector_stat frames_received)"
stored="$(collector_stat messages_stored)"
dropped="$(collector_stat dropped_total)"
((received == stored + dropped)) || fail "invariant broken: frames_received=$received != $stored + $dropped"
((dropped == 0)) || fail "collector dropped $dropped frames: $(grep 'stats:' "$WORK/collector.log" | tail -n 1)"
probe_msgs="$(psql_value "SELECT coalesce(sum(has_query::int + has_response::int), 0) FROM dnstap.exchange
  WHERE identity = 'knot1' AND qname LIKE 'ready.%'")"
((received == 2 * n + probe_msgs)) \
  || fail "frames_received=$received, expected $((2 * n + probe_msgs)) ($n queries and $probe_msgs readiness probe messages)"
