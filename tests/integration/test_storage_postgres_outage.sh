#!/usr/bin/env bash
# PostgreSQL goes away under load and comes back: with --spool-dir, every exchange a real
# named sent arrives exactly once, the spool drains to 0 bytes, and database_up reads 0
# while the database is away. Then the collector itself is stopped (SIGTERM) while the
# database is down: the spool it leaves behind is replayed by the next collector at start.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
require_cmd dnsperf curl

NAME=ns1
N1=6000          # phase 1: queries at QPS1 across the outage (~20 s)
QPS1=300
OUTAGE_S=10
N2=500           # phase 2: queries while the database is down, before the collector stops
N3=100           # phase 3: queries after the restart (live path works again)

SPOOL="$WORK/spool"
MPORT="$(free_port)"

# --- helpers (the cluster lib.sh started, stopped and started again in place) ---------
pg_down() {
  log "stopping PostgreSQL (pg_ctl stop -m fast)"
  _as_postgres "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -m fast -w -t 30 stop >/dev/null \
    || fail "pg_ctl stop failed"
}
pg_up() {
  log "starting PostgreSQL again on port $PGPORT"
  _as_postgres "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -l "$PG_DIR/postgres.log" -w -t 60 \
    -o "-p $PGPORT -k $PG_DIR -c listen_addresses='' -c fsync=off -c synchronous_commit=off -c full_page_writes=off" \
    start >/dev/null || fail "pg_ctl start failed"
  wait_for "psql_value 'select 1'" 30 || fail "PostgreSQL does not answer after restart"
}
stat_of() { # stat_of FILE NAME: NAME=value from the last stats line of FILE
  grep -E '(^|[^a-z_])stats:' "$1" | tail -n 1 | grep -oE "(^|[[:space:]])$2=[0-9]+" | head -n 1 | cut -d= -f2
}
# queries_file FILE PREFIX N: N distinct questions; the first part from the zone (answers,
# pdns), the rest unique NXDOMAIN names, so (qname, qtype) identifies each query.
queries_file() {
  local file="$1" prefix="$2" n="$3" i
  make_queries "$file.zone"
  {
    head -n "$((n / 5))" "$file.zone"
    for ((i = $(( n / 5 < $(wc -l <"$file.zone") ? n / 5 : $(wc -l <"$file.zone") )); i < n; i++)); do
      printf '%s-%d.%s A\n' "$prefix" "$i" "$ZONE"
    done
  } >"$file"
  rm -f "$file.zone"
  [[ "$(wc -l <"$file")" == "$n" ]] || fail "query file $file has $(wc -l <"$file") lines, not $n"
}
# run_dnsperf FILE QPS OUT: the file once; fails unless every query was sent and answered.
run_dnsperf() {
  local file="$1" qps="$2" out="$3" n sent completed
  n="$(wc -l <"$file")"
  dnsperf -s 127.0.0.1 -p "$PORT" -d "$file" -n 1 -c 4 -q 32 -Q "$qps" -t 5 >"$out" 2>&1 \
    || { cat "$out" >&2; fail "dnsperf failed"; }
  sent="$(awk '/Queries sent:/ {print $3}' "$out")"
  completed="$(awk '/Queries completed:/ {print $3}' "$out")"
  [[ "$sent" == "$n" && "$completed" == "$n" ]] \
    || { cat "$out" >&2; fail "dnsperf sent $sent / completed $completed of $n queries"; }
}

# Our rows: this named's, minus start_named's readiness probe and the nudges below.
ROWS="dnstap.exchange WHERE identity = '$NAME' AND qname IS DISTINCT FROM '$PROBE_QNAME'
  AND qname NOT LIKE 'nudge-%'"
