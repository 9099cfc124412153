#!/usr/bin/env bash
# named's reconnect paths: `rndc dnstap -reopen` (named sends STOP and blocks until FINISH,
# then connects again) must return at once, and a restarted named must reconnect. Queries
# before, between and after are all stored, none twice.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
require_cmd dnsperf comm
export LC_ALL=C

NAME=ns1
NAMED_OPTS=('fstrm-set-input-queue-size 16384;' 'fstrm-set-flush-timeout 1;')
REOPEN_LIMIT_MS=1000

make_queries "$WORK/all-queries.txt"
# batch_file N: 300 questions unique to batch N (b<N>-... names under the zone; most are
# NXDOMAIN, which is as good as any answer here).
batch_file() {
  head -n 300 "$WORK/all-queries.txt" | awk -v b="b$1-" '{print b $1, $2}' >"$WORK/batch$1.txt"
  printf '%s\n' "$WORK/batch$1.txt"
}

# send_batch N: send batch N to named, all answered.
send_batch() {
  local file out="$WORK/dnsperf-$1.out" sent completed
  file="$(batch_file "$1")"
  dnsperf -s 127.0.0.1 -p "$PORT" -d "$file" -n 1 -c 2 -q 32 -Q 2000 -t 5 >"$out" 2>&1 \
    || { cat "$out" >&2; fail "dnsperf (batch $1) failed"; }
  sent="$(awk '/Queries sent:/ {print $3}' "$out")"
  completed="$(awk '/Queries completed:/ {print $3}' "$out")"
  [[ "$sent" == 300 && "$completed" == 300 ]] || { cat "$out" >&2; fail "batch $1: sent $sent, completed $completed of 300"; }
  log "batch $1: 300 queries answered"
}

batch_rows() { psql_value "SELECT count(*) FROM dnstap.exchange WHERE identity = '$NAME' AND qname LIKE 'b$1-%'"; }

# expect_batch N: all 300 questions of batch N stored, paired, exactly once.
expect_batch() {
  wait_for "(( \$(batch_rows $1) >= 300 ))" 15 \
    || fail "batch $1: only $(batch_rows "$1") of 300 exchanges stored after 15 s"
  sleep 0.5
  local n
  n="$(batch_rows "$1")"
  ((n == 300)) || fail "batch $1: expected 300 exchanges, found $n"
  awk '{print tolower($1), $2}' "$WORK/batch$1.txt" | sort >"$WORK/expected-$1.txt"
  psql_value "SELECT qname || ' ' || qtype FROM dnstap.exchange WHERE identity = '$NAME' AND qname LIKE 'b$1-%'" \
    | sort >"$WORK/stored-$1.txt"
  cmp -s "$WORK/expected-$1.txt" "$WORK/stored-$1.txt" || {
    comm -3 "$WORK/expected-$1.txt" "$WORK/stored-$1.txt" | head -n 10 >&2
    fail "batch $1: stored questions differ from those sent"
  }
  local unpaired
  unpaired="$(psql_value "SELECT count(*) FROM dnstap.exchange WHERE identity = '$NAME' AND qname LIKE 'b$1-%'
    AND NOT (has_query AND has_response)")"
  ((unpaired == 0)) || fail "batch $1: $unpaired exchanges lack their query or response"
  log "batch $1: all 300 exchanges stored once, paired"
}

start_postgres
collector_migrate
MPORT="$(free_port)"
start_collector -u "$WORK/dnstap.sock" --postgres "$CONNINFO" --metrics "127.0.0.1:$MPORT"
PORT="$(free_port)"
start_named "$NAME" 127.0.0.1 "$PORT" "$COLLECTOR_SOCKET" "${NAMED_OPTS[@]}"
wait_for '(( $(metric_sum dnstap_collector_connections_active) == 1 ))' 10 || fail "named did not connect"
conns0="$(metric_sum dnstap_collector_connections_total)"
log "connections_total=$conns0 after named started"

send_batch 1
expect_batch 1

