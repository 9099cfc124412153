#!/usr/bin/env bash
# Overflow files (--overflow-dir) with a real named and PostgreSQL:
#  A. while PostgreSQL blocks every write (a session holds ACCESS EXCLUSIVE on
#     dnstap.exchange), the collector keeps reading named's stream: what its queues cannot
#     hold goes to the overflow files, nothing is dropped, named drops nothing;
#  B. the collector is SIGKILLed with that backlog on disk, the lock is released and a new
#     collector starts on the same directory: it takes the files up (frames_restored) from
#     where the killed one had read, and stores their exchanges: every query in the files is
#     stored exactly once (no qname twice), and the run's stats line balances:
#     frames_received + frames_restored == messages_stored + dropped_total + overflow_frames.
#  C. then live traffic again: everything stored, the files back to their header.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
require_cmd dnsperf curl

NAME=ns1
N=4000       # distinct queries sent while writes are blocked
QPS=800
M=300        # phase C
MPORT="$(free_port)"
OVERFLOW="$WORK/overflow"
# Small queues so that the backlog reaches the files within a second of load.
COLLECTOR_ARGS=(--metrics "127.0.0.1:$MPORT" --overflow-dir "$OVERFLOW" --queue-frames 64 --queue-rows 200
                --batch-rows 100 --storage-nice 10 --workers 2)

ROWS="dnstap.exchange WHERE identity = '$NAME' AND qname IS DISTINCT FROM '$PROBE_QNAME'"

start_postgres
collector_migrate
start_collector "${COLLECTOR_ARGS[@]}"
PORT="$(free_port)"
start_named "$NAME" 127.0.0.1 "$PORT" "$COLLECTOR_SOCKET" \
  'fstrm-set-input-queue-size 16384;' 'fstrm-set-flush-timeout 1;'
wait_for "(( \$(psql_value \"SELECT count(*) FROM dnstap.exchange WHERE identity = '$NAME'\") > 0 ))" 20 \
  || fail "the readiness probe never reached PostgreSQL"
read -r s0 d0 < <(named_dnstap_stats "$NAME" | sed -E 's/DNSTAPsuccess=([0-9]+) DNSTAPdropped=([0-9]+)/\1 \2/')

# --- A: writes blocked -----------------------------------------------------------------
block_exchange_writes
for ((i = 0; i < N; i++)); do printf 'ovf-%d.%s A\n' "$i" "$ZONE"; done >"$WORK/q1.txt"
log "A: $N distinct queries at $QPS qps while every write blocks"
dnsperf -s 127.0.0.1 -p "$PORT" -d "$WORK/q1.txt" -n 1 -c 4 -q 64 -Q "$QPS" -t 2 >"$WORK/dnsperf1.out" 2>&1 \
  || fail "A: dnsperf failed: $(tail -n 3 "$WORK/dnsperf1.out")"
sleep 2  # named's flush timeout, then our reads
read -r s1 d1 < <(named_dnstap_stats "$NAME" | sed -E 's/DNSTAPsuccess=([0-9]+) DNSTAPdropped=([0-9]+)/\1 \2/')
received="$(metric dnstap_collector_frames_received_total)"
in_files="$(metric dnstap_collector_overflow_frames)"
dropped="$(dropped_total)"
log "A: named DNSTAPsuccess +$((s1 - s0)) DNSTAPdropped +$((d1 - d0)); collector received $received, in overflow files $in_files, dropped $dropped"
((d1 == d0)) || fail "A: named dropped $((d1 - d0)) dnstap messages while the collector's writes were blocked"
((dropped == 0)) || fail "A: the collector dropped $dropped messages although it has overflow files"
((in_files > N)) || fail "A: only $in_files frames in the overflow files; expected most of the $((2 * N)) sent"
ls -l "$OVERFLOW" >&2

