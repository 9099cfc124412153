#!/usr/bin/env bash
# When a pdns upsert was slow, the next ones are carried over several transactions
# (--pdns-max-delay): the exchange rows are stored at once, the held pdns records follow
# when their upsert is due with no traffic to carry them, or at shutdown; none is lost or
# counted twice. With light traffic pdns follows every COMMIT. A real named, a real
# PostgreSQL; a session holding a lock on dnstap.pdns makes the upsert slow.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
require_cmd dnsperf

NAME=ns1
MAX_DELAY=10
ROWS="dnstap.exchange WHERE identity = '$NAME' AND qname IS DISTINCT FROM '$PROBE_QNAME'"
count_rows() { psql_value "SELECT count(*) FROM $ROWS"; }
# Answer records in the stored exchanges, and their count in pdns.
answer_rrs() { psql_value "SELECT count(*) FROM (SELECT answers FROM $ROWS) x, jsonb_array_elements(x.answers)"; }
pdns_rrs() { psql_value "SELECT coalesce(sum(count), 0) FROM dnstap.pdns"; }
# (rrname, rrtype) whose pdns count differs from the stored answers.
pdns_mismatches() {
  psql_value "WITH a AS (SELECT e->>'name' AS n, e->>'type' AS t, count(*) AS c
      FROM (SELECT answers FROM $ROWS) x, jsonb_array_elements(x.answers) e GROUP BY 1, 2),
    p AS (SELECT rrname AS n, rrtype AS t, sum(count) AS c FROM dnstap.pdns GROUP BY 1, 2)
    SELECT count(*) FROM a FULL JOIN p USING (n, t) WHERE a.c IS DISTINCT FROM p.c"
}
# block_pdns SECONDS: a session holds SHARE on dnstap.pdns (the upsert waits) that long.
block_pdns() {
  psql -X -q -v ON_ERROR_STOP=1 -c "SET application_name = 'pdns_blocker'" -c "BEGIN" \
    -c "LOCK TABLE dnstap.pdns IN SHARE MODE" -c "SELECT pg_sleep($1)" -c "COMMIT" >"$WORK/blocker.out" 2>&1 &
  BLOCKER_PID=$!
  _track_pid "$BLOCKER_PID"
  wait_for "[[ \$(psql_value \"SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid)
    WHERE a.application_name = 'pdns_blocker' AND l.relation = 'dnstap.pdns'::regclass AND l.granted\") -ge 1 ]]" 10 \
    || fail "the blocking session did not get its lock on dnstap.pdns"
}

start_postgres
collector_migrate
start_collector --pdns-max-delay "$MAX_DELAY"
PORT="$(free_port)"
start_named "$NAME" 127.0.0.1 "$PORT" "$COLLECTOR_SOCKET"

make_queries "$WORK/all.txt"
total="$(wc -l <"$WORK/all.txt")"
part=$((total / 4))
split -l "$part" -d -a 1 "$WORK/all.txt" "$WORK/q"   # q0 q1 q2 q3 (q4: the rest)
[[ -s "$WORK/q4" ]] && cat "$WORK/q4" >>"$WORK/q3"
sent=0
ask() {  # ask FILE: every question of FILE once, then wait for its exchanges
  send_questions "$NAME" "$PORT" "$1" 1000
  sent=$((sent + $(wc -l <"$1")))
  wait_for "(( \$(count_rows) >= $sent ))" 30 || fail "only $(count_rows) of $sent exchanges stored"
}

# 1. Light traffic: pdns is written with the rows.
ask "$WORK/q0"
wait_for "(( \$(pdns_mismatches) == 0 ))" 5 || fail "light traffic: pdns does not match the stored answers 5 s after the rows ($(pdns_mismatches) (rrname, rrtype) differ)"
log "light traffic: pdns follows the rows"

# 2. A slow upsert (2 s behind a lock); its rows are committed once it ends.
block_pdns 2
ask "$WORK/q1"
wait "$BLOCKER_PID" 2>/dev/null || true

# 3. The next transactions carry their pdns over: rows stored, pdns held...
ask "$WORK/q2"
t_rows=$SECONDS
held_answers="$(answer_rrs)" held_pdns="$(pdns_rrs)"
log "after the slow upsert: $held_answers answer records stored, $held_pdns counted in pdns"
((held_pdns < held_answers)) || fail "pdns was not carried over after a 2 s upsert (pdns $held_pdns, answers $held_answers)"
# ...until their upsert is due, with no traffic to carry it.
wait_for "(( \$(pdns_mismatches) == 0 ))" $((MAX_DELAY + 10)) \
  || fail "held pdns not written $((MAX_DELAY + 10)) s after its rows ($(pdns_mismatches) (rrname, rrtype) differ)"
log "held pdns written $((SECONDS - t_rows)) s after its rows (at most $MAX_DELAY s after the slow upsert)"

# 4. Held again, then shutdown: the held records are written before the collector exits.
block_pdns 2
head -n $((part / 2)) "$WORK/q3" >"$WORK/q3a"
tail -n +$((part / 2 + 1)) "$WORK/q3" >"$WORK/q3b"
ask "$WORK/q3a"
wait "$BLOCKER_PID" 2>/dev/null || true
ask "$WORK/q3b"
((sent == total)) || fail "sent $sent of $total questions"
held_answers="$(answer_rrs)" held_pdns="$(pdns_rrs)"
((held_pdns < held_answers)) || fail "pdns was not carried over before the shutdown (pdns $held_pdns, answers $held_answers)"
stop_named "$NAME"
stop_collector 30
[[ "$COLLECTOR_EXIT" == 0 ]] || fail "collector exited with status $COLLECTOR_EXIT"
dropped="$(collector_stat dropped_total)"
((dropped == 0)) || fail "collector dropped $dropped messages"
((($(count_rows)) == total)) || fail "expected $total exchanges, found $(count_rows)"
mismatches="$(pdns_mismatches)"
((mismatches == 0)) || fail "after shutdown $mismatches (rrname, rrtype) have a pdns count other than their stored answers"
log "held pdns written at shutdown: $(pdns_rrs) pdns counts for $(answer_rrs) stored answer records"