# --- rndc dnstap -reopen -----------------------------------------------------------------
t0="$(date +%s%N)"
rndc_named "$NAME" dnstap -reopen >"$WORK/rndc-reopen.out" 2>&1 \
  || { cat "$WORK/rndc-reopen.out" >&2; fail "rndc dnstap -reopen failed"; }
t1="$(date +%s%N)"
reopen_ms=$(((t1 - t0) / 1000000))
log "rndc dnstap -reopen returned after $reopen_ms ms"
((reopen_ms < REOPEN_LIMIT_MS)) || fail "rndc dnstap -reopen took $reopen_ms ms (limit $REOPEN_LIMIT_MS ms): FINISH late?"

wait_for "(( \$(metric_sum dnstap_collector_connections_total) > conns0 && \$(metric_sum dnstap_collector_connections_active) == 1 ))" 10 \
  || fail "named did not reconnect after the reopen: connections_total=$(metric_sum dnstap_collector_connections_total) active=$(metric_sum dnstap_collector_connections_active)"
grep -q 'frames, STOP)' "$WORK/collector.log" || fail "the collector did not log the first connection ending with STOP"
log "named reconnected: connections_total=$(metric_sum dnstap_collector_connections_total)"

send_batch 2
expect_batch 2

# --- named restart ---------------------------------------------------------------------
# shellcheck disable=SC2034 # used inside the wait_for expression below
conns1="$(metric_sum dnstap_collector_connections_total)"
stop_named "$NAME"
wait_for '(( $(metric_sum dnstap_collector_connections_active) == 0 ))' 10 \
  || fail "the collector still counts $(metric_sum dnstap_collector_connections_active) active connections after named stopped"
start_named "$NAME" 127.0.0.1 "$PORT" "$COLLECTOR_SOCKET" "${NAMED_OPTS[@]}"
wait_for "(( \$(metric_sum dnstap_collector_connections_total) > conns1 && \$(metric_sum dnstap_collector_connections_active) == 1 ))" 10 \
  || fail "restarted named did not connect"
log "restarted named connected: connections_total=$(metric_sum dnstap_collector_connections_total)"

send_batch 3
expect_batch 3

# Batches 1 and 2 are still exactly as they were (nothing replayed twice).
for b in 1 2; do
  n="$(batch_rows "$b")"
  ((n == 300)) || fail "batch $b: $n exchanges after the restart, expected 300"
done
dups="$(psql_value "SELECT count(*) FROM (SELECT 1 FROM dnstap.exchange WHERE identity = '$NAME'
  GROUP BY qname, qtype, query_port, dns_id HAVING count(*) > 1) d")"
((dups == 0)) || fail "$dups (qname, qtype, query_port, dns_id) groups stored more than once"

stop_named "$NAME"
stop_collector
[[ "$COLLECTOR_EXIT" == 0 ]] || fail "collector exited with status $COLLECTOR_EXIT after SIGTERM (expected 0)"
received="$(collector_stat frames_received)"
stored="$(collector_stat messages_stored)"
dropped="$(collector_stat dropped_total)"
((received == stored + dropped)) \
  || fail "invariant broken: frames_received=$received != messages_stored=$stored + dropped_total=$dropped"
((dropped == 0)) || fail "collector dropped $dropped frames"
# 3 batches and the readiness probes of the two starts (one or more each), a query and a
# response each.
probe_msgs="$(psql_value "SELECT coalesce(sum(has_query::int + has_response::int), 0) FROM dnstap.exchange
  WHERE identity = '$NAME' AND qname = '$PROBE_QNAME'")"
((received == 2 * 900 + probe_msgs)) || fail "frames_received=$received, expected $((2 * 900 + probe_msgs)) (900 queries, $probe_msgs probe messages)"
stops="$(grep -c 'frames, STOP)' "$WORK/collector.log" || true)"
((stops >= 3)) || fail "expected 3 connections ended by STOP (reopen, restart, final stop); the log has $stops"
