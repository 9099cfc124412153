#!/usr/bin/env bash
# --storage-yield with a real named and PostgreSQL: storage waits while named's threads wait
# for a CPU, and catches up from the overflow files afterwards.
#  A. named idle: its readiness probe is stored at once (storage does not yield to a sender
#     that gets its CPU);
#  B. dnsperf at full speed on the two cores: storage yields (storage_yielding seen at 1,
#     storage_yield_seconds_total grows by more than half the load), the frames go to the
#     overflow files, nothing is dropped;
#  C. the load over: storage resumes by itself, every frame received is stored and paired,
#     the rows in PostgreSQL match, no pair split (rows unpaired <= messages named dropped),
#     the overflow files are empty.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
require_cmd dnsperf curl

NAME=ns1
LOAD_SECS=6
MPORT="$(free_port)"
OVERFLOW="$WORK/overflow"

start_postgres
collector_migrate
start_collector --metrics "127.0.0.1:$MPORT" --overflow-dir "$OVERFLOW" --storage-yield
PORT="$(free_port)"
start_named "$NAME" 127.0.0.1 "$PORT" "$COLLECTOR_SOCKET"

# --- A ----------------------------------------------------------------------------------
wait_for "(( \$(psql_value \"SELECT count(*) FROM dnstap.exchange WHERE identity = '$NAME'\") > 0 ))" 20 \
  || fail "A: the readiness probe of an idle named was not stored within 20 s (storage_yielding $(metric dnstap_collector_storage_yielding))"
y0="$(metric dnstap_collector_storage_yield_seconds_total)"
log "A: an idle named's probe stored; storage yielded ${y0}s so far"

# --- B ----------------------------------------------------------------------------------
make_queries "$WORK/queries.txt"
log "B: dnsperf for ${LOAD_SECS}s at full speed"
dnsperf -s 127.0.0.1 -p "$PORT" -d "$WORK/queries.txt" -l "$LOAD_SECS" -c 8 -q 500 >"$WORK/dnsperf.out" 2>&1 &
perf_pid=$!
_track_pid "$perf_pid"
seen_yielding=0
while kill -0 "$perf_pid" 2>/dev/null; do
  [[ "$(metric dnstap_collector_storage_yielding)" == 1 ]] && seen_yielding=1
  sleep 0.5
done
wait "$perf_pid" || fail "B: dnsperf failed: $(tail -n 3 "$WORK/dnsperf.out")"
log "B: dnsperf $(awk '/Queries per second:/ {print $4}' "$WORK/dnsperf.out") qps"
y1="$(metric dnstap_collector_storage_yield_seconds_total)"
overflowed="$(metric dnstap_collector_frames_overflowed_total)"
log "B: storage yielded $(awk -v a="$y0" -v b="$y1" 'BEGIN { print b - a }')s of the ${LOAD_SECS}s load; $overflowed frames went through the overflow files; storage_yielding seen: $seen_yielding"
((seen_yielding)) || fail "B: storage_yielding never read 1 while named served at full speed"
awk -v a="$y0" -v b="$y1" -v l="$LOAD_SECS" 'BEGIN { exit !(b - a > l / 2) }' \
  || fail "B: storage yielded only $(awk -v a="$y0" -v b="$y1" 'BEGIN { print b - a }')s of the ${LOAD_SECS}s load"
((overflowed > 0)) || fail "B: no frame went through the overflow files while storage yielded"

# --- C ----------------------------------------------------------------------------------
wait_for "[[ \"\$(metric dnstap_collector_storage_yielding)\" == 0 && \"\$(metric dnstap_collector_queue_depth)\" == 0 ]] &&
  (( \$(metric dnstap_collector_messages_stored_total) + \$(dropped_total) >= \$(metric dnstap_collector_frames_received_total) ))" 120 \
  || fail "C: the backlog was not stored within 120 s of the load (yielding $(metric dnstap_collector_storage_yielding), queue_depth $(metric dnstap_collector_queue_depth), overflow_frames $(metric dnstap_collector_overflow_frames))"
read -r _ named_dropped < <(named_dnstap_stats "$NAME" | sed -E 's/DNSTAPsuccess=([0-9]+) DNSTAPdropped=([0-9]+)/\1 \2/')
stop_named "$NAME"
stop_collector
received="$(collector_stat frames_received)"; stored="$(collector_stat messages_stored)"
dropped="$(collector_stat dropped_total)"; left="$(collector_stat overflow_frames || true)"
log "C: frames_received=$received messages_stored=$stored dropped_total=$dropped overflow_frames=${left:-0}"
((dropped == 0)) || fail "C: $dropped messages dropped although the overflow files had room"
((received == stored)) || fail "C: $received frames received, $stored messages stored"
in_rows="$(psql_value "SELECT coalesce(sum(has_query::int + has_response::int), 0) FROM dnstap.exchange WHERE identity = '$NAME'")"
unpaired="$(psql_value "SELECT count(*) FROM dnstap.exchange WHERE identity = '$NAME' AND NOT (has_query AND has_response)")"
log "C: $in_rows messages in dnstap.exchange, $unpaired rows unpaired; named dropped $named_dropped dnstap messages"
((in_rows == stored)) || fail "C: $in_rows messages in dnstap.exchange, the collector counted $stored stored"
# At full speed named drops dnstap messages from its own queue: each one leaves its partner
# unpaired. More unpaired rows than that would be pairs split by the overflow files.
((unpaired <= named_dropped)) || fail "C: $unpaired exchanges unpaired after the backlog was stored, named dropped only $named_dropped messages"
for f in "$OVERFLOW"/worker-*.fstrm; do
  size="$(stat -c %s "$f")"
  ((size < 64)) || fail "C: $f still holds $size bytes after everything was stored"
done
log "ok: storage yielded to a busy named and stored everything afterwards"
