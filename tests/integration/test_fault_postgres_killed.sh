#!/usr/bin/env bash
# PostgreSQL killed with SIGKILL in the middle of a stream, twice (the postmaster alone,
# then the postmaster with every backend), and started again (crash recovery): with
# --spool-dir, every exchange a real named sent is stored exactly once.
#
# The cluster runs with synchronous_commit=on here (lib.sh starts it with off, which loses
# acknowledged commits when the server crashes: a test artifact, not a collector fault).
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
require_cmd dnsperf curl pgrep

NAME=ns1
N=6000
QPS=300
SPOOL="$WORK/spool"
MPORT="$(free_port)"
PG_OPTS="-c listen_addresses='' -c fsync=off -c synchronous_commit=on -c full_page_writes=off"

pg_up() {
  log "starting PostgreSQL on port $PGPORT (synchronous_commit=on)"
  _as_postgres "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -l "$PG_DIR/postgres.log" -w -t 60 \
    -o "-p $PGPORT -k $PG_DIR $PG_OPTS" start >/dev/null || fail "pg_ctl start failed"
  wait_for "psql_value 'select 1'" 30 || fail "PostgreSQL does not answer after start"
}
# pg_kill all|postmaster: SIGKILL the postmaster (and with "all" every child at once),
# then wait until no process of the old cluster is left (shared memory released).
pg_kill() {
  local how="$1" pm children p
  pm="$(head -n 1 "$PG_DIR/data/postmaster.pid")"
  [[ "$pm" =~ ^[0-9]+$ ]] && kill -0 "$pm" || fail "no running postmaster in $PG_DIR/data/postmaster.pid"
  children="$(pgrep -P "$pm" | tr '\n' ' ')"
  if [[ "$how" == all ]]; then
    log "kill -9 postmaster $pm and its children $children"
    kill -KILL "$pm" $children 2>/dev/null || true
  else
    log "kill -9 postmaster $pm (children $children exit on their own)"
    kill -KILL "$pm"
  fi
  for p in $pm $children; do
    wait_for "! kill -0 $p" 30 || fail "postgres process $p still alive 30 s after the postmaster was killed"
  done
}

ROWS="dnstap.exchange WHERE identity = '$NAME' AND qname IS DISTINCT FROM '$PROBE_QNAME'"
count_rows() { psql_value "SELECT count(*) FROM $ROWS"; }

# --- setup ---------------------------------------------------------------------------
start_postgres
_as_postgres "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -m fast -w stop >/dev/null
pg_up
[[ "$(psql_value 'SHOW synchronous_commit')" == on ]] || fail "synchronous_commit is not on"
collector_migrate
start_collector --spool-dir "$SPOOL" --metrics "127.0.0.1:$MPORT"
PORT="$(free_port)"
start_named "$NAME" 127.0.0.1 "$PORT" "$COLLECTOR_SOCKET" \
  'fstrm-set-input-queue-size 16384;' 'fstrm-set-flush-timeout 1;'

# N distinct questions: the zone's (answers, so pdns upserts run in the same transactions)
# and unique NXDOMAIN names.
make_queries "$WORK/zone.txt"
{
  cat "$WORK/zone.txt"
  for ((i = $(wc -l <"$WORK/zone.txt"); i < N; i++)); do printf 'k-%d.%s A\n' "$i" "$ZONE"; done
} >"$WORK/queries.txt"
[[ "$(wc -l <"$WORK/queries.txt")" == "$N" ]] || fail "query file has $(wc -l <"$WORK/queries.txt") lines"

log "sending $N queries at $QPS qps; PostgreSQL is killed twice meanwhile"
dnsperf -s 127.0.0.1 -p "$PORT" -d "$WORK/queries.txt" -n 1 -c 4 -q 32 -Q "$QPS" -t 5 \
  >"$WORK/dnsperf.out" 2>&1 &
DNSPERF_PID=$!
_track_pid "$DNSPERF_PID"

sleep 4
before1="$(count_rows)"
pg_kill postmaster
sleep 3
[[ "$(metric dnstap_collector_database_up)" == 0 ]] || fail "database_up is not 0 with the postmaster killed"
pg_up
wait_for "[[ \$(metric dnstap_collector_database_up) == 1 ]]" 20 || fail "the collector did not reconnect after the first crash"
log "first crash: $before1 rows before, reconnected; $(count_rows) rows now"

