#!/usr/bin/env bash
# docs/roles.sql for real, in a hardened database (PUBLIC may neither connect nor execute
# the dnstap functions):
#  - the collector runs as dnstap_writer: a real named's queries are all stored, pdns is
#    upserted, partitions are created ahead and on demand (import of an old capture), and
#    retention drops an old partition that existed before roles.sql ran;
#  - an analyst in dnstap_reader can SELECT, call the lookup functions, run `lookup` and
#    `report`, and can change nothing;
#  - every grant roles.sql gives the writer is needed: with any one of them taken back,
#    an import as the writer fails or loses its passive-DNS records.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
require_cmd dnsperf psql

ROLES_SQL="$SOURCE_DIR/docs/roles.sql"
FIXTURE="$SOURCE_DIR/tests/unit/data/bind_resolver.fstrm"
[[ -f "$ROLES_SQL" ]] || fail "$ROLES_SQL not found"
[[ -f "$FIXTURE" ]] || fail "$FIXTURE not found"
NAME=ns1

start_postgres
as_db() { local db="$1"; shift; PGDATABASE="$db" psql_value "$@"; }
conn_as() { echo "host=$PGHOST port=$PGPORT user=$1 dbname=$2"; }

# prepare_db DB: created, migrated and hardened as the superuser, then roles.sql (twice:
# it must be idempotent).
prepare_db() {
  local db="$1"
  psql_value "CREATE DATABASE $db" >/dev/null
  "$COLLECTOR" migrate --postgres "$(conn_as postgres "$db")" >"$WORK/migrate-$db.out" 2>&1 \
    || fail "migrate of $db failed: $(cat "$WORK/migrate-$db.out")"
  as_db "$db" "REVOKE ALL ON DATABASE $db FROM PUBLIC; REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA dnstap FROM PUBLIC" >/dev/null
  if [[ -n "${2:-}" ]]; then as_db "$db" "$2" >/dev/null; fi
  local i
  for i in 1 2; do
    PGDATABASE="$db" psql -X -q -v ON_ERROR_STOP=1 -f "$ROLES_SQL" >"$WORK/roles-$db.out" 2>&1 \
      || fail "roles.sql failed in $db (run $i): $(cat "$WORK/roles-$db.out")"
  done
}

# --- the writer serves a real named --------------------------------------------------------
# An old partition (owned by the superuser, with a row) that retention must drop.
prepare_db dnstap "CREATE TABLE dnstap.exchange_p20200101 PARTITION OF dnstap.exchange
  FOR VALUES FROM ('2020-01-01 00:00:00+00') TO ('2020-01-02 00:00:00+00');
  INSERT INTO dnstap.exchange (time, has_query, has_response, qname) VALUES ('2020-01-01 12:00+00', true, false, 'old.example')"
export PGDATABASE=dnstap
[[ "$(psql_value "SELECT tableowner FROM pg_tables WHERE tablename = 'exchange_p20200101'")" == dnstap_writer ]] \
  || fail "roles.sql did not hand the existing partition to dnstap_writer"

start_collector --postgres "$(conn_as dnstap_writer dnstap)" --retention-days 30
PORT="$(free_port)"
start_named "$NAME" 127.0.0.1 "$PORT" "$COLLECTOR_SOCKET" 'fstrm-set-input-queue-size 16384;' 'fstrm-set-flush-timeout 1;'
make_queries "$WORK/queries.txt"
n="$(wc -l <"$WORK/queries.txt")"
dnsperf -s 127.0.0.1 -p "$PORT" -d "$WORK/queries.txt" -n 1 -c 4 -q 64 -Q 3000 -t 5 >"$WORK/dnsperf.out" 2>&1 \
  || { cat "$WORK/dnsperf.out" >&2; fail "dnsperf failed"; }
