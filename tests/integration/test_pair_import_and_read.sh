#!/usr/bin/env bash
# Files in, the same answers out:
#   1. a live collector stores what named sends and writes the same stream to a file (-w);
#   2. `dnstap-collector read FILE` prints exactly what `dnstap-read FILE` prints (one line per
#      message, same type, addresses, transport, size and question), and `read --json` prints
#      one valid JSON object per message with the same types and questions;
#   3. `dnstap-collector import FILE` into a fresh database stores the same exchanges as the
#      live collector: same rows per kind, same (qname, qtype, query_port, dns_id) set, and the
#      same row contents (types, transport, addresses, rcode, flags, latency, answers, time).
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
require_cmd dnsperf dnstap-read dig comm
PYTHON=/usr/bin/python3
[[ -x "$PYTHON" ]] || fail "$PYTHON not found"

NAME=ns1
FILE="$WORK/live.fstrm"

start_postgres
collector_migrate
start_collector -u "$WORK/dnstap.sock" --postgres "$CONNINFO" -w "$FILE" --query-timeout 3
PORT="$(free_port)"
start_named "$NAME" 127.0.0.1 "$PORT" "$COLLECTOR_SOCKET" 'fstrm-set-input-queue-size 16384;' 'fstrm-set-flush-timeout 1;'

# 600 questions of the usual mix (NXDOMAIN, NODATA, CNAMEs, mixed case), over UDP, then a few
# over TCP and IPv6, straight to named.
make_queries "$WORK/all.txt"
head -n 600 "$WORK/all.txt" >"$WORK/q.txt"
n_q="$(wc -l <"$WORK/q.txt")"
dnsperf -s 127.0.0.1 -p "$PORT" -d "$WORK/q.txt" -n 1 -c 2 -q 32 -Q 2000 -t 5 >"$WORK/dnsperf.out" 2>&1 \
  || { cat "$WORK/dnsperf.out" >&2; fail "dnsperf failed"; }
completed="$(awk '/Queries completed:/ {print $3}' "$WORK/dnsperf.out")"
[[ "$completed" == "$n_q" ]] || { cat "$WORK/dnsperf.out" >&2; fail "dnsperf completed $completed of $n_q"; }
extra=0
for args in "+tcp www.example.com A" "+tcp Host3.Example.COM MX" "+tcp nx-tcp.example.com A"; do
  # shellcheck disable=SC2086
  dig +time=2 +tries=1 @127.0.0.1 -p "$PORT" $args >/dev/null || fail "dig $args failed"
  extra=$((extra + 1))
done
if ip -6 addr show dev lo 2>/dev/null | grep -q 'inet6 ::1/'; then
  for args in "www.example.com AAAA" "+tcp mail.example.com A"; do
    # shellcheck disable=SC2086
    dig +time=2 +tries=1 @::1 -p "$PORT" $args >/dev/null || fail "dig @::1 $args failed"
    extra=$((extra + 1))
  done
fi
sent=$((n_q + extra))
log "sent $sent questions ($n_q with dnsperf, $extra with dig) besides the readiness probe"
# start_named probes until named answers within 1 s: one probe or more when the machine is busy.
QUESTIONS="SELECT count(*) FROM dnstap.exchange WHERE qname IS DISTINCT FROM '$PROBE_QNAME'"
PROBES="SELECT count(*) FROM dnstap.exchange WHERE qname = '$PROBE_QNAME'"

wait_for "(( \$(psql_value \"$QUESTIONS\") >= $sent ))" 20 \
  || fail "live: only $(psql_value "$QUESTIONS") of $sent exchanges stored"
stop_named "$NAME"
sleep 0.5
stop_collector
[[ "$COLLECTOR_EXIT" == 0 ]] || fail "collector exited with status $COLLECTOR_EXIT"
frames="$(collector_stat frames_received)"
questions="$(psql_value "$QUESTIONS")"
probes="$(psql_value "$PROBES")"
((questions == sent)) || fail "live: expected $sent exchanges besides the probe, found $questions"
((probes >= 1)) || fail "live: the readiness probe is missing"
live_rows=$((questions + probes))
((frames == 2 * live_rows)) || fail "live: $frames frames for $live_rows exchanges"
log "live: $frames frames, $live_rows exchanges"