sleep 3
before2="$(count_rows)"
pg_kill all
sleep 3
pg_up
wait_for "[[ \$(metric dnstap_collector_database_up) == 1 ]]" 20 || fail "the collector did not reconnect after the second crash"
log "second crash: $before2 rows before, reconnected; $(count_rows) rows now"
grep -q 'redo done\|database system was interrupted' "$PG_DIR/postgres.log" \
  || log "note: no crash recovery seen in postgres.log"

wait "$DNSPERF_PID" || { cat "$WORK/dnsperf.out" >&2; fail "dnsperf failed"; }
sent="$(awk '/Queries sent:/ {print $3}' "$WORK/dnsperf.out")"
completed="$(awk '/Queries completed:/ {print $3}' "$WORK/dnsperf.out")"
log "dnsperf: sent=$sent completed=$completed"
[[ "$sent" == "$N" && "$completed" == "$N" ]] || { cat "$WORK/dnsperf.out" >&2; fail "dnsperf sent $sent / completed $completed of $N"; }

wait_for "(( \$(count_rows) >= $N ))" 60 || fail "only $(count_rows) of $N exchanges stored 60 s after the last crash"
wait_for "[[ \$(metric dnstap_collector_spool_bytes) == 0 ]]" 30 || fail "spool not empty: $(metric dnstap_collector_spool_bytes) bytes"
sleep 1

stop_named "$NAME"
stop_collector 30
[[ "$COLLECTOR_EXIT" == 0 ]] || fail "collector exited with status $COLLECTOR_EXIT"
frames="$(collector_stat frames_received)"; stored="$(collector_stat messages_stored)"; dropped="$(collector_stat dropped_total)"
((frames == stored + dropped)) || fail "stats: frames_received=$frames != messages_stored=$stored + dropped_total=$dropped"
((dropped == 0)) || fail "collector dropped $dropped messages: $(grep stats: "$WORK/collector.log" | tail -n 1)"

count="$(count_rows)"
dups="$(psql_value "SELECT count(*) FROM (SELECT 1 FROM $ROWS GROUP BY qname, qtype, query_port, dns_id HAVING count(*) > 1) d")"
if ((dups > 0)); then
  psql_value "SELECT qname, qtype, count(*), min(time), max(time) FROM $ROWS GROUP BY qname, qtype, query_port, dns_id HAVING count(*) > 1 ORDER BY 4 LIMIT 10" >&2
  fail "$dups exchanges stored more than once ($count rows for $N queries)"
fi
((count == N)) || fail "expected exactly $N exchanges, found $count"
awk '{ print tolower($1), $2 }' "$WORK/queries.txt" | sort >"$WORK/expected.txt"
psql_value "SELECT qname || ' ' || qtype FROM $ROWS" | sort >"$WORK/stored.txt"
diff -q "$WORK/expected.txt" "$WORK/stored.txt" >/dev/null || fail "stored (qname, qtype) set differs from the queries sent"
# Exchange rows and pdns were committed together: pdns counts match the answers stored.
pdns_www="$(psql_value "SELECT count FROM dnstap.pdns WHERE rrname = 'www.example.com' AND rrtype = 'A'")"
[[ "$pdns_www" == 1 ]] || fail "pdns count for www.example.com A is '$pdns_www', expected 1 (asked once)"
# Every answer RR stored in an exchange counts once in pdns: per (rrname, rrtype), the sum
# of pdns.count equals the RRs in the stored answers (no upsert applied twice or lost).
over="$(psql_value "WITH a AS (SELECT e->>'name' AS n, e->>'type' AS t, count(*) AS c
    FROM (SELECT answers FROM $ROWS) x, jsonb_array_elements(x.answers) e GROUP BY 1, 2),
  p AS (SELECT rrname AS n, rrtype AS t, sum(count) AS c FROM dnstap.pdns GROUP BY 1, 2)
  SELECT count(*) FROM a FULL JOIN p USING (n, t) WHERE a.c IS DISTINCT FROM p.c")"
log "(rrname, rrtype) whose pdns count differs from the stored answers: $over"
((over == 0)) || fail "$over pdns rows counted more (or less) often than the stored answers carry them"
log "all $N exchanges stored exactly once across two PostgreSQL crashes"