ROWS="dnstap.exchange WHERE identity = '$NAME' AND qname IS DISTINCT FROM '$PROBE_QNAME'"
wait_for "(( \$(psql_value \"SELECT count(*) FROM $ROWS\") >= $n ))" 20 \
  || fail "as dnstap_writer only $(psql_value "SELECT count(*) FROM $ROWS") of $n exchanges stored"
[[ "$(psql_value "SELECT count(*) FROM dnstap.pdns WHERE rrname = 'www.example.com'")" == 2 ]] \
  || fail "as dnstap_writer pdns lacks www.example.com A/AAAA"
grep -q 'retention: dropped partition exchange_p20200101' "$WORK/collector.log" \
  || fail "retention did not drop the old partition as dnstap_writer"
[[ "$(psql_value "SELECT to_regclass('dnstap.exchange_p20200101') IS NULL")" == t ]] || fail "old partition still there"
owners="$(psql_value "SELECT string_agg(DISTINCT tableowner, ',') FROM pg_tables WHERE schemaname = 'dnstap' AND tablename LIKE 'exchange_p%'")"
[[ "$owners" == dnstap_writer ]] || fail "partitions owned by '$owners', expected dnstap_writer"
ahead="$(psql_value "SELECT count(*) FROM pg_tables WHERE schemaname = 'dnstap' AND tablename LIKE 'exchange_p%'")"
((ahead >= 4)) || fail "only $ahead partitions: not created ahead"
stop_named "$NAME"
stop_collector
[[ "$COLLECTOR_EXIT" == 0 ]] || fail "collector (dnstap_writer) exited with status $COLLECTOR_EXIT"
[[ "$(collector_stat dropped_total)" == 0 ]] || fail "collector (dnstap_writer) dropped messages: $(grep stats: "$WORK/collector.log" | tail -n 1)"
if grep -iE '^(warning|error):|permission denied|must be owner' "$WORK/collector.log" >&2; then
  fail "the collector logged errors or warnings as dnstap_writer (above)"
fi
log "collector as dnstap_writer: $n exchanges, pdns, partitions ahead, retention: all fine"

# On-demand partitions for old data (import of a 2020s capture): created by the writer too.
"$COLLECTOR" import "$FIXTURE" --postgres "$(conn_as dnstap_writer dnstap)" >"$WORK/import.out" 2>&1 \
  || fail "import as dnstap_writer failed: $(cat "$WORK/import.out")"
grep -qE 'stats: frames_received=([0-9]+) .*messages_stored=\1 ' "$WORK/import.out" \
  || fail "import as dnstap_writer did not store every frame: $(grep stats: "$WORK/import.out")"

# --- analysts ------------------------------------------------------------------------------
psql_value "CREATE ROLE alice LOGIN IN ROLE dnstap_reader" >/dev/null
ALICE="$(conn_as alice dnstap)"
as_alice() { PGUSER=alice psql_value "$@"; }
[[ "$(as_alice "SELECT count(*) FROM $ROWS")" == "$n" ]] || fail "alice cannot count the exchanges"
[[ "$(as_alice "SELECT count(*) FROM dnstap.pdns_name('*.example.com')")" -gt 10 ]] || fail "alice: pdns_name"
[[ "$(as_alice "SELECT count(*) FROM dnstap.pdns_rdata('192.0.2.0/24')")" -gt 10 ]] || fail "alice: pdns_rdata"
part="$(psql_value "SELECT tablename FROM pg_tables WHERE schemaname = 'dnstap' AND tablename LIKE 'exchange_p%' ORDER BY 1 DESC LIMIT 1")"
as_alice "SELECT count(*) FROM dnstap.$part" >/dev/null || fail "alice cannot read partition $part directly"
"$COLLECTOR" lookup www.example.com --postgres "$ALICE" >"$WORK/alice-lookup.out" 2>&1 || fail "lookup as alice: $(cat "$WORK/alice-lookup.out")"
[[ "$(wc -l <"$WORK/alice-lookup.out")" == 2 ]] || fail "lookup as alice: $(cat "$WORK/alice-lookup.out")"
"$COLLECTOR" report --from 1h --postgres "$ALICE" >"$WORK/alice-report.out" 2>&1 || fail "report as alice: $(cat "$WORK/alice-report.out")"
for sql in "INSERT INTO dnstap.pdns (rrname, rrtype, rdata, time_first, time_last, count) VALUES ('x', 'A', '1.2.3.4', now(), now(), 1)" \
           "DELETE FROM dnstap.exchange" "UPDATE dnstap.pdns SET count = 0" "TRUNCATE dnstap.pdns" \
           "CREATE TABLE dnstap.mine (i int)" "DROP TABLE dnstap.exchange_p20991231" \
           "CREATE TEMP TABLE t (i int)" "INSERT INTO dnstap.schema_version VALUES (9, 'x')"; do
  if PGUSER=alice psql -X -q -v ON_ERROR_STOP=1 -c "$sql" >"$WORK/alice.out" 2>&1; then
    fail "alice (dnstap_reader) could run: $sql"
  fi
  grep -qE 'permission denied|must be owner|does not exist' "$WORK/alice.out" || fail "alice: unexpected error for '$sql': $(cat "$WORK/alice.out")"
