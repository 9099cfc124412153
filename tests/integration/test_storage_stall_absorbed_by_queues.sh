#!/usr/bin/env bash
# A database stall (a session holds ACCESS EXCLUSIVE on dnstap.exchange for a few seconds)
# with a writer queue far too small for it and no overflow files: the workers wait for the
# writer while the frame queues in front of them hold the backlog, so nothing is dropped and
# every exchange named sent is stored once the lock goes. A real named, a real PostgreSQL.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
require_cmd dnsperf curl

NAME=ns1
N=3000      # distinct queries sent while writes are blocked
QPS=1000
MPORT="$(free_port)"
ROWS="dnstap.exchange WHERE identity = '$NAME' AND qname LIKE 'stall-%'"

start_postgres
collector_migrate
# 200 rows of writer queue: a stall of a fraction of a second fills it.
start_collector --metrics "127.0.0.1:$MPORT" --queue-rows 200 --batch-rows 100
PORT="$(free_port)"
start_named "$NAME" 127.0.0.1 "$PORT" "$COLLECTOR_SOCKET" \
  'fstrm-set-input-queue-size 16384;' 'fstrm-set-flush-timeout 1;'
wait_for "(( \$(psql_value \"SELECT count(*) FROM dnstap.exchange WHERE identity = '$NAME'\") > 0 ))" 20 \
  || fail "the readiness probe never reached PostgreSQL"

block_exchange_writes
for ((i = 0; i < N; i++)); do printf 'stall-%d.%s A\n' "$i" "$ZONE"; done >"$WORK/q.txt"
log "$N distinct queries at $QPS qps while every write blocks"
dnsperf -s 127.0.0.1 -p "$PORT" -d "$WORK/q.txt" -n 1 -c 4 -q 64 -Q "$QPS" -t 2 >"$WORK/dnsperf.out" 2>&1 \
  || fail "dnsperf failed: $(tail -n 3 "$WORK/dnsperf.out")"
sleep 2  # named's flush timeout, then our reads
depth="$(metric dnstap_collector_queue_depth)"
log "writes blocked: $(metric dnstap_collector_frames_received_total) frames received, $depth waiting in the queues, $(dropped_total) dropped"
((depth > 1000)) || fail "only $depth frames wait in the queues: the stall did not back up into them"
unblock_exchange_writes
wait_for "(( \$(psql_value \"SELECT count(*) FROM $ROWS\") >= $N ))" 60 \
  || fail "only $(psql_value "SELECT count(*) FROM $ROWS") of $N exchanges stored 60 s after the lock went"
dropped="$(dropped_total)"
((dropped == 0)) || fail "the collector dropped $dropped messages during a stall its queues could hold: $(curl -fsS "http://127.0.0.1:$MPORT/metrics" | grep '^dnstap_collector_dropped_total' | grep -v ' 0$' | tr '\n' ' ')"
stored="$(psql_value "SELECT count(*) FROM $ROWS")"
((stored == N)) || fail "expected $N exchanges, found $stored"
stop_named "$NAME"
stop_collector 30
[[ "$COLLECTOR_EXIT" == 0 ]] || fail "collector exited with status $COLLECTOR_EXIT"
log "a write stall with $depth frames backed up: all $N exchanges stored, nothing dropped"