# ---------------------------------------------------------------------------------------
# read vs dnstap-read
dnstap-read "$FILE" >"$WORK/ref.txt" 2>"$WORK/ref.err" || fail "dnstap-read failed: $(cat "$WORK/ref.err")"
"$COLLECTOR" read "$FILE" >"$WORK/read.txt" 2>"$WORK/read.err" \
  || fail "'dnstap-collector read' failed (exit $?): $(tail -n 5 "$WORK/read.err")"
n_ref="$(wc -l <"$WORK/ref.txt")"
n_read="$(wc -l <"$WORK/read.txt")"
log "dnstap-read prints $n_ref lines, dnstap-collector read $n_read"
((n_ref == frames)) || fail "dnstap-read shows $n_ref messages, the collector received $frames frames"
((n_read == n_ref)) || fail "dnstap-collector read prints $n_read lines, dnstap-read $n_ref"
# Type, addresses, transport, size, question: columns 3 on.
cut -d' ' -f3- "$WORK/ref.txt" >"$WORK/ref.cols"
cut -d' ' -f3- "$WORK/read.txt" >"$WORK/read.cols"
if ! cmp -s "$WORK/ref.cols" "$WORK/read.cols"; then
  diff "$WORK/ref.cols" "$WORK/read.cols" >"$WORK/read.diff" || true
  log "dnstap-read (<) vs dnstap-collector read (>), first differences:"
  head -n 20 "$WORK/read.diff" >&2
  fail "dnstap-collector read differs from dnstap-read in type/address/transport/size/question columns"
fi
# And the time columns too (same TZ for both).
if ! cmp -s "$WORK/ref.txt" "$WORK/read.txt"; then
  diff "$WORK/ref.txt" "$WORK/read.txt" >"$WORK/read.diff" || true
  head -n 10 "$WORK/read.diff" >&2
  fail "dnstap-collector read prints other timestamps than dnstap-read"
fi
log "dnstap-collector read == dnstap-read, line for line"

# read --json: one valid object per message; types and questions as dnstap-read shows them.
"$COLLECTOR" read --json "$FILE" >"$WORK/read.json" 2>"$WORK/read.err" \
  || fail "'dnstap-collector read --json' failed (exit $?): $(tail -n 5 "$WORK/read.err")"
cat >"$WORK/check_read_json.py" <<'EOF'
import json, sys
ABBR = {"CLIENT": "C", "RESOLVER": "R", "AUTH": "A", "FORWARDER": "F", "STUB": "S", "TOOL": "T", "UPDATE": "U"}
n = 0
for i, line in enumerate(open(sys.argv[1]), 1):
    try:
        o = json.loads(line)
    except ValueError as e:
        sys.exit(f"line {i} is not JSON ({e}): {line[:200]}")
    if not isinstance(o, dict):
        sys.exit(f"line {i} is not a JSON object")
    kind, side = o["type"].rsplit("_", 1)
    msg = o.get("query_message" if side == "QUERY" else "response_message") or {}
    q = msg.get("question") or {}
    print(ABBR[kind] + side[0], f'{q.get("name", "-")}/{q.get("class", "-")}/{q.get("type", "-")}',
          o.get("identity", "-"))
EOF
"$PYTHON" "$WORK/check_read_json.py" "$WORK/read.json" >"$WORK/json.cols" 2>"$WORK/json.err" \
  || fail "read --json: $(cat "$WORK/json.err")"
