#!/usr/bin/env bash
# A real PowerDNS Recursor (Debian's 4.8) as a sender: a resolver on the loopback that
# forwards to a named from lib.sh, with dnstapFrameStreamServer in its Lua configuration.
# It logs only its outgoing queries and their responses (RESOLVER_QUERY/RESOLVER_RESPONSE),
# one Frame Streams connection per thread. Every question sent to it reaches named once and
# is stored once, paired, as kind 'resolver' with identity pdns1; named's rows match.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
require_cmd pdns_recursor dnsperf comm
export LC_ALL=C

PDNS_PID=""

start_postgres
collector_migrate
start_collector -u "$WORK/dnstap.sock" --postgres "$CONNINFO" --query-timeout 2
NAMED_PORT_="$(free_port)"
start_named ns1 127.0.0.1 "$NAMED_PORT_" "$COLLECTOR_SOCKET" 'fstrm-set-flush-timeout 1;'

PORT="$(free_port)"
DIR="$WORK/pdns"
mkdir -p "$DIR"
# Root hints on the loopback (pdns refreshes the root NS set at start: that query goes to
# 127.0.0.1:53 and nowhere else) and the test zone forwarded to named: no query leaves the
# machine. (Forwarding "." to named instead makes pdns SERVFAIL everything once named
# refuses the root refresh.)
cat >"$DIR/root.hints" <<EOF
.            3600000 IN NS a.root.test.
a.root.test. 3600000 IN A  127.0.0.1
EOF
cat >"$DIR/dnstap.lua" <<EOF
dnstapFrameStreamServer("$COLLECTOR_SOCKET", {logQueries=true, logResponses=true})
EOF
cat >"$DIR/recursor.conf" <<EOF
local-address=127.0.0.1
local-port=$PORT
daemon=no
socket-dir=$DIR
hint-file=$DIR/root.hints
forward-zones=$ZONE=127.0.0.1:$NAMED_PORT_
security-poll-suffix=
dnssec=off
threads=2
server-id=pdns1
lua-config-file=$DIR/dnstap.lua
quiet=no
loglevel=5
EOF
log "starting $(pdns_recursor --version 2>&1 | grep -oE 'PowerDNS Recursor [0-9.]+') on 127.0.0.1 port $PORT, forwarding to named port $NAMED_PORT_"
pdns_recursor --config-dir="$DIR" --disable-syslog >"$WORK/pdns-recursor.log" 2>&1 </dev/null &
PDNS_PID=$!
stop_at_exit "$PDNS_PID"
wait_answers pdns_recursor "$PDNS_PID" "$PORT"

make_queries "$WORK/all.txt"
# Distinct questions, no CNAMEs (the recursor would chase their targets itself), and not the
# zone's SOA (cached from the authority section of the readiness probe's NXDOMAIN): each one
# is exactly one query to named.
grep -v -e '^alias' -e "^$ZONE SOA" "$WORK/all.txt" | awk 'NR <= 500' >"$WORK/q.txt"
n="$(wc -l <"$WORK/q.txt")"
send_questions pdns_recursor "$PORT" "$WORK/q.txt" 1000
grep -q 'SERVFAIL' "$WORK/dnsperf.out" && { cat "$WORK/dnsperf.out" >&2; fail "pdns_recursor answered SERVFAIL"; }
log "pdns_recursor response codes: ($(grep -A1 'Response codes' "$WORK/dnsperf.out" | tr -s ' \n' ' '))"

