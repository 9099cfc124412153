#!/usr/bin/env bash
# Ingest never makes the sender wait. With the database down, no spool and small queues,
# so that everything downstream is stalled on purpose, a sender pushing real named frames as
# fast as it can is never blocked for 100 ms, and every frame is accounted for exactly:
# frames_received == sent, and frames_received == stored + dropped (all dropped here).
source "$(dirname "$0")/lib.sh"

loadgen="${BUILD_DIR:?}/bench/loadgen"
[[ -x "$loadgen" ]] || fail "load generator $loadgen is not built"
capture="${SOURCE_DIR:?}/tests/unit/data/bind_auth.fstrm"
[[ -f "$capture" ]] || fail "capture $capture is missing"

# A database that is not there: nothing listens on this socket directory.
mkdir -p "$WORK/no-postgres"
start_collector --postgres "host=$WORK/no-postgres port=1 dbname=none connect_timeout=1" \
  --queue-frames 2000 --queue-rows 1000 --batch-rows 500

log "sending at full speed for 5 s"
out="$("$loadgen" -r "$capture" -u "$COLLECTOR_SOCKET" -c 1 -d 5 2>&1)" || fail "loadgen failed: $out"
line="$(grep '^loadgen: frames=' <<<"$out")"
log "$line"
sent="$(grep -oE 'frames=[0-9]+' <<<"$line" | cut -d= -f2)"
stall="$(grep -oE 'max_stall_ms=[0-9.]+' <<<"$line" | cut -d= -f2)"

stop_collector 30
[[ "$COLLECTOR_EXIT" == 0 ]] || fail "collector exited with status $COLLECTOR_EXIT"
received="$(collector_stat frames_received)"
stored="$(collector_stat messages_stored)"
dropped="$(collector_stat dropped_total)"
log "sent=$sent received=$received stored=$stored dropped=$dropped max_stall_ms=$stall"

((sent > 100000)) || fail "only $sent frames sent in 5 s: the sender was held back"
[[ "$received" == "$sent" ]] || fail "received $received of $sent frames"
((received == stored + dropped)) || fail "accounting: received $received != stored $stored + dropped $dropped"
((dropped > 0)) || fail "nothing dropped although the database was down: the test stalled nothing"
awk -v s="$stall" 'BEGIN { exit !(s < 100) }' || fail "the sender was blocked for $stall ms (limit 100 ms)"
log "OK: sender never blocked more than $stall ms; $received received = $stored stored + $dropped dropped"