n_json="$(wc -l <"$WORK/json.cols")"
((n_json == n_ref)) || fail "read --json prints $n_json objects, dnstap-read $n_ref messages"
awk '{print $3, $NF}' "$WORK/ref.txt" >"$WORK/ref.q"
# dnstap-read prints names with the case they had; JSON may too: compare case-insensitively.
awk '{print $1, $2}' "$WORK/json.cols" | tr '[:upper:]' '[:lower:]' >"$WORK/json.q"
tr '[:upper:]' '[:lower:]' <"$WORK/ref.q" >"$WORK/ref.ql"
if ! cmp -s "$WORK/ref.ql" "$WORK/json.q"; then
  diff "$WORK/ref.ql" "$WORK/json.q" | head -n 10 >&2 || true
  fail "read --json types/questions differ from dnstap-read's"
fi
bad_id="$(awk '$3 != "'"$NAME"'"' "$WORK/json.cols" | wc -l)"
((bad_id == 0)) || fail "read --json: $bad_id objects without identity $NAME"
log "read --json: $n_json valid objects, types and questions as dnstap-read"

# ---------------------------------------------------------------------------------------
# import into a fresh database
psql_value "CREATE DATABASE imported" >/dev/null
IMPORT_CONNINFO="host=$PGHOST port=$PGPORT user=postgres dbname=imported"
"$COLLECTOR" import "$FILE" --postgres "$IMPORT_CONNINFO" >"$WORK/import.log" 2>&1 \
  || fail "'dnstap-collector import' failed (exit $?): $(tail -n 10 "$WORK/import.log")"
log "import: $(grep -E 'stats:' "$WORK/import.log" | tail -n 1)"
psql_imported() { PGDATABASE=imported psql_value "$1"; }

kinds_live="$(psql_value "SELECT coalesce(kind,'-') || '/' || coalesce(query_type,'-') || '/' || coalesce(response_type,'-') || '=' || count(*)
  FROM dnstap.exchange GROUP BY kind, query_type, response_type ORDER BY 1" | tr '\n' ' ')"
kinds_imp="$(psql_imported "SELECT coalesce(kind,'-') || '/' || coalesce(query_type,'-') || '/' || coalesce(response_type,'-') || '=' || count(*)
  FROM dnstap.exchange GROUP BY kind, query_type, response_type ORDER BY 1" | tr '\n' ' ')"
log "rows per kind: live $kinds_live/ imported $kinds_imp"
[[ "$kinds_live" == "$kinds_imp" ]] || fail "rows per kind differ: live $kinds_live, imported $kinds_imp"

KEYS="SELECT qname || ' ' || qtype || ' ' || query_port || ' ' || dns_id FROM dnstap.exchange"
psql_value "$KEYS" | sort >"$WORK/live.keys"
psql_imported "$KEYS" | sort >"$WORK/imp.keys"
if ! cmp -s "$WORK/live.keys" "$WORK/imp.keys"; then
  comm -3 "$WORK/live.keys" "$WORK/imp.keys" | head -n 10 >&2
  fail "the (qname, qtype, query_port, dns_id) sets differ between live and imported"
fi
dups="$(sort "$WORK/imp.keys" | uniq -d | wc -l)"
((dups == 0)) || fail "import stored $dups (qname, qtype, query_port, dns_id) more than once"

# Whole rows, but for what depends on when a row was written.
ROW="SELECT concat_ws('|', time, response_time, identity, kind, query_type, response_type, transport,
  query_address, query_port, response_address, response_port, dns_id, qname, qtype, qclass, rcode,
  flags, has_query, has_response, latency_us, query_size, response_size, answer_count, answers::text,
  edns_udp_size, edns_do, ecs, error, query_zone) FROM dnstap.exchange"
psql_value "$ROW" | sort >"$WORK/live.rows"
psql_imported "$ROW" | sort >"$WORK/imp.rows"
if ! cmp -s "$WORK/live.rows" "$WORK/imp.rows"; then
  diff "$WORK/live.rows" "$WORK/imp.rows" | head -n 10 >&2 || true
  fail "imported rows differ from the live ones (live <, imported >)"
fi
unpaired="$(psql_imported "SELECT count(*) FROM dnstap.exchange WHERE NOT (has_query AND has_response)")"
((unpaired == 0)) || fail "import left $unpaired exchanges unpaired"
log "import stored the same $live_rows exchanges as the live collector, row for row"
