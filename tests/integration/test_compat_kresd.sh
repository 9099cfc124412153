#!/usr/bin/env bash
# A real Knot Resolver (Debian's kresd 5.6) as a sender: a resolver on the loopback that
# sends everything to a named from lib.sh (policy.STUB), with the dnstap module logging
# client queries and responses to the collector's socket. Every client query is stored
# once, paired, as kind 'client' with identity kresd1; named's rows are there too.
# kresd connects to the dnstap socket only when it starts (DESIGN.md): the collector first.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
require_cmd kresd dnsperf comm
export LC_ALL=C

KRESD_PID=""

start_postgres
collector_migrate
start_collector -u "$WORK/dnstap.sock" --postgres "$CONNINFO" --query-timeout 2
NAMED_PORT_="$(free_port)"
start_named ns1 127.0.0.1 "$NAMED_PORT_" "$COLLECTOR_SOCKET" 'fstrm-set-flush-timeout 1;'

PORT="$(free_port)"
DIR="$WORK/kresd"
mkdir -p "$DIR"
cat >"$DIR/kresd.conf" <<EOF
net.listen('127.0.0.1', $PORT, { kind = 'dns' })
-- Nothing leaves the loopback: no root priming, no trust anchor or clock checks against
-- the root, and every name goes to named.
modules.unload('priming')
modules.unload('detect_time_skew')
modules.unload('detect_time_jump')
modules.unload('ta_signal_query')
trust_anchors.remove('.')
cache.size = 10 * MB
modules = {
  dnstap = {
    socket_path = "$COLLECTOR_SOCKET",
    identity = "kresd1",
    client = { log_queries = true, log_responses = true },
  },
}
policy.add(policy.all(policy.STUB({ '127.0.0.1@$NAMED_PORT_' })))
EOF
log "starting kresd $(kresd --version | grep -oE '[0-9]+\.[0-9.]+') on 127.0.0.1 port $PORT, stub to named port $NAMED_PORT_"
kresd -n -q -c "$DIR/kresd.conf" "$DIR" >"$WORK/kresd.log" 2>&1 </dev/null &
KRESD_PID=$!
stop_at_exit "$KRESD_PID"
wait_answers kresd "$KRESD_PID" "$PORT"

# Distinct questions, each asked once: every one reaches named.
make_queries "$WORK/all.txt"
awk 'NR <= 500' "$WORK/all.txt" >"$WORK/q.txt"
n="$(wc -l <"$WORK/q.txt")"
send_questions kresd "$PORT" "$WORK/q.txt" 1000

C="dnstap.exchange WHERE identity = 'kresd1' AND qname NOT LIKE 'ready.%'"
wait_for "(( \$(psql_value \"SELECT count(*) FROM $C AND has_query AND has_response\") >= n ))" 20 || true
sleep 1
types="$(psql_value "SELECT coalesce(kind,'-') || '/' || coalesce(query_type,'-') || '/' || coalesce(response_type,'-') || '/' || coalesce(transport,'-') || '=' || count(*)
  FROM dnstap.exchange WHERE identity = 'kresd1' GROUP BY kind, query_type, response_type, transport ORDER BY 1" | tr '\n' ' ')"
log "kresd1 rows (kind/query_type/response_type/transport): $types"
outside="$(psql_value "SELECT count(*) FROM dnstap.exchange WHERE identity = 'kresd1' AND kind <> 'client'")"
((outside == 0)) || fail "kresd1 logged $outside non-client messages, only client logging is configured ($types)"
got="$(psql_value "SELECT count(*) FROM $C")"
((got == n)) || fail "kresd1: expected $n exchanges, found $got ($types)"
unpaired="$(psql_value "SELECT count(*) FROM $C AND NOT (has_query AND has_response)")"
((unpaired == 0)) || fail "kresd1: $unpaired exchanges lack their query or response ($types)"
bad="$(psql_value "SELECT count(*) FROM $C AND (query_type IS DISTINCT FROM 'CQ' OR response_type IS DISTINCT FROM 'CR'
  OR query_address IS DISTINCT FROM '127.0.0.1'::inet OR rcode IS NULL)")"
((bad == 0)) || fail "kresd1: $bad exchanges not CQ/CR from 127.0.0.1 with an rcode ($types)"
check_questions_stored kresd1 "$WORK/q.txt" "$C"
www="$(psql_value "SELECT answers::text FROM $C AND qname = 'www.example.com' AND qtype = 'A'")"
[[ "$www" == *192.0.2.80* ]] || fail "kresd1: answers of www.example.com A lack 192.0.2.80: $www"
dups="$(psql_value "SELECT count(*) FROM (SELECT 1 FROM $C GROUP BY qname, qtype, query_port, dns_id HAVING count(*) > 1) d")"
((dups == 0)) || fail "kresd1: $dups exchanges stored more than once"
named_rows="$(psql_value "SELECT count(*) FROM dnstap.exchange WHERE identity = 'ns1' AND qname IS DISTINCT FROM '$PROBE_QNAME'")"
((named_rows >= 1)) || fail "named stored no exchange from kresd"
log "kresd1: $n client exchanges stored once, paired, right questions; named has $named_rows exchanges from kresd"

_terminate "$KRESD_PID" 10 || true
KRESD_PID=""
sleep 0.5
log "collector, after kresd stopped: $(grep -E 'connection closed: unix:' "$WORK/collector.log" | tail -n 1)"
stop_named ns1
stop_collector
[[ "$COLLECTOR_EXIT" == 0 ]] || fail "collector exited with status $COLLECTOR_EXIT"
received="$(collector_stat frames_received)"
stored="$(collector_stat messages_stored)"
dropped="$(collector_stat dropped_total)"
((received == stored + dropped)) || fail "invariant broken: frames_received=$received != $stored + $dropped"
((dropped == 0)) || fail "collector dropped $dropped frames: $(grep 'stats:' "$WORK/collector.log" | tail -n 1)"
