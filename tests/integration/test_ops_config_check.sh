#!/usr/bin/env bash
# Configuration checking and the privacy options, end to end:
#   1. `serve --check --config deploy/config.example.toml` exits 0 and starts nothing;
#   2. an unknown key, a bad value (partition = "week"), a value of the wrong type and a bad
#      flag exit non-zero naming the key (FILE:LINE: section.key) or the flag;
#   3. --client-prefix-v4 24 --client-prefix-v6 56 (flags): a BIND resolver (client + resolver
#      dnstap, forwarding example.com to a BIND authoritative server, both into one collector)
#      has its client rows stored as 127.0.0.0 and ::, every exchange still paired;
#   4. [privacy] exclude_kinds = ["client"] (config file): no client rows, the client messages
#      (CQ/CR as dnstap-read counts them in the -w file) counted in dropped_filtered, the other
#      exchanges stored and paired;
#   5. --check refuses what serve refuses at start (metrics address, tcp_allow entries,
#      --storage-yield without overflow files to hold the frames).
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
require_cmd named named-checkconf dig dnstap-read
[[ -f "$SOURCE_DIR/deploy/config.example.toml" ]] || fail "deploy/config.example.toml missing"
ip -6 addr show dev lo 2>/dev/null | grep -q 'inet6 ::1/' || fail "no ::1 on lo: the IPv6 prefix check needs it"
require_collector

# Independent findings are collected and reported together at the end, so one does not hide
# the next: later_fail MSG.
LATER=()
later_fail() { log "FAILED: $*"; LATER+=("$*"); }

# ---------------------------------------------------------------------------------------
# 1 + 2: --check
# check_rejects DESCRIPTION EXPECTED_TEXT ARGS...: `serve --check ARGS` must exit non-zero and
# print EXPECTED_TEXT (a fixed string).
# With CHECK_FAIL=later_fail the failure is collected instead.
check_rejects() {
  local what="$1" want="$2" rc=0 f="${CHECK_FAIL:-fail}"
  shift 2
  "$COLLECTOR" serve --check "$@" >"$WORK/check.out" 2>&1 || rc=$?
  ((rc != 0)) || { $f "--check accepted $what (exit 0): $(cat "$WORK/check.out")"; return 0; }
  grep -qF -- "$want" "$WORK/check.out" || { $f "--check rejected $what (exit $rc) without naming '$want': $(cat "$WORK/check.out")"; return 0; }
  log "--check rejects $what (exit $rc): $(head -n 1 "$WORK/check.out")"
}

example_sock_existed=0
[[ -e /run/dnstap-collector/dnstap.sock ]] && example_sock_existed=1
rc=0
"$COLLECTOR" serve --check --config "$SOURCE_DIR/deploy/config.example.toml" >"$WORK/check.out" 2>&1 || rc=$?
((rc == 0)) || fail "--check rejects deploy/config.example.toml (exit $rc): $(cat "$WORK/check.out")"
log "--check accepts deploy/config.example.toml: $(cat "$WORK/check.out")"
# It starts nothing: the example's socket was not created.
((example_sock_existed)) || [[ ! -e /run/dnstap-collector/dnstap.sock ]] || fail "--check created /run/dnstap-collector/dnstap.sock"

# A valid small config of our own, then broken copies of it (line numbers matter).
cat >"$WORK/good.toml" <<EOF
[listen]
unix = ["$WORK/never.sock"]

[postgres]
conninfo = "dbname=never"
partition = "day"

[privacy]
client_prefix_v4 = 24
EOF
"$COLLECTOR" serve --check --config "$WORK/good.toml" >"$WORK/check.out" 2>&1 \
  || fail "--check rejects a valid config: $(cat "$WORK/check.out")"
[[ ! -e "$WORK/never.sock" ]] || fail "--check created the socket $WORK/never.sock"