# named notices that a collector went away only when a write fails, and reconnects
# (fstrm-set-reopen-interval 1) after that: nudge it with queries until it is connected.
# The nudges themselves may be lost in the dead connection; they are not counted.
nudge_until_connected() {
  local i
  for ((i = 0; i < 60; i++)); do
    (($(metric dnstap_collector_connections_active) >= 1)) && return 0
    dig +norec +time=1 +tries=1 @127.0.0.1 -p "$PORT" "nudge-$i.$ZONE" A >/dev/null 2>&1 || true
    sleep 0.5
  done
  return 1
}
count_rows() { psql_value "SELECT count(*) FROM $ROWS"; }
check_no_dups() {
  local dups
  dups="$(psql_value "SELECT count(*) FROM (SELECT 1 FROM $ROWS
    GROUP BY qname, qtype, query_port, dns_id HAVING count(*) > 1) d")"
  ((dups == 0)) || fail "$1: $dups (qname, qtype, query_port, dns_id) groups stored more than once"
  dups="$(psql_value "SELECT count(*) FROM (SELECT 1 FROM $ROWS GROUP BY qname, qtype HAVING count(*) > 1) d")"
  ((dups == 0)) || fail "$1: $dups (qname, qtype) stored more than once (each was asked once)"
}
# check_exact EXPECTED_FILE WHAT: the stored (qname, qtype) set is exactly the file's.
check_exact() {
  awk '{ print tolower($1), $2 }' "$1" | sort >"$WORK/expected.txt"
  psql_value "SELECT qname || ' ' || qtype FROM $ROWS" | sort >"$WORK/stored.txt"
  if ! diff -q "$WORK/expected.txt" "$WORK/stored.txt" >/dev/null; then
    comm -23 "$WORK/expected.txt" "$WORK/stored.txt" >"$WORK/missing.txt"
    comm -13 "$WORK/expected.txt" "$WORK/stored.txt" >"$WORK/unexpected.txt"
    log "$(wc -l <"$WORK/missing.txt") sent but not stored (first 10):"; head -n 10 "$WORK/missing.txt" >&2
    log "$(wc -l <"$WORK/unexpected.txt") stored but not sent (first 10):"; head -n 10 "$WORK/unexpected.txt" >&2
    fail "$2: stored (qname, qtype) set differs from the queries sent"
  fi
}

# --- setup ---------------------------------------------------------------------------
start_postgres
collector_migrate
COLLECTOR_ARGS=(--spool-dir "$SPOOL" --metrics "127.0.0.1:$MPORT" --shutdown-timeout 5)
start_collector "${COLLECTOR_ARGS[@]}"
wait_for "[[ -n \"\$(metric dnstap_collector_database_up)\" ]]" 10 || fail "metrics endpoint 127.0.0.1:$MPORT does not answer"
[[ "$(metric dnstap_collector_database_up)" == 1 ]] || fail "database_up is not 1 at start"
PORT="$(free_port)"
start_named "$NAME" 127.0.0.1 "$PORT" "$COLLECTOR_SOCKET" \
  'fstrm-set-input-queue-size 16384;' 'fstrm-set-flush-timeout 1;'

# --- phase 1: an outage of OUTAGE_S seconds in the middle of a steady stream ------------
queries_file "$WORK/q1.txt" p1 "$N1"
cp "$WORK/q1.txt" "$WORK/all.txt"
log "phase 1: $N1 queries at $QPS1 qps; PostgreSQL stopped for ${OUTAGE_S}s in the middle"
run_dnsperf "$WORK/q1.txt" "$QPS1" "$WORK/dnsperf1.out" &
DNSPERF_PID=$!
_track_pid "$DNSPERF_PID"
sleep 4
pg_down
down_at=$SECONDS
saw_down=0 saw_up=0 max_spool=0
while ((SECONDS - down_at < OUTAGE_S)); do
  up="$(metric dnstap_collector_database_up)"
  sp="$(metric dnstap_collector_spool_bytes)"
  [[ "$up" == 0 ]] && saw_down=1
  [[ "$up" == 1 && $((SECONDS - down_at)) -ge 2 ]] && saw_up=1
  [[ -n "$sp" ]] && ((sp > max_spool)) && max_spool=$sp
  sleep 0.5
