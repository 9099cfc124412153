#!/usr/bin/env bash
# Hostile and odd names through the whole path (real named -> collector -> PostgreSQL ->
# lookup/report): SQL metacharacters, a NUL octet, bytes >= 0x80, spaces, quotes, and the
# LIKE wildcards % and _. Checks:
#  - exchange rows hold the names in presentation form (\000, \032, \; escapes, lowercase);
#  - answers/pdns hold them the same way, and the tables (and a canary table x) survive;
#  - dnstap.pdns_name / pdns_rdata match names literally: 'a_b.example.com' never matches
#    'axb.example.com', '%' matches nothing, '*.a_b.example.com' only names under a_b;
#  - `dnstap-collector lookup` with each hostile string exits 0 (found) or 1 (nothing),
#    never with an SQL error, and prints valid NDJSON; `report` runs over them.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
require_cmd dig python3

NAME=ns1
start_postgres
collector_migrate
psql_value "CREATE TABLE public.x (id int); INSERT INTO public.x VALUES (42)" >/dev/null
start_collector
PORT="$(free_port)"
# check-names: the zone below has owner names that are not host names on purpose.
start_named "$NAME" 127.0.0.1 "$PORT" "$COLLECTOR_SOCKET" 'check-names primary ignore;' \
  'fstrm-set-flush-timeout 1;'

# Odd records, added to the running zone (zone file syntax: \; \  \" \DDD escapes).
ZONEFILE="${NAMED_DIR[$NAME]}/$ZONE.zone"
cat >>"$ZONEFILE" <<'EOF'
a_b IN A 192.0.2.201
axb IN A 192.0.2.202
sub.a_b IN A 192.0.2.205
pct%x IN A 192.0.2.203
pctyx IN A 192.0.2.208
\000weird IN A 192.0.2.204
\'\;drop\ table\ dnstap.exchange\;-- IN A 192.0.2.206
\200\255hi IN A 192.0.2.207
quote\"x IN TXT "it's \"quoted\" \\ back; ok"
c1 IN CNAME a_b
c2 IN CNAME axb
ready IN A 192.0.2.209
EOF
sleep 1.1  # a newer mtime than the load at start
rndc_named "$NAME" reload "$ZONE" >/dev/null || fail "rndc reload failed"
wait_for "dig +short +norec @127.0.0.1 -p $PORT ready.$ZONE A | grep -q 192.0.2.209" 10 \
  || fail "named did not load the odd records: $(grep -i 'example.com' "$WORK/named-$NAME.log" | tail -n 3)"

# name-as-dig-takes-it  qtype  expected-stored-qname  expected-rcode
CASES="$WORK/cases.txt"
cat >"$CASES" <<'EOF'
\000weird.example.com	A	\000weird.example.com	NOERROR
';drop table dnstap.exchange;--.example.com	A	'\;drop\032table\032dnstap.exchange\;--.example.com	NOERROR
'; drop table x; --.example.com	A	'\;\032drop\032table\032x\;\032--.example.com	NXDOMAIN
a_b.example.com	A	a_b.example.com	NOERROR
A_B.Example.COM	AAAA	a_b.example.com	NOERROR
axb.example.com	A	axb.example.com	NOERROR
sub.a_b.example.com	A	sub.a_b.example.com	NOERROR
pct%x.example.com	A	pct%x.example.com	NOERROR
pctyx.example.com	A	pctyx.example.com	NOERROR
%.example.com	A	%.example.com	NXDOMAIN
\200\255hi.example.com	A	\200\255hi.example.com	NOERROR
quote\"x.example.com	TXT	quote\"x.example.com	NOERROR
c1.example.com	A	c1.example.com	NOERROR
c2.example.com	A	c2.example.com	NOERROR
back\\slash\$x.example.com	A	back\\slash\$x.example.com	NXDOMAIN
x\009tab\010nl\255.example.com	A	x\009tab\010nl\255.example.com	NXDOMAIN
EOF
n_cases="$(wc -l <"$CASES")"
while IFS=$'\t' read -r qname qtype _ _; do
  # -q/-t: dig would take '%...' or '-...' for something else.
  dig +norec +time=2 +tries=1 @127.0.0.1 -p "$PORT" -q "$qname" -t "$qtype" >"$WORK/dig.out" 2>&1 \
    || fail "dig failed for '$qname' $qtype: $(cat "$WORK/dig.out")"
done <"$CASES"