sed '3a bogus_key = 3' "$WORK/good.toml" >"$WORK/unknown.toml"   # line 4, in [listen]
check_rejects "an unknown key" "unknown.toml:4: listen.bogus_key" --config "$WORK/unknown.toml"
grep -qi 'unknown' "$WORK/check.out" || fail "unknown key message does not say 'unknown': $(cat "$WORK/check.out")"
printf '[nosuchsection]\nx = 1\n' >"$WORK/section.toml"
check_rejects "an unknown section" "section.toml:2: nosuchsection.x" --config "$WORK/section.toml"
sed 's/partition = "day"/partition = "week"/' "$WORK/good.toml" >"$WORK/week.toml"   # line 6
check_rejects 'partition = "week"' "week.toml:6: postgres.partition" --config "$WORK/week.toml"
grep -qF "week" "$WORK/check.out" || fail "the partition message does not show the bad value: $(cat "$WORK/check.out")"
sed 's/client_prefix_v4 = 24/client_prefix_v4 = 33/' "$WORK/good.toml" >"$WORK/prefix.toml"   # line 9
check_rejects "client_prefix_v4 = 33" "prefix.toml:9: privacy.client_prefix_v4" --config "$WORK/prefix.toml"
sed 's/client_prefix_v4 = 24/client_prefix_v4 = "many"/' "$WORK/good.toml" >"$WORK/type.toml"
check_rejects 'client_prefix_v4 = "many"' "type.toml:9: privacy.client_prefix_v4" --config "$WORK/type.toml"
sed 's/client_prefix_v4 = 24/exclude_kinds = ["clients"]/' "$WORK/good.toml" >"$WORK/kind.toml"
check_rejects 'exclude_kinds = ["clients"]' "kind.toml:9: privacy.exclude_kinds" --config "$WORK/kind.toml"
printf '[listen\nunix = ["x"]\n' >"$WORK/syntax.toml"
check_rejects "a TOML syntax error" "syntax.toml:1" --config "$WORK/syntax.toml"
check_rejects "a missing config file" "$WORK/nonexistent.toml" --config "$WORK/nonexistent.toml"
check_rejects "--partition week" "--partition" --config "$WORK/good.toml" --partition week
check_rejects "an unknown flag" "--no-such-flag" --config "$WORK/good.toml" --no-such-flag
check_rejects "--exclude-kind bogus" "--exclude-kind" --config "$WORK/good.toml" --exclude-kind bogus
check_rejects "--storage-yield without --overflow-dir" "--overflow-dir" --config "$WORK/good.toml" --storage-yield

# ---------------------------------------------------------------------------------------
# 3 + 4: privacy end to end, with a real resolver in front of a real authoritative server.
start_postgres
collector_migrate
AUTH_PORT="$(free_port)"
RES_PORT="$(free_port)"

# start_resolver: named 'res1' on 127.0.0.1 and ::1 port RES_PORT, recursion yes, everything
# forwarded to ns1 (the root too: nothing leaves the loopback), dnstap client + resolver.
start_resolver() {
  local dir="$WORK/named-res1"
  mkdir -p "$dir"
  cat >"$dir/named.conf" <<EOF
options {
	directory "$dir";
	pid-file "$dir/named.pid";
	session-keyfile "$dir/session.key";
	managed-keys-directory "$dir";
	listen-on port $RES_PORT { 127.0.0.1; };
	listen-on-v6 port $RES_PORT { ::1; };
	recursion yes;
	allow-recursion { 127.0.0.0/8; ::1; };
	dnssec-validation no;
	notify no;
	forward only;
	forwarders { 127.0.0.1 port $AUTH_PORT; };
	dnstap { client; resolver; };
	dnstap-output unix "$COLLECTOR_SOCKET";
	dnstap-identity "res1";
	fstrm-set-flush-timeout 1;
	fstrm-set-reopen-interval 1;
};
controls { };
EOF
  chown -R bind:bind "$dir"
  named-checkconf "$dir/named.conf" >"$dir/checkconf.out" 2>&1 || { cat "$dir/checkconf.out" >&2; fail "named-checkconf rejected the resolver config"; }
  log "starting resolver named 'res1' on 127.0.0.1/::1 port $RES_PORT, forwarding to port $AUTH_PORT"
  named -u bind -c "$dir/named.conf" -g -n 2 >"$WORK/named-res1.log" 2>&1 &
  NAMED_PID[res1]=$!
  _track_pid "${NAMED_PID[res1]}"
  local deadline=$((SECONDS + 30))
  until dig +time=1 +tries=1 @127.0.0.1 -p "$RES_PORT" "ready.$ZONE" A 2>/dev/null | grep -q 'status: NXDOMAIN'; do
    kill -0 "${NAMED_PID[res1]}" 2>/dev/null || { NAMED_PID[res1]=""; fail "resolver named exited during startup"; }
    ((SECONDS < deadline)) || fail "resolver named does not answer within 30 s"
    sleep 0.2
  done
}

