#!/usr/bin/env bash
# The spool fills up while PostgreSQL is away, two ways:
#  A. the spool directory is a 512 KiB tmpfs (writes fail with ENOSPC);
#  B. --spool-max-bytes is small (the collector refuses to grow the spool past it).
# Either way the collector keeps running, counts what it could not keep as
# dropped_total{reason="spool_full"}, and once PostgreSQL is back it replays what it spooled:
# at the end frames_received == messages_stored + dropped_total with every drop a
# spool_full, and PostgreSQL holds exactly messages_stored messages.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
require_cmd dnsperf curl mount umount

QPS=600
LOAD_S=12
MAX_BYTES=262144   # B

MNT="$WORK/spool-tmpfs"
mkdir -p "$MNT"
mount -t tmpfs -o size=512k,mode=0755 tmpfs "$MNT" || fail "cannot mount a tmpfs on $MNT (needs root)"
# Unmount before lib.sh's cleanup removes $WORK (lazy: the collector may still hold a file).
trap '_rc=$?; umount -l "$MNT" 2>/dev/null; (exit $_rc); _cleanup' EXIT

pg_down() {
  log "stopping PostgreSQL"
  _as_postgres "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -m fast -w -t 30 stop >/dev/null || fail "pg_ctl stop failed"
}
pg_up() {
  log "starting PostgreSQL again"
  _as_postgres "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -l "$PG_DIR/postgres.log" -w -t 60 \
    -o "-p $PGPORT -k $PG_DIR -c listen_addresses='' -c fsync=off -c synchronous_commit=off -c full_page_writes=off" \
    start >/dev/null || fail "pg_ctl start failed"
  wait_for "psql_value 'select 1'" 30 || fail "PostgreSQL does not answer after restart"
}

make_queries "$WORK/queries.txt"
start_postgres
collector_migrate

# run_case NAME SPOOL_DIR [EXTRA ARGS]: one collector + one named through a full spool.
run_case() {
  local name="$1" spool="$2"
  shift 2
  MPORT="$(free_port)"
  rm -f "$WORK/dnstap.sock"
  start_collector --spool-dir "$spool" --metrics "127.0.0.1:$MPORT" "$@"
  local port
  port="$(free_port)"
  start_named "$name" 127.0.0.1 "$port" "$COLLECTOR_SOCKET" \
    'fstrm-set-input-queue-size 16384;' 'fstrm-set-flush-timeout 1;'
  wait_for "(( \$(psql_value \"SELECT count(*) FROM dnstap.exchange WHERE identity = '$name'\") > 0 ))" 10 \
    || fail "$name: the readiness probe never reached PostgreSQL"

  pg_down
  log "$name: $QPS qps for ${LOAD_S}s with PostgreSQL down"
  dnsperf -s 127.0.0.1 -p "$port" -d "$WORK/queries.txt" -c 4 -q 64 -Q "$QPS" -l "$LOAD_S" -t 2 \
    >"$WORK/dnsperf-$name.out" 2>&1 || { cat "$WORK/dnsperf-$name.out" >&2; fail "dnsperf failed"; }
  sleep 2
  collector_running || fail "$name: the collector died with a full spool"
  local full spool_bytes on_disk
  full="$(curl -fsS "http://127.0.0.1:$MPORT/metrics" | awk '$1 == "dnstap_collector_dropped_total{reason=\"spool_full\"}" {print $2}')"
  spool_bytes="$(metric dnstap_collector_spool_bytes)"
  on_disk="$(find "$spool" -name 'batch-*.spool' -printf '%s\n' | awk '{s += $1} END {print s + 0}')"
  log "$name: spool_full drops $full, spool_bytes $spool_bytes, $on_disk bytes in batch files"
  ((full > 0)) || fail "$name: no dropped_total{reason=\"spool_full\"} although the spool must be full"
  ((spool_bytes > 0)) || fail "$name: nothing spooled"
  ((spool_bytes == on_disk)) || fail "$name: spool_bytes $spool_bytes but $on_disk bytes of batch files"
  if [[ -n "${SPOOL_LIMIT:-}" ]]; then
    ((spool_bytes <= SPOOL_LIMIT)) || fail "$name: spool grew to $spool_bytes bytes past --spool-max-bytes $SPOOL_LIMIT"
  fi
  find "$spool" -name '*.tmp' | grep -q . && fail "$name: half-written .tmp files left in the spool"
  grep -E 'spool|dropped' "$WORK/collector.log" | head -n 5 >&2 || true

  pg_up
  wait_for "[[ \$(metric dnstap_collector_spool_bytes) == 0 ]]" 40 \
    || fail "$name: spool not replayed: spool_bytes $(metric dnstap_collector_spool_bytes)"
  stop_named "$name"
  sleep 1
  stop_collector 30
  [[ "$COLLECTOR_EXIT" == 0 ]] || fail "$name: collector exited with status $COLLECTOR_EXIT"
  cp "$WORK/collector.log" "$WORK/collector-$name.log"

  local frames stored dropped dropped_full in_db
  frames="$(collector_stat frames_received)"; stored="$(collector_stat messages_stored)"
  dropped="$(collector_stat dropped_total)"; dropped_full="$(collector_stat dropped_spool_full)"
  in_db="$(psql_value "SELECT coalesce(sum(has_query::int + has_response::int), 0) FROM dnstap.exchange WHERE identity = '$name'")"
  log "$name: frames_received=$frames messages_stored=$stored dropped_total=$dropped dropped_spool_full=$dropped_full; PostgreSQL: $in_db messages"
  ((frames == stored + dropped)) || fail "$name: frames_received=$frames != messages_stored=$stored + dropped_total=$dropped"
  ((dropped == dropped_full)) || fail "$name: drops other than spool_full: $(grep stats: "$WORK/collector.log" | tail -n 1)"
  ((in_db == stored)) || fail "$name: PostgreSQL holds $in_db messages, the collector says it stored $stored"
  # The spooled part arrived: more stored than the probe alone, i.e. rows from the outage.
  local outage_rows
  outage_rows="$(psql_value "SELECT count(*) FROM dnstap.exchange WHERE identity = '$name' AND qname IS DISTINCT FROM '$PROBE_QNAME'")"
  ((outage_rows > 0)) || fail "$name: nothing of the outage reached PostgreSQL"
  local dups
  dups="$(psql_value "SELECT count(*) FROM (SELECT 1 FROM dnstap.exchange WHERE identity = '$name' GROUP BY qname, qtype, query_port, dns_id, time HAVING count(*) > 1) d")"
  ((dups == 0)) || fail "$name: $dups exchanges stored twice"
  log "$name: log lines: $(grep -c 'spool: cannot write' "$WORK/collector.log" || true) 'spool: cannot write'," \
    "$(grep -c 'spool_full' "$WORK/collector.log" || true) 'dropped ... (spool_full)'"
  log "$name: $outage_rows exchanges of the outage replayed from the spool; $dropped_full messages counted spool_full"
}

run_case nsa "$MNT"
SPOOL_LIMIT=$MAX_BYTES run_case nsb "$WORK/spool-b" --spool-max-bytes "$MAX_BYTES"
log "a full spool drops and counts, never crashes, and replays what it kept"