ROWS="dnstap.exchange WHERE identity = '$NAME'"
wait_for "(( \$(psql_value \"SELECT count(*) FROM $ROWS AND has_response AND time > now() - interval '5 minutes'
  AND qname NOT IN ('$PROBE_QNAME', 'ready.example.com')\") >= $n_cases - 2 ))" 15 || true
sleep 2

# --- exchange rows: presentation form, one per query -----------------------------------
failures=0
while IFS=$'\t' read -r qname qtype stored rcode; do
  # Dollar quoting: nothing in the cases contains the tag.
  got="$(psql_value "SELECT count(*) || ' ' || coalesce(string_agg(DISTINCT rcode, ','), '-')
    FROM $ROWS AND qname = \$zz\$$stored\$zz\$ AND qtype = '$qtype'")"
  if [[ "$got" != "1 $rcode" ]]; then
    log "query '$qname' $qtype: expected one row qname '$stored' rcode $rcode, got: $got"
    failures=$((failures + 1))
  fi
done <"$CASES"
if ((failures)); then
  log "stored qnames (not from the zone's plain names):"
  psql_value "SELECT qname, qtype, rcode FROM $ROWS AND qname !~ '^[a-z0-9.-]+\$' ORDER BY 1" >&2
  fail "$failures of $n_cases odd names not stored as expected"
fi
log "all $n_cases odd names stored once, in presentation form"

# --- the tables are intact ---------------------------------------------------------------
[[ "$(psql_value "SELECT id FROM public.x")" == 42 ]] || fail "canary table x damaged"
for t in dnstap.exchange dnstap.pdns dnstap.schema_version; do
  [[ "$(psql_value "SELECT to_regclass('$t') IS NOT NULL")" == t ]] || fail "table $t is gone"
done

# --- pdns: stored the same way, matched literally -----------------------------------------
pdns() { psql_value "SELECT rrname || ' ' || rrtype || ' ' || rdata FROM $1 ORDER BY 1" | tr '\n' '|'; }
expect() { # expect SQL-FROM EXPECTED("a|b|")
  local got
  got="$(pdns "$1")"
  [[ "$got" == "$2" ]] || fail "$1: expected '$2', got '$got'"
}
expect "dnstap.pdns_name('a_b.example.com')" "a_b.example.com A 192.0.2.201|"
expect "dnstap.pdns_name('A_B.EXAMPLE.COM.')" "a_b.example.com A 192.0.2.201|"
expect "dnstap.pdns_name('axb.example.com')" "axb.example.com A 192.0.2.202|"
expect "dnstap.pdns_name('*.a_b.example.com')" "sub.a_b.example.com A 192.0.2.205|"
expect "dnstap.pdns_name('pct%x.example.com')" "pct%x.example.com A 192.0.2.203|"
expect "dnstap.pdns_name('pct_x.example.com')" ""
expect "dnstap.pdns_name('%.example.com')" ""
expect "dnstap.pdns_name('_.example.com')" ""
expect "dnstap.pdns_name('*.%.com')" ""
expect "dnstap.pdns_name('*._xample.com')" ""
expect "dnstap.pdns_name(\$zz\$\\000weird.example.com\$zz\$)" "\\000weird.example.com A 192.0.2.204|"
expect "dnstap.pdns_name(\$zz\$'\\;drop\\032table\\032dnstap.exchange\\;--.example.com\$zz\$)" \
  "'\\;drop\\032table\\032dnstap.exchange\\;--.example.com A 192.0.2.206|"
expect "dnstap.pdns_name(\$zz\$\\200\\255hi.example.com\$zz\$)" "\\200\\255hi.example.com A 192.0.2.207|"
expect "dnstap.pdns_rdata('a_b.example.com')" "c1.example.com CNAME a_b.example.com|"
expect "dnstap.pdns_rdata('axb.example.com')" "c2.example.com CNAME axb.example.com|"
expect "dnstap.pdns_rdata('a%b.example.com')" ""
expect "dnstap.pdns_rdata('192.0.2.206')" "'\\;drop\\032table\\032dnstap.exchange\\;--.example.com A 192.0.2.206|"
txt="$(psql_value "SELECT rdata FROM dnstap.pdns WHERE rrname = \$zz\$quote\\\"x.example.com\$zz\$ AND rrtype = 'TXT'")"
[[ "$txt" == *quoted*back* ]] || fail "TXT with quotes and backslashes not in pdns as expected: '$txt'"
log "pdns TXT rdata: $txt"
ans="$(psql_value "SELECT answers->0->>'rdata' FROM $ROWS AND qtype = 'TXT' AND qname = \$zz\$quote\\\"x.example.com\$zz\$")"
[[ "$ans" == "$txt" ]] || fail "exchange answers rdata '$ans' differs from pdns rdata '$txt'"