# run_round NAME COLLECTOR_ARGS...: collector with those arguments (and -w NAME.fstrm), both
# nameds, a fixed set of questions (distinct names per round: nothing comes from the cache),
# then everything stopped so the rows and the file are final.
run_round() {
  local round="$1" q
  shift
  psql_value "TRUNCATE dnstap.exchange" >/dev/null
  start_collector -u "$WORK/dnstap.sock" --postgres "$CONNINFO" -w "$WORK/$round.fstrm" --query-timeout 2 "$@"
  start_named ns1 127.0.0.1 "$AUTH_PORT" "$COLLECTOR_SOCKET" 'fstrm-set-flush-timeout 1;'
  start_resolver
  for q in "www A" "host1 A" "host2 AAAA" "nx-$round-1 A" "alias4 A" "Host3 MX"; do
    read -r n t <<<"$q"
    dig +time=3 +tries=1 @127.0.0.1 -p "$RES_PORT" "$n.$round.$ZONE" "$t" >/dev/null || true  # NXDOMAIN: a name per round
    dig +time=3 +tries=1 @127.0.0.1 -p "$RES_PORT" "$n.$ZONE" "$t" >/dev/null || fail "dig $n.$ZONE $t failed"
  done
  dig +time=3 +tries=1 @::1 -p "$RES_PORT" "host5.$ZONE" A >/dev/null || fail "dig @::1 failed"
  dig +time=3 +tries=1 @::1 -p "$RES_PORT" +tcp "host6.$ZONE" AAAA >/dev/null || fail "dig @::1 +tcp failed"
  dig +time=3 +tries=1 +norec @127.0.0.1 -p "$AUTH_PORT" "host7.$ZONE" A >/dev/null || fail "dig to ns1 failed"
  sleep 1.5
  stop_named res1
  stop_named ns1
  sleep 0.5
  stop_collector
  [[ "$COLLECTOR_EXIT" == 0 ]] || fail "collector exited with status $COLLECTOR_EXIT"
  cp "$WORK/collector.log" "$WORK/collector-$round.log"
  dnstap-read "$WORK/$round.fstrm" >"$WORK/$round.txt" || fail "dnstap-read $round.fstrm failed"
  log "round $round: $(awk '{print $3}' "$WORK/$round.txt" | sort | uniq -c | awk '{printf "%s=%s ", $2, $1}')"
}
summary() {
  psql_value "SELECT coalesce(identity,'-') || ' ' || coalesce(kind,'-') || ' ' || coalesce(query_type,'-') || '/' || coalesce(response_type,'-')
    || ' ' || coalesce(host(query_address),'-') || ' = ' || count(*) FROM dnstap.exchange
    GROUP BY identity, kind, query_type, response_type, query_address ORDER BY 1" | tr '\n' ';'
}

# Round 1: address truncation by flags.
run_round prefix --client-prefix-v4 24 --client-prefix-v6 56
rows="$(summary)"
log "rows: $rows"
C="dnstap.exchange WHERE identity = 'res1' AND kind = 'client'"
n4="$(psql_value "SELECT count(*) FROM $C AND query_address = '127.0.0.0'")"
n6="$(psql_value "SELECT count(*) FROM $C AND query_address = '::'")"
nc="$(psql_value "SELECT count(*) FROM $C")"
((n4 >= 12 && n6 == 2 && n4 + n6 == nc)) \
  || fail "client rows: $n4 from 127.0.0.0, $n6 from :: of $nc (expected >= 12 and 2, nothing else): $rows"
real="$(psql_value "SELECT count(*) FROM dnstap.exchange WHERE query_address IN ('127.0.0.1', '::1')")"
((real == 0)) || fail "$real rows still show the real client address 127.0.0.1 or ::1: $rows"
bad="$(psql_value "SELECT count(*) FROM dnstap.exchange WHERE NOT (query_address <<= '127.0.0.0/24' OR query_address <<= '::/56' OR query_address = '0.0.0.0')")"
((bad == 0)) || fail "$bad rows with a query_address outside 127.0.0.0/24 and ::/56: $rows"
# The server side is not a client address: kept as is.
srv="$(psql_value "SELECT count(*) FROM $C AND response_address NOT IN ('127.0.0.1', '::1')")"
((srv == 0)) || fail "$srv client rows with a changed response_address"
lone="$(psql_value "SELECT count(*) FROM dnstap.exchange WHERE NOT (has_query AND has_response)")"
((lone == 0)) || fail "$lone exchanges unpaired with truncated addresses: $rows"
nfile="$(wc -l <"$WORK/prefix.txt")"
stored="$(psql_value "SELECT sum(has_query::int + has_response::int) FROM dnstap.exchange")"
((stored == nfile)) || fail "the file holds $nfile messages, $stored stored"
log "--client-prefix-v4 24 / -v6 56: $nc client rows as 127.0.0.0 and ::, all paired"