done
log "during the outage: database_up seen 0: $saw_down, spool_bytes max $max_spool"
pg_up
((saw_down == 1)) || fail "dnstap_collector_database_up never read 0 while PostgreSQL was stopped"
((saw_up == 0)) || fail "dnstap_collector_database_up read 1 while PostgreSQL was stopped"
((max_spool > 0)) || fail "dnstap_collector_spool_bytes stayed 0 during the outage (nothing spooled?)"
grep -q 'database lost' "$WORK/collector.log" || fail "the collector did not log the lost database"

wait "$DNSPERF_PID" || fail "phase 1 dnsperf failed"
log "phase 1 dnsperf: $(grep -E 'Queries (sent|completed|lost)' "$WORK/dnsperf1.out" | tr -s ' ' | tr '\n' ' ')"
wait_for "(( \$(count_rows) >= $N1 ))" 60 || fail "only $(count_rows) of $N1 exchanges stored 60 s after the outage"
wait_for "[[ \$(metric dnstap_collector_spool_bytes) == 0 ]]" 30 \
  || fail "spool_bytes is $(metric dnstap_collector_spool_bytes), not 0, after the database came back"
[[ "$(metric dnstap_collector_database_up)" == 1 ]] || fail "database_up is not 1 after the database came back"
grep -q 'spool replayed' "$WORK/collector.log" || fail "the collector never logged 'spool replayed'"
sleep 1
((${N1} == $(count_rows))) || fail "phase 1: expected exactly $N1 exchanges, found $(count_rows)"
check_no_dups "phase 1"
check_exact "$WORK/all.txt" "phase 1"
unpaired="$(psql_value "SELECT count(*) FROM $ROWS AND NOT (has_query AND has_response)")"
((unpaired == 0)) || fail "phase 1: $unpaired exchanges lack their query or response"
for r in spool_full sink_full shutdown row_rejected queue_full; do
  v="$(curl -fsS "http://127.0.0.1:$MPORT/metrics" | awk -v r="dnstap_collector_dropped_total{reason=\"$r\"}" '$1 == r {print $2}')"
  [[ "$v" == 0 ]] || fail "phase 1: dropped_total{reason=\"$r\"} = $v"
done
log "phase 1: all $N1 exchanges stored exactly once, spool back to 0 bytes"

# --- phase 2: database down, then the collector stops with a full spool ----------------
pg_down
queries_file "$WORK/q2.txt" p2 "$N2"
# Only the NXDOMAIN part: the zone part would repeat phase 1's questions.
grep -E "^p2-" "$WORK/q2.txt" >"$WORK/q2u.txt"
N2="$(wc -l <"$WORK/q2u.txt")"
cat "$WORK/q2u.txt" >>"$WORK/all.txt"
log "phase 2: $N2 queries with PostgreSQL down"
frames_before="$(metric dnstap_collector_frames_received_total)"
run_dnsperf "$WORK/q2u.txt" 500 "$WORK/dnsperf2.out"
# Every message received, paired, and handed to the sink (which spools it).
wait_for "(( \$(metric dnstap_collector_frames_received_total) >= frames_before + 2 * N2 ))" 20 \
  || fail "the collector received $(( $(metric dnstap_collector_frames_received_total) - frames_before )) of $((2 * N2)) messages"
sleep 3
spool_before_stop="$(metric dnstap_collector_spool_bytes)"
((spool_before_stop > 0)) || fail "phase 2: nothing spooled while PostgreSQL is down"
stop_collector 30
[[ "$COLLECTOR_EXIT" == 0 ]] || fail "collector exited with status $COLLECTOR_EXIT after SIGTERM with the database down"
cp "$WORK/collector.log" "$WORK/collector-run1.log"
files="$(find "$SPOOL" -name 'batch-*.spool' | wc -l)"
((files > 0)) || fail "no spool files left in $SPOOL after stopping with the database down"
log "collector stopped with $files spool files ($(du -sb "$SPOOL" | cut -f1) bytes) in $SPOOL"
((files < 1000)) || true
# The rows of phase 2 are nowhere yet.
pg_up
((${N1} == $(count_rows))) || fail "phase 2: rows appeared while no collector ran ($(count_rows))"