done
if "$COLLECTOR" migrate --postgres "$ALICE" >"$WORK/alice-migrate.out" 2>&1; then fail "alice could run migrate"; fi
log "alice (dnstap_reader): reads, looks up, reports; writes nothing"

# --- every writer grant is needed ------------------------------------------------------------
# import_ok DB: two imports of the capture as the writer (the second upserts existing pdns
# rows); true when both store every frame and pdns took the records, without errors.
import_ok() {
  local db="$1" i s1=0 s
  for i in 1 2; do
    timeout 60 "$COLLECTOR" import "$FIXTURE" --shutdown-timeout 1 --postgres "$(conn_as dnstap_writer "$db")" \
      >"$WORK/import-$db-$i.out" 2>&1 || return 1
    grep -qE 'stats: frames_received=([0-9]+) .*messages_stored=\1 ' "$WORK/import-$db-$i.out" || return 1
    grep -qiE '^(error|warning):|denied' "$WORK/import-$db-$i.out" && return 1
    s="$(as_db "$db" "SELECT coalesce(sum(count), 0) FROM dnstap.pdns")"
    if ((i == 1)); then s1="$s"; fi
  done
  ((s1 > 0 && s == 2 * s1))
}
prepare_db m0
import_ok m0 || fail "baseline: import as dnstap_writer with every roles.sql grant fails: $(cat "$WORK"/import-m0-*.out)"
i=0
while IFS= read -r revoke; do
  i=$((i + 1))
  prepare_db "m$i"
  as_db "m$i" "${revoke//@DB@/m$i}" >/dev/null
  if import_ok "m$i"; then
    fail "roles.sql grants more than needed: the writer still works after: $revoke"
  fi
  why="$(grep -hioE '(permission denied|must be owner)[^;]*' "$WORK"/import-m$i-*.out | head -n 1)"
  log "needed: ${revoke//@DB@/DB} -> ${why:-import failed}"
done <<'EOF'
REVOKE CONNECT ON DATABASE @DB@ FROM dnstap_writer
REVOKE TEMPORARY ON DATABASE @DB@ FROM dnstap_writer
REVOKE USAGE ON SCHEMA dnstap FROM dnstap_writer
REVOKE CREATE ON SCHEMA dnstap FROM dnstap_writer
ALTER TABLE dnstap.exchange OWNER TO postgres
REVOKE SELECT ON dnstap.schema_version FROM dnstap_writer
REVOKE SELECT ON dnstap.pdns FROM dnstap_writer
REVOKE INSERT ON dnstap.pdns FROM dnstap_writer
REVOKE UPDATE ON dnstap.pdns FROM dnstap_writer
EOF
log "docs/roles.sql: the writer works with its grants, and needs each of them"