# Round 2: exclude client messages, from the config file.
cat >"$WORK/exclude.toml" <<EOF
[privacy]
exclude_kinds = ["client"]
EOF
run_round exclude --config "$WORK/exclude.toml"
rows="$(summary)"
log "rows: $rows"
nclient_msgs="$(awk '$3 == "CQ" || $3 == "CR"' "$WORK/exclude.txt" | wc -l)"
# The client exchanges are res1's: CQ/CR with res1 on the server side. ns1 also sends CR
# (BIND types its response to an RD=1 query CLIENT_RESPONSE), but those answer AQs: auth
# exchanges, which are kept.
nres1_client_msgs="$(awk -v p=":$RES_PORT" '($3 == "CQ" || $3 == "CR") && substr($6, length($6) - length(p) + 1) == p' "$WORK/exclude.txt" | wc -l)"
nres_msgs="$(awk '$3 == "RQ" || $3 == "RR"' "$WORK/exclude.txt" | wc -l)"
nfile="$(wc -l <"$WORK/exclude.txt")"
((nres1_client_msgs > 0 && nres_msgs > 0)) || fail "the stream lacks res1 client ($nres1_client_msgs) or resolver ($nres_msgs) messages"
stats="$(grep -E 'stats:' "$WORK/collector-exclude.log" | tail -n 1)"
filtered="$(grep -oE 'dropped_filtered=[0-9]+' <<<"$stats" | cut -d= -f2 || true)"
log "file: $nfile messages, $nclient_msgs CQ/CR of which $nres1_client_msgs res1's; collector: $stats"
dropped_total="$(collector_stat dropped_total)"
stored_msgs="$(collector_stat messages_stored)"
((stored_msgs + dropped_total == nfile)) \
  || fail "messages_stored=$stored_msgs + dropped_total=$dropped_total != $nfile messages received"
nclient="$(psql_value "SELECT count(*) FROM dnstap.exchange WHERE kind = 'client' OR query_type = 'CQ'")"
((nclient == 0)) || fail "$nclient client rows stored despite exclude_kinds = [\"client\"]: $rows"
nres="$(psql_value "SELECT count(*) FROM dnstap.exchange WHERE identity = 'res1' AND kind = 'resolver' AND has_query AND has_response")"
((nres * 2 == nres_msgs)) || fail "$nres paired resolver rows for $nres_msgs RQ/RR messages: $rows"
# ns1's exchanges are kind auth (AQ ...): they must stay whole, also those whose response BIND
# typed CLIENT_RESPONSE.
lone="$(psql_value "SELECT count(*) FROM dnstap.exchange WHERE NOT (has_query AND has_response)")"
if ((lone > 0)); then
  log "lone rows: $(psql_value "SELECT identity || ' ' || kind || ' ' || coalesce(query_type,'-') || '/' || coalesce(response_type,'-') || ' ' || qname
    FROM dnstap.exchange WHERE NOT (has_query AND has_response) ORDER BY qname LIMIT 6" | tr '\n' ';')"
  log "dnstap-read of ns1's side (port $AUTH_PORT) for host1.example.com: $(grep -E 'host1\.example\.com/' "$WORK/exclude.txt" | grep -F ":$AUTH_PORT " | tr '\n' ';')"
  later_fail "exclude_kinds = [\"client\"]: $lone auth exchanges (AQ/CR: ns1's answers to RD=1 queries) stored without their response, as lone queries after the timeout; the CR was dropped as 'client' ($rows)"
fi
[[ "${filtered:-0}" == "$nres1_client_msgs" ]] \
  || later_fail "dropped_filtered=${filtered:-0}, expected $nres1_client_msgs (res1's CQ/CR; the stream has $nclient_msgs CQ/CR in all, $((nclient_msgs - nres1_client_msgs)) of them ns1's CR to AQ)"
log "exclude_kinds = [\"client\"]: no client rows, $filtered client messages counted as filtered"

# ---------------------------------------------------------------------------------------
# 5: --check must refuse what serve refuses at start.
CHECK_FAIL=later_fail
{ cat "$WORK/good.toml"; printf '\n[metrics]\nlisten = "127.0.0.1:99999"\n'; } >"$WORK/metrics.toml"   # line 12
check_rejects 'metrics listen = "127.0.0.1:99999"' "metrics.toml:12: metrics.listen" --config "$WORK/metrics.toml"
check_rejects "--metrics 127.0.0.1 (no port)" "metrics" --config "$WORK/good.toml" --metrics 127.0.0.1
sed '2a tcp = ["127.0.0.1:5353"]\ntcp_allow = ["nonsense"]' "$WORK/good.toml" >"$WORK/allow.toml"   # line 4
check_rejects 'tcp_allow = ["nonsense"]' "allow.toml:4: listen.tcp_allow" --config "$WORK/allow.toml"

if ((${#LATER[@]} > 0)); then
  fail "$(printf '\n  - %s' "${LATER[@]}")"
fi
log "--check refuses what serve refuses; privacy options hold end to end"