# --- lookup: hostile strings return, no SQL errors, valid NDJSON -----------------------------
lookup() { # lookup EXPECTED_EXIT EXPECTED_RRNAMES("a|b|") QUERY
  local want_rc="$1" want="$2" q="$3" rc=0 got
  "$COLLECTOR" lookup "$q" --postgres "$CONNINFO" >"$WORK/lookup.out" 2>"$WORK/lookup.err" || rc=$?
  [[ "$rc" == "$want_rc" ]] || fail "lookup '$q': exit $rc, expected $want_rc; stderr: $(cat "$WORK/lookup.err")"
  [[ ! -s "$WORK/lookup.err" ]] || fail "lookup '$q' wrote to stderr: $(cat "$WORK/lookup.err")"
  got="$(python3 -c '
import json, sys
names = []
for line in open(sys.argv[1], encoding="utf-8"):
    o = json.loads(line)
    for k in ("rrname", "rrtype", "rdata", "time_first", "time_last", "count"):
        assert k in o, (k, line)
    names.append(o["rrname"] + " " + o["rrtype"])
print("".join(n + "|" for n in sorted(names)))
' "$WORK/lookup.out")" || fail "lookup '$q' printed invalid NDJSON: $(head -c 500 "$WORK/lookup.out")"
  [[ "$got" == "$want" ]] || fail "lookup '$q': expected '$want', got '$got'"
}
lookup 1 "" "'; drop table x; --"
lookup 1 "" "';drop table dnstap.exchange;--.example.com"
lookup 1 "" "x' OR '1'='1"
lookup 1 "" "*.' OR 1=1 --"
lookup 1 "" '%'
lookup 1 "" '*.%'
lookup 1 "" '_.example.com'
lookup 1 "" 'rdata:%'
lookup 1 "" "rdata:'); DROP TABLE dnstap.pdns; --"
lookup 1 "" '192.0.2.0/33'
lookup 1 "" $'nul\x01byte.example.com'
lookup 0 "a_b.example.com A|" 'a_b.example.com'
lookup 0 "sub.a_b.example.com A|" '*.a_b.example.com'
lookup 0 "pct%x.example.com A|" 'pct%x.example.com'
lookup 0 '\000weird.example.com A|' '\000weird.example.com'
lookup 0 "'\\;drop\\032table\\032dnstap.exchange\\;--.example.com A|" "'\\;drop\\032table\\032dnstap.exchange\\;--.example.com"
lookup 0 '\200\255hi.example.com A|' '\200\255hi.example.com'
lookup 0 "c1.example.com CNAME|" 'rdata:a_b.example.com'
all="$("$COLLECTOR" lookup '*.example.com' --postgres "$CONNINFO" | python3 -c '
import json, sys
print(sum(1 for l in sys.stdin if json.loads(l)))')" || fail "lookup '*.example.com' failed or printed invalid NDJSON"
((all >= 12)) || fail "lookup '*.example.com' lists only $all records"

"$COLLECTOR" report --from 1h --postgres "$CONNINFO" >"$WORK/report.out" 2>"$WORK/report.err" \
  || fail "report failed: $(cat "$WORK/report.err")"
grep -qF "'\\;drop\\032table" "$WORK/report.out" || fail "report does not show the hostile name: $(head -n 20 "$WORK/report.out")"
python3 -c 'import sys; open(sys.argv[1], encoding="utf-8").read()' "$WORK/report.out" \
  || fail "report output is not valid UTF-8"

[[ "$(psql_value "SELECT id FROM public.x")" == 42 ]] || fail "canary table x damaged after the lookups"
[[ "$(psql_value "SELECT count(*) FROM dnstap.pdns")" -gt 0 ]] || fail "dnstap.pdns emptied"
stop_named "$NAME"
stop_collector
[[ "$COLLECTOR_EXIT" == 0 ]] || fail "collector exited with status $COLLECTOR_EXIT"
dropped="$(collector_stat dropped_total)"
[[ "$dropped" == 0 ]] || fail "collector dropped $dropped messages: $(grep stats: "$WORK/collector.log" | tail -n 1)"
log "hostile names stored escaped, matched literally, looked up without errors"
