#!/usr/bin/env bash
# A real dnsdist (Debian's 1.7) as a sender: a load balancer on the loopback in front of a
# named from lib.sh, logging every client query and response with DnstapLogAction /
# DnstapLogResponseAction to a FrameStreamUnixLogger on the collector's socket. Every client
# query is stored once, paired, as kind 'client' with identity dnsdist1; named's own rows
# are there too, one per query dnsdist passed on.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
require_cmd dnsdist dnsperf comm
export LC_ALL=C

DNSDIST_PID=""

start_postgres
collector_migrate
start_collector -u "$WORK/dnstap.sock" --postgres "$CONNINFO" --query-timeout 2
NAMED_PORT_="$(free_port)"
start_named ns1 127.0.0.1 "$NAMED_PORT_" "$COLLECTOR_SOCKET" 'fstrm-set-flush-timeout 1;'

PORT="$(free_port)"
CONSOLE_PORT="$(free_port)"
DIR="$WORK/dnsdist"
mkdir -p "$DIR"
cat >"$DIR/dnsdist.conf" <<EOF
setLocal("127.0.0.1:$PORT")
-- no security polling (a DNS query to the outside) and no console beyond the loopback
setSecurityPollSuffix("")
controlSocket("127.0.0.1:$CONSOLE_PORT")
newServer({address="127.0.0.1:$NAMED_PORT_", name="ns1", checkName="$PROBE_QNAME"})
fsul = newFrameStreamUnixLogger("$COLLECTOR_SOCKET")
addAction(AllRule(), DnstapLogAction("dnsdist1", fsul))
addResponseAction(AllRule(), DnstapLogResponseAction("dnsdist1", fsul))
EOF
dnsdist --check-config -C "$DIR/dnsdist.conf" >"$DIR/check.out" 2>&1 \
  || { cat "$DIR/check.out" >&2; fail "dnsdist --check-config rejected the configuration"; }
log "starting $(dnsdist --version | head -n 1) on 127.0.0.1 port $PORT in front of named port $NAMED_PORT_"
dnsdist --supervised --disable-syslog -C "$DIR/dnsdist.conf" >"$WORK/dnsdist.log" 2>&1 &
DNSDIST_PID=$!
stop_at_exit "$DNSDIST_PID"
wait_answers dnsdist "$DNSDIST_PID" "$PORT"

make_queries "$WORK/all.txt"
awk 'NR <= 500' "$WORK/all.txt" >"$WORK/q.txt"
n="$(wc -l <"$WORK/q.txt")"
send_questions dnsdist "$PORT" "$WORK/q.txt" 1000

C="dnstap.exchange WHERE identity = 'dnsdist1' AND qname NOT LIKE 'ready.%'"
wait_for "(( \$(psql_value \"SELECT count(*) FROM $C AND has_query AND has_response\") >= n ))" 20 || true
sleep 1
types="$(psql_value "SELECT coalesce(kind,'-') || '/' || coalesce(query_type,'-') || '/' || coalesce(response_type,'-') || '/' || coalesce(transport,'-') || '=' || count(*)
  FROM dnstap.exchange WHERE identity = 'dnsdist1' GROUP BY kind, query_type, response_type, transport ORDER BY 1" | tr '\n' ' ')"
log "dnsdist1 rows (kind/query_type/response_type/transport): $types"
got="$(psql_value "SELECT count(*) FROM $C")"
((got == n)) || fail "dnsdist1: expected $n exchanges, found $got ($types)"
unpaired="$(psql_value "SELECT count(*) FROM $C AND NOT (has_query AND has_response)")"
((unpaired == 0)) || fail "dnsdist1: $unpaired exchanges lack their query or response ($types)"
bad="$(psql_value "SELECT count(*) FROM $C AND (kind IS DISTINCT FROM 'client' OR query_type IS DISTINCT FROM 'CQ'
  OR response_type IS DISTINCT FROM 'CR' OR query_address IS DISTINCT FROM '127.0.0.1'::inet OR rcode IS NULL)")"
((bad == 0)) || fail "dnsdist1: $bad exchanges not client CQ/CR from 127.0.0.1 with an rcode ($types)"
check_questions_stored dnsdist1 "$WORK/q.txt" "$C"
www="$(psql_value "SELECT answers::text FROM $C AND qname = 'www.example.com' AND qtype = 'A'")"
[[ "$www" == *192.0.2.80* ]] || fail "dnsdist1: answers of www.example.com A lack 192.0.2.80: $www"
dups="$(psql_value "SELECT count(*) FROM (SELECT 1 FROM $C GROUP BY qname, qtype, query_port, dns_id HAVING count(*) > 1) d")"
((dups == 0)) || fail "dnsdist1: $dups exchanges stored more than once"

# named saw the same questions from dnsdist (plus dnsdist's health checks for the probe name).
N="dnstap.exchange WHERE identity = 'ns1' AND qname IS DISTINCT FROM '$PROBE_QNAME' AND qname NOT LIKE 'ready.%'"
named_rows="$(psql_value "SELECT count(*) FROM $N")"
((named_rows == n)) || fail "named stored $named_rows exchanges for the $n queries dnsdist passed on"
log "dnsdist1: $n client exchanges stored once, paired, right questions; named has the same $named_rows"

# dnsdist sends no STOP when it stops (DESIGN.md): the collector must see the connection end
# cleanly anyway, with nothing half-read.
_terminate "$DNSDIST_PID" 10 || true
DNSDIST_PID=""
wait_for "grep -q 'connection closed: unix:' '$WORK/collector.log'" 5 || true
closing="$(grep -E 'connection closed: unix:' "$WORK/collector.log" | tail -n 1 || true)"
log "collector, after dnsdist stopped: $closing"
stop_named ns1
stop_collector
[[ "$COLLECTOR_EXIT" == 0 ]] || fail "collector exited with status $COLLECTOR_EXIT"
received="$(collector_stat frames_received)"
stored="$(collector_stat messages_stored)"
dropped="$(collector_stat dropped_total)"
((received == stored + dropped)) || fail "invariant broken: frames_received=$received != $stored + $dropped"
((dropped == 0)) || fail "collector dropped $dropped frames: $(grep 'stats:' "$WORK/collector.log" | tail -n 1)"