OTHERS="dnstap.exchange WHERE identity IS DISTINCT FROM 'ns1'"
wait_for "(( \$(psql_value \"SELECT count(*) FROM $OTHERS\") > 0 ))" 10 || fail "no rows from pdns_recursor at all"
log "identities other than ns1: $(psql_value "SELECT coalesce(identity, '(null)') || '=' || count(*) FROM $OTHERS GROUP BY identity" | tr '\n' ' ')"
identity="$(psql_value "SELECT coalesce(identity, '') FROM $OTHERS LIMIT 1")"
R="dnstap.exchange WHERE identity = '$identity' AND qname NOT LIKE 'ready.%'"
wait_for "(( \$(psql_value \"SELECT count(*) FROM $R AND has_query AND has_response\") >= n ))" 20 || true
sleep 1
types="$(psql_value "SELECT coalesce(kind,'-') || '/' || coalesce(query_type,'-') || '/' || coalesce(response_type,'-') || '/' || coalesce(transport,'-') || '=' || count(*)
  FROM dnstap.exchange WHERE identity = '$identity' GROUP BY kind, query_type, response_type, transport ORDER BY 1" | tr '\n' ' ')"
log "$identity rows (kind/query_type/response_type/transport): $types"
awk '{print tolower($1), $2}' "$WORK/q.txt" | sort >"$WORK/expected.txt"
psql_value "SELECT qname || ' ' || qtype FROM $R" | sort >"$WORK/stored.txt"
got="$(psql_value "SELECT count(*) FROM $R")"
((got == n)) || fail "$identity: expected $n exchanges, found $got ($types); sent, not stored: $(
  comm -23 "$WORK/expected.txt" "$WORK/stored.txt" | head -n 5 | tr '\n' ';') stored, not sent: $(
  comm -13 "$WORK/expected.txt" "$WORK/stored.txt" | head -n 5 | tr '\n' ';')"
unpaired="$(psql_value "SELECT count(*) FROM $R AND NOT (has_query AND has_response)")"
((unpaired == 0)) || fail "$identity: $unpaired exchanges lack their query or response ($types)"
bad="$(psql_value "SELECT count(*) FROM $R AND (kind IS DISTINCT FROM 'resolver' OR query_type IS DISTINCT FROM 'RQ'
  OR response_type IS DISTINCT FROM 'RR' OR response_port IS DISTINCT FROM $NAMED_PORT_ OR rcode IS NULL)")"
((bad == 0)) || fail "$identity: $bad exchanges not resolver RQ/RR to named's port with an rcode ($types)"
cmp -s "$WORK/expected.txt" "$WORK/stored.txt" || {
  comm -3 "$WORK/expected.txt" "$WORK/stored.txt" | head -n 10 >&2
  fail "$identity: stored questions differ from those sent"
}
www="$(psql_value "SELECT answers::text FROM $R AND qname = 'www.example.com' AND qtype = 'A'")"
[[ "$www" == *192.0.2.80* ]] || fail "$identity: answers of www.example.com A lack 192.0.2.80: $www"
joined="$(psql_value "SELECT count(*) FROM (SELECT * FROM $R) r JOIN dnstap.exchange s ON s.identity = 'ns1'
  AND s.qname = r.qname AND s.qtype = r.qtype AND s.dns_id = r.dns_id AND s.query_port = r.query_port")"
((joined == n)) || fail "only $joined of $n exchanges of $identity match a named exchange on (qname, qtype, dns_id, port)"
conns="$(grep -c 'connection opened: unix:' "$WORK/collector.log" || true)"
log "$identity: $n resolver exchanges stored once, paired, matching named's; collector saw $conns Unix connections (named + one per recursor thread)"

_terminate "$PDNS_PID" 10 || true
PDNS_PID=""
sleep 0.5
log "collector, after pdns_recursor stopped: $(grep -E 'connection closed: unix:' "$WORK/collector.log" | tail -n 2 | tr '\n' ' ')"
stop_named ns1
stop_collector
[[ "$COLLECTOR_EXIT" == 0 ]] || fail "collector exited with status $COLLECTOR_EXIT"
received="$(collector_stat frames_received)"
stored="$(collector_stat messages_stored)"
dropped="$(collector_stat dropped_total)"
((received == stored + dropped)) || fail "invariant broken: frames_received=$received != $stored + $dropped"
((dropped == 0)) || fail "collector dropped $dropped frames: $(grep 'stats:' "$WORK/collector.log" | tail -n 1)"