# --- restart: the spool is replayed at start ------------------------------------------
rm -f "$COLLECTOR_SOCKET"
start_collector "${COLLECTOR_ARGS[@]}"
wait_for "(( \$(count_rows) >= $N1 + $N2 ))" 30 \
  || fail "spool not replayed at start: $(count_rows) of $((N1 + N2)) exchanges stored"
grep -qE 'spool .*batches .* to replay' "$WORK/collector.log" \
  || fail "the restarted collector did not report the spool it found"
wait_for "[[ \$(metric dnstap_collector_spool_bytes) == 0 ]]" 20 \
  || fail "spool_bytes is $(metric dnstap_collector_spool_bytes) after the replay, not 0"
left="$(find "$SPOOL" -type f | wc -l)"
((left == 0)) || fail "files left in the spool after the replay: $(ls "$SPOOL" | head -n 5 | tr '\n' ' ')"

# --- phase 3: live rows after the restart (named reconnected) -------------------------
queries_file "$WORK/q3.txt" p3 "$N3"
grep -E "^p3-" "$WORK/q3.txt" >"$WORK/q3u.txt"
N3="$(wc -l <"$WORK/q3u.txt")"
cat "$WORK/q3u.txt" >>"$WORK/all.txt"
nudge_until_connected || fail "named did not reconnect to the restarted collector within 30 s"
log "named reconnected to the restarted collector"
run_dnsperf "$WORK/q3u.txt" 500 "$WORK/dnsperf3.out"
total=$((N1 + N2 + N3))
wait_for "(( \$(count_rows) >= $total ))" 20 || fail "after the restart: $(count_rows) of $total exchanges stored"
stop_named "$NAME"
stop_collector 30
[[ "$COLLECTOR_EXIT" == 0 ]] || fail "restarted collector exited with status $COLLECTOR_EXIT"
((total == $(count_rows))) || fail "expected exactly $total exchanges at the end, found $(count_rows)"
check_no_dups "end"
check_exact "$WORK/all.txt" "end"

# Accounting across both runs: what run 1 spooled at exit is stored by run 2.
f1="$(stat_of "$WORK/collector-run1.log" frames_received)"; s1="$(stat_of "$WORK/collector-run1.log" messages_stored)"
d1="$(stat_of "$WORK/collector-run1.log" dropped_total)"
f2="$(collector_stat frames_received)"; s2="$(collector_stat messages_stored)"; d2="$(collector_stat dropped_total)"
log "run 1: frames_received=$f1 messages_stored=$s1 dropped_total=$d1; run 2: frames_received=$f2 messages_stored=$s2 dropped_total=$d2"
[[ -n "$f1" && -n "$f2" ]] || fail "a collector run printed no stats line"
((d1 == 0 && d2 == 0)) || fail "messages dropped: run 1 $d1, run 2 $d2"
# Per run the stats line cannot balance: the messages run 1 left in the spool are neither
# stored nor dropped in run 1 (there is no "spooled" counter), and run 2 stores them
# without having received them. Shown here, checked only across both runs.
log "per run: run 1 frames - stored - dropped = $((f1 - s1 - d1)) (left in the spool);" \
  "run 2 = $((f2 - s2 - d2)) (replayed from the spool)"
((f1 - s1 - d1 == 2 * N2)) || fail "run 1 left $((f1 - s1 - d1)) messages unaccounted, expected the $((2 * N2)) spooled"
((f1 + f2 == s1 + s2 + d1 + d2)) \
  || fail "accounting across runs: frames_received $f1+$f2 != messages_stored $s1+$s2 + dropped $d1+$d2"
log "all $total exchanges stored exactly once across an outage and a restart with a spool"