# --- B: SIGKILL with the backlog on disk, restart on the same directory -------------------
log "B: SIGKILL the collector with $in_files frames in its overflow files"
kill -KILL "$COLLECTOR_PID"
wait "$COLLECTOR_PID" 2>/dev/null || true
COLLECTOR_PID=""
unblock_exchange_writes
cp "$WORK/collector.log" "$WORK/collector-killed.log"
rm -f "$COLLECTOR_SOCKET"
start_collector "${COLLECTOR_ARGS[@]}"
wait_for "[[ \"\$(metric dnstap_collector_overflow_frames)\" == 0 && \"\$(metric dnstap_collector_queue_depth)\" == 0 ]]" 60 \
  || fail "B: the taken-up overflow files were not processed within 60 s (overflow_frames $(metric dnstap_collector_overflow_frames))"
restored="$(metric dnstap_collector_frames_restored_total)"
log "B: the new collector took up $restored frames"
((restored > 0)) || fail "B: the new collector took up no frames from $OVERFLOW"
# Stored once each: the names are distinct, so a frame handed out twice shows as a name twice.
wait_for "(( \$(psql_value \"SELECT count(*) FROM $ROWS AND qname LIKE 'ovf-%'\") * 2 >= $restored - 200 ))" 30 \
  || fail "B: the restored frames did not reach PostgreSQL"
twice="$(psql_value "SELECT count(*) FROM (SELECT qname FROM $ROWS AND qname LIKE 'ovf-%' GROUP BY qname HAVING count(*) > 1) d")"
stored_a="$(psql_value "SELECT count(*) FROM $ROWS AND qname LIKE 'ovf-%'")"
paired_a="$(psql_value "SELECT count(*) FROM $ROWS AND qname LIKE 'ovf-%' AND has_query AND has_response")"
log "B: $stored_a of the $N phase-A queries stored ($paired_a paired), $twice stored twice"
((twice == 0)) || fail "B: $twice names stored twice: frames were handed out again after the restart"
# What the killed collector held in memory (queues, a blocked COPY, pairing tables) is lost;
# what was in the files is not.
((stored_a * 2 >= restored - 200)) || fail "B: only $stored_a exchanges stored from $restored restored frames"

# --- C: live again ----------------------------------------------------------------------
for ((i = 0; i < M; i++)); do printf 'after-%d.%s A\n' "$i" "$ZONE"; done >"$WORK/q2.txt"
wait_for "dig +norec +time=1 +tries=1 @127.0.0.1 -p $PORT reconnect-probe.$ZONE A >/dev/null && sleep 1 &&
  (( \$(psql_value \"SELECT count(*) FROM dnstap.exchange WHERE qname = 'reconnect-probe.$ZONE'\") > 0 ))" 30 \
  || fail "C: named did not reconnect to the new collector"
dnsperf -s 127.0.0.1 -p "$PORT" -d "$WORK/q2.txt" -n 1 -c 2 -q 16 -Q 300 -t 2 >"$WORK/dnsperf2.out" 2>&1 \
  || fail "C: dnsperf failed"
wait_for "(( \$(psql_value \"SELECT count(*) FROM $ROWS AND qname LIKE 'after-%' AND has_query AND has_response\") == $M ))" 20 \
  || fail "C: $(psql_value "SELECT count(*) FROM $ROWS AND qname LIKE 'after-%'") of $M live queries stored"
stop_named "$NAME"
stop_collector
received="$(collector_stat frames_received)"; restored="$(collector_stat frames_restored || true)"
stored="$(collector_stat messages_stored)"; dropped="$(collector_stat dropped_total)"
left="$(collector_stat overflow_frames || true)"
log "C: frames_received=$received frames_restored=${restored:-0} messages_stored=$stored dropped_total=$dropped overflow_frames=${left:-0}"
((received + ${restored:-0} == stored + dropped + ${left:-0})) \
  || fail "C: the stats line does not balance: $received + ${restored:-0} != $stored + $dropped + ${left:-0}"
for f in "$OVERFLOW"/worker-*.fstrm; do
  size="$(stat -c %s "$f")"
  ((size < 64)) || fail "C: $f still holds $size bytes after everything was stored"
done
log "ok: overflow files held the backlog through a SIGKILL; taken up once; live traffic stored"
