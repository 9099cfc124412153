#!/usr/bin/env bash
# Pairing across every message type a BIND resolver and a BIND authoritative server send:
#   auth1      named on 127.0.0.2 (added to lo if missing), authoritative for example.com and
#              example.net, dnstap { client; auth; }.
#   resolver1  named on 127.0.0.1 and ::1, recursion yes, dnstap { client; resolver; forwarder; }:
#              example.com through a static-stub zone, example.net through a forward zone,
#              both pointing at auth1 (BIND 9.18 types both RQ/RR: it sends no FQ/FR).
# Both servers use the same port (BIND's `port` option sets the listening and the destination
# port, as in BIND's own system tests), and log to one collector that also writes the raw
# stream to a file (-w). A known mix goes to the resolver: UDP and TCP, IPv4 and IPv6,
# NXDOMAIN, a CNAME chain inside the zone and one into the forwarded zone, a TXT too big for
# UDP (TC=1, then TCP: between the resolver and auth1 and between dig and the resolver), and
# mixed-case names. Then, against `dnstap-read -y` of the file (exactly what the collector
# received):
#   - every message in the file is in dnstap.exchange once, on the right side of a row
#     (identity, message type, qname, qtype, transport, DNS id), and nothing else is;
#   - every query is paired with its response (no lone rows), latencies are >= 0;
#   - +tcp, IPv6, truncation, mixed case and CNAME rows look as they should.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
require_cmd named named-checkconf dig dnstap-read ip
PYTHON=/usr/bin/python3
[[ -x "$PYTHON" ]] || fail "$PYTHON not found"
"$PYTHON" -c 'import yaml' 2>/dev/null || fail "$PYTHON lacks the yaml module (python3-yaml)"

AUTH_ADDR=127.0.0.2
ADDED_ADDR=0
# lib.sh's EXIT trap is _cleanup; remove the address we added (only then) before it.
trap '_rc=$?; set +e; if ((ADDED_ADDR)); then ip addr del "$AUTH_ADDR/8" dev lo 2>/dev/null; fi; (exit $_rc); _cleanup' EXIT
if ! ip -4 addr show dev lo | grep -q "inet $AUTH_ADDR/"; then
  ip addr add "$AUTH_ADDR/8" dev lo || fail "cannot add $AUTH_ADDR to lo (needs CAP_NET_ADMIN)"
  ADDED_ADDR=1
  log "added $AUTH_ADDR to lo"
fi
HAVE_V6=0
ip -6 addr show dev lo 2>/dev/null | grep -q 'inet6 ::1/' && HAVE_V6=1
((HAVE_V6)) || fail "no ::1 on lo: the IPv6 client checks need it"

# ---------------------------------------------------------------------------------------
# named instances of our own (lib.sh's zone has no big TXT nor CNAME chains). Registered in
# lib.sh's NAMED_* arrays so its cleanup stops them.

# run_named NAME: named -g with $WORK/named-NAME/named.conf (already written).
run_named() {
  local name="$1" dir="$WORK/named-$1"
  chown -R bind:bind "$dir"
  named-checkconf -z "$dir/named.conf" >"$dir/checkconf.out" 2>&1 \
    || { cat "$dir/checkconf.out" >&2; fail "named-checkconf rejected $dir/named.conf"; }
  named -u bind -c "$dir/named.conf" -g -n 2 >"$WORK/named-$name.log" 2>&1 &
  NAMED_PID[$name]=$!
  _track_pid "${NAMED_PID[$name]}"
  NAMED_DIR[$name]="$dir"
}

# wait_answers NAME DIG_ARGS...: until dig DIG_ARGS prints NXDOMAIN.
wait_answers() {
  local name="$1"
  shift
  local deadline=$((SECONDS + 30))
  until dig +time=1 +tries=1 "$@" 2>/dev/null | grep -q 'status: NXDOMAIN'; do
    kill -0 "${NAMED_PID[$name]}" 2>/dev/null || { NAMED_PID[$name]=""; fail "named '$name' exited during startup"; }
    ((SECONDS < deadline)) || fail "named '$name' does not answer 'dig $*' within 30 s"
    sleep 0.2
  done
  log "named '$name' pid ${NAMED_PID[$name]} answers"
}

start_postgres
collector_migrate
start_collector -u "$WORK/dnstap.sock" --postgres "$CONNINFO" -w "$WORK/all.fstrm" --query-timeout 3
PORT="$(free_port)"

# auth1 --------------------------------------------------------------------------------
AD="$WORK/named-auth1"
mkdir -p "$AD"
BIG_STRING="$(printf 'x%.0s' {1..250})"
{
  printf '$TTL 300\n@ IN SOA ns1 hostmaster 1 3600 600 86400 300\n@ IN NS ns1\n'
  printf 'ns1 IN A %s\nwww IN A 192.0.2.80\nwww IN AAAA 2001:db8::80\n' "$AUTH_ADDR"
  for i in 1 2 3 4 5 6; do printf 'host%d IN A 192.0.2.%d\nhost%d IN AAAA 2001:db8::%d\n' "$i" "$i" "$i" "$i"; done
  printf 'MiXeD IN A 192.0.2.99\n'
  printf 'chain1 IN CNAME chain2\nchain2 IN CNAME chain3\nchain3 IN CNAME www\n'
  printf 'tonet IN CNAME target.example.net.\n'
  # 6 strings of 250 bytes: a TXT RRset of about 1.5 kB, over BIND's 1232-byte EDNS default.
  printf 'big IN TXT'; for i in 1 2 3 4 5 6; do printf ' "%s%d"' "${BIG_STRING:1}" "$i"; done; printf '\n'
} >"$AD/example.com.zone"
printf '$TTL 300\n@ IN SOA ns1.example.com. hostmaster.example.com. 1 3600 600 86400 300\n@ IN NS ns1.example.com.\ntarget IN A 192.0.2.200\n' \
  >"$AD/example.net.zone"
cat >"$AD/named.conf" <<EOF
options {
	directory "$AD";
	pid-file "$AD/named.pid";
	session-keyfile "$AD/session.key";
	managed-keys-directory "$AD";
	port $PORT;
	listen-on port $PORT { $AUTH_ADDR; };
	listen-on-v6 { none; };
	recursion no;
	dnssec-validation no;
	notify no;
	dnstap { client; auth; };
	dnstap-output unix "$COLLECTOR_SOCKET";
	dnstap-identity "auth1";
	fstrm-set-flush-timeout 1;
	fstrm-set-reopen-interval 1;
};
controls { };
zone "example.com" { type primary; file "$AD/example.com.zone"; };
zone "example.net" { type primary; file "$AD/example.net.zone"; };
EOF
log "starting named 'auth1' on $AUTH_ADDR port $PORT"
run_named auth1
wait_answers auth1 +norec @"$AUTH_ADDR" -p "$PORT" "$PROBE_QNAME" A

# resolver1 ----------------------------------------------------------------------------
RD="$WORK/named-resolver1"
mkdir -p "$RD"
# Root hints on the loopback: should the resolver prime the root, auth1 refuses it, and
# nothing ever leaves the machine.
printf '. 3600000 IN NS a.root.test.\na.root.test. 3600000 IN A %s\n' "$AUTH_ADDR" >"$RD/root.hint"
cat >"$RD/named.conf" <<EOF
options {
	directory "$RD";
	pid-file "$RD/named.pid";
	session-keyfile "$RD/session.key";
	managed-keys-directory "$RD";
	port $PORT;
	listen-on port $PORT { 127.0.0.1; };
	listen-on-v6 port $PORT { ::1; };
	recursion yes;
	allow-recursion { 127.0.0.0/8; ::1; };
	allow-query-cache { 127.0.0.0/8; ::1; };
	dnssec-validation no;
	qname-minimization off;
	notify no;
	dnstap { client; resolver; forwarder; };
	dnstap-output unix "$COLLECTOR_SOCKET";
	dnstap-identity "resolver1";
	fstrm-set-flush-timeout 1;
	fstrm-set-reopen-interval 1;
};
controls { };
zone "." { type hint; file "$RD/root.hint"; };
zone "example.com" { type static-stub; server-addresses { $AUTH_ADDR; }; };
zone "example.net" { type forward; forward only; forwarders { $AUTH_ADDR port $PORT; }; };
EOF
log "starting named 'resolver1' on 127.0.0.1 and ::1 port $PORT (static-stub example.com, forward example.net -> $AUTH_ADDR)"
run_named resolver1
wait_answers resolver1 @127.0.0.1 -p "$PORT" "ready.$ZONE" A

# ---------------------------------------------------------------------------------------
# The mix. Each dig's output is kept; each must get the expected status.
n_dig=0
ask() { # ask EXPECTED_STATUS DIG_ARGS...
  local want="$1" out
  shift
  n_dig=$((n_dig + 1))
  out="$WORK/dig-$n_dig.out"
  dig +time=3 +tries=1 "$@" >"$out" 2>&1 || true
  grep -q "status: $want" "$out" || { cat "$out" >&2; fail "dig $* did not get $want"; }
}
R4=(@127.0.0.1 -p "$PORT")
R6=(@::1 -p "$PORT")
ask NOERROR "${R4[@]}" www.example.com A
ask NOERROR "${R4[@]}" +tcp host1.example.com A
ask NOERROR "${R6[@]}" host2.example.com AAAA
ask NOERROR "${R6[@]}" +tcp host3.example.com A
ask NXDOMAIN "${R4[@]}" nx1.example.com A
ask NXDOMAIN "${R6[@]}" nx2.example.com AAAA
ask NXDOMAIN "${R4[@]}" +tcp nx3.example.com A
ask NOERROR "${R4[@]}" chain1.example.com A
ask NOERROR "${R4[@]}" tonet.example.com A
ask NOERROR "${R4[@]}" target.example.net A
ask NOERROR "${R4[@]}" MiXeD.ExAmPlE.CoM A
ask NOERROR "${R4[@]}" WwW.ExAmPlE.CoM AAAA
ask NOERROR "${R6[@]}" HOST4.EXAMPLE.COM A
# A TXT of 1.5 kB, advertising 512 bytes: TC=1 over UDP, dig retries over TCP.
ask NOERROR "${R4[@]}" +bufsize=512 big.example.com TXT
grep -q 'Truncated, retrying in TCP mode' "$WORK/dig-$n_dig.out" \
  || { cat "$WORK/dig-$n_dig.out" >&2; fail "dig big.example.com TXT +bufsize=512 was not truncated over UDP"; }
grep -q 'ANSWER: 1,' "$WORK/dig-$n_dig.out" || fail "big.example.com TXT over TCP has no answer"
# The resolver's cache now answers; the same question once more from IPv6 with a large
# buffer: still TC=1, named never sends more than max-udp-size (1232) over UDP. Then straight
# to auth1 (AQ/AR for a dig client).
ask NOERROR "${R6[@]}" +bufsize=4096 big.example.com TXT
grep -q 'Truncated, retrying in TCP mode' "$WORK/dig-$n_dig.out" \
  || { cat "$WORK/dig-$n_dig.out" >&2; fail "dig @::1 big.example.com TXT +bufsize=4096 was not truncated over UDP"; }
ask NOERROR +norec @"$AUTH_ADDR" -p "$PORT" host5.example.com A
ask NOERROR +norec +tcp @"$AUTH_ADDR" -p "$PORT" host6.example.com AAAA
log "sent $n_dig dig questions"

# Let named flush (fstrm-set-flush-timeout 1), stop both (which closes their streams), then
# drain the collector so every row and the file are final.
sleep 1.5
stop_named resolver1
stop_named auth1
sleep 0.5
stop_collector
[[ "$COLLECTOR_EXIT" == 0 ]] || fail "collector exited with status $COLLECTOR_EXIT after SIGTERM"

# ---------------------------------------------------------------------------------------
# What the collector received, by dnstap-read -y: one TSV line per message.
dnstap-read -y "$WORK/all.fstrm" >"$WORK/all.yaml" 2>"$WORK/read.err" \
  || fail "dnstap-read -y failed: $(cat "$WORK/read.err")"
cat >"$WORK/parse.py" <<'EOF'
import sys, yaml
ABBR = {"CLIENT": "C", "RESOLVER": "R", "AUTH": "A", "FORWARDER": "F", "STUB": "S", "TOOL": "T", "UPDATE": "U"}
out = []
for doc in yaml.safe_load_all(open(sys.argv[1])):
    if not doc:
        continue
    m = doc["message"]
    kind, side = m["type"].rsplit("_", 1)
    t = ABBR[kind] + side[0]
    data = m.get("query_message_data" if side == "QUERY" else "response_message_data") or {}
    qs = data.get("QUESTION_SECTION") or []
    name, qtype = "-", "-"
    if qs:
        f = str(qs[0]).split()
        name, qtype = f[0].rstrip(".").lower(), f[-1]
    out.append("\t".join([doc.get("identity", "-"), t, m.get("socket_protocol", "-").lower(),
                          name, qtype, str(data.get("id", "-")),
                          str(m.get("query_address", "-")), str(m.get("query_port", "-")),
                          str(m.get("response_address", "-")), str(m.get("response_port", "-"))]))
print("\n".join(sorted(out)))
EOF
"$PYTHON" "$WORK/parse.py" "$WORK/all.yaml" >"$WORK/file.tsv" || fail "could not parse dnstap-read -y output"
n_file="$(wc -l <"$WORK/file.tsv")"
log "the file holds $n_file messages: $(cut -f1,2 "$WORK/file.tsv" | sort | uniq -c | awk '{printf "%s/%s=%s ", $2, $3, $1}')"

frames="$(collector_stat frames_received || true)"
stored="$(collector_stat messages_stored || true)"
dropped="$(collector_stat dropped_total || true)"
log "collector: frames_received=$frames messages_stored=$stored dropped_total=$dropped"
[[ "$frames" == "$n_file" ]] || fail "collector counted frames_received=$frames, the file holds $n_file messages"
[[ -z "$dropped" || "$dropped" == 0 ]] || fail "collector dropped $dropped messages"

# What PostgreSQL holds, one line per message side, in the same columns (identity, type,
# transport, qname, qtype, DNS id, query address and port, response address and port).
COLS="identity || E'\t' || %s || E'\t' || transport || E'\t' || qname || E'\t' || qtype || E'\t' || dns_id
  || E'\t' || host(query_address) || E'\t' || query_port || E'\t' || host(response_address) || E'\t' || response_port"
psql_value "SELECT ${COLS//%s/query_type} FROM dnstap.exchange WHERE has_query
  UNION ALL SELECT ${COLS//%s/response_type} FROM dnstap.exchange WHERE has_response" | sort >"$WORK/db.tsv"
sort "$WORK/file.tsv" >"$WORK/file-sorted.tsv"
if ! cmp -s "$WORK/file-sorted.tsv" "$WORK/db.tsv"; then
  comm -23 "$WORK/file-sorted.tsv" "$WORK/db.tsv" >"$WORK/missing.tsv"
  comm -13 "$WORK/file-sorted.tsv" "$WORK/db.tsv" >"$WORK/extra.tsv"
  log "$(wc -l <"$WORK/missing.tsv") messages in the file but not in dnstap.exchange:"
  head -n 15 "$WORK/missing.tsv" >&2
  log "$(wc -l <"$WORK/extra.tsv") message sides in dnstap.exchange but not in the file:"
  head -n 15 "$WORK/extra.tsv" >&2
  fail "stored message sides differ from what dnstap-read shows in the file"
fi
log "all $n_file messages of the file are stored, on the right side of a row, with the right type"

# Per-type counts, by SQL GROUP BY (the same facts, in the form the brief gives).
by_type_db="$(psql_value "SELECT t || '=' || sum(n) FROM (
    SELECT query_type AS t, count(*) AS n FROM dnstap.exchange WHERE has_query GROUP BY 1
    UNION ALL SELECT response_type, count(*) FROM dnstap.exchange WHERE has_response GROUP BY 1) x
  GROUP BY t ORDER BY t" | tr '\n' ' ')"
by_type_file="$(cut -f2 "$WORK/file.tsv" | sort | uniq -c | awk '{printf "%s=%s ", $2, $1}')"
log "per type: file $by_type_file/ db $by_type_db"
[[ "$by_type_db" == "$by_type_file" ]] || fail "per-type counts differ: file $by_type_file, db $by_type_db"
for t in CQ CR RQ RR AQ AR; do
  grep -q "\b$t=" <<<"$by_type_file" || fail "no $t message at all in the stream ($by_type_file)"
done

# Pairing: every query has its response.
pairs="$(psql_value "SELECT coalesce(identity,'-') || ' ' || coalesce(kind,'-') || ' ' || coalesce(query_type,'-') || '/' ||
  coalesce(response_type,'-') || ' ' || transport || ' = ' || count(*) FROM dnstap.exchange
  GROUP BY identity, kind, query_type, response_type, transport ORDER BY 1" | tr '\n' ';')"
log "rows: $pairs"
lone="$(psql_value "SELECT count(*) FROM dnstap.exchange WHERE NOT (has_query AND has_response)")"
if ((lone > 0)); then
  psql_value "SELECT identity, kind, query_type, response_type, transport, qname, qtype, dns_id, query_address,
      query_port, response_address, response_port FROM dnstap.exchange WHERE NOT (has_query AND has_response)
      ORDER BY qname, dns_id LIMIT 20" >&2
  # The same messages as dnstap-read shows them.
  psql_value "SELECT DISTINCT qname FROM dnstap.exchange WHERE NOT (has_query AND has_response) LIMIT 3" \
    >"$WORK/lone-names.txt"
  while IFS= read -r n; do
    log "dnstap-read (identity type proto qname qtype id qaddr qport raddr rport) for $n:"
    awk -F'\t' -v n="$n" '$4 == n' "$WORK/file.tsv" >&2
  done <"$WORK/lone-names.txt"
  fail "$lone exchanges lack their query or response (rows: $pairs)"
fi
matched="$(collector_stat pairs_matched || true)"
rows="$(psql_value "SELECT count(*) FROM dnstap.exchange")"
[[ -z "$matched" || "$matched" == "$rows" ]] || fail "pairs_matched=$matched but $rows rows, all paired"
for k in client resolver auth; do
  n="$(psql_value "SELECT count(*) FROM dnstap.exchange WHERE kind = '$k' AND has_query AND has_response")"
  ((n > 0)) || fail "no paired '$k' exchange (rows: $pairs)"
done
neg="$(psql_value "SELECT count(*) FROM dnstap.exchange WHERE latency_us IS NULL OR latency_us < 0")"
((neg == 0)) || fail "$neg paired exchanges with a NULL or negative latency: $(psql_value "SELECT qname || ' ' || query_type || ' ' || coalesce(latency_us::text,'NULL') FROM dnstap.exchange WHERE latency_us IS NULL OR latency_us < 0 LIMIT 5" | tr '\n' ';')"
bad_rt="$(psql_value "SELECT count(*) FROM dnstap.exchange WHERE response_time < time")"
((bad_rt == 0)) || fail "$bad_rt exchanges whose response_time is before their time"

# Addresses: queries to resolver1's client side come from 127.0.0.1 or ::1 and go to it;
# the resolver's RQ/FQ go to auth1.
C1="dnstap.exchange WHERE identity = 'resolver1' AND kind = 'client'"
bad="$(psql_value "SELECT count(*) FROM $C1 AND NOT (query_address IN ('127.0.0.1', '::1') AND response_address = query_address AND response_port = $PORT)")"
((bad == 0)) || fail "$bad resolver1 client rows with unexpected addresses: $(psql_value "SELECT query_address || ' ' || response_address || ':' || response_port FROM $C1 LIMIT 5" | tr '\n' ';')"
bad="$(psql_value "SELECT count(*) FROM dnstap.exchange WHERE identity = 'resolver1' AND kind IN ('resolver', 'forwarder')
  AND (response_address IS DISTINCT FROM '$AUTH_ADDR' OR response_port IS DISTINCT FROM $PORT)")"
((bad == 0)) || fail "$bad resolver1 resolver/forwarder rows not towards $AUTH_ADDR:$PORT"

# +tcp and IPv6 client rows.
row_count() { psql_value "SELECT count(*) FROM $1"; }
((  $(row_count "$C1 AND qname = 'host1.example.com' AND transport = 'tcp' AND query_type = 'CQ' AND response_type = 'CR' AND query_address = '127.0.0.1'") == 1 )) \
  || fail "no paired tcp client row for host1.example.com (+tcp over IPv4)"
(( $(row_count "$C1 AND qname = 'host3.example.com' AND transport = 'tcp' AND query_address = '::1' AND has_response") == 1 )) \
  || fail "no paired tcp client row from ::1 for host3.example.com"
(( $(row_count "$C1 AND qname = 'host2.example.com' AND qtype = 'AAAA' AND transport = 'udp' AND query_address = '::1' AND rcode = 'NOERROR' AND answer_count = 1") == 1 )) \
  || fail "no paired udp client row from ::1 for host2.example.com AAAA with its answer"
n6="$(row_count "$C1 AND family(query_address) = 6")"
((n6 >= 5)) || fail "only $n6 IPv6 client rows (expected >= 5)"
(( $(row_count "$C1 AND qname = 'nx3.example.com' AND transport = 'tcp' AND rcode = 'NXDOMAIN'") == 1 )) \
  || fail "no NXDOMAIN tcp client row for nx3.example.com"
nx="$(row_count "$C1 AND rcode = 'NXDOMAIN' AND qname ~ '^nx[0-9]'")"
((nx == 3)) || fail "expected 3 NXDOMAIN client rows for nx1..nx3, found $nx"
# The resolver asked auth1 for each NX name once, and auth1 said NXDOMAIN.
nx="$(row_count "dnstap.exchange WHERE identity = 'auth1' AND kind = 'auth' AND rcode = 'NXDOMAIN' AND qname ~ '^nx[0-9]'")"
((nx == 3)) || fail "expected 3 NXDOMAIN auth1 rows for nx1..nx3, found $nx"

# Truncation: the client's UDP exchange for big.example.com TXT has TC, the TCP retry after it not.
big="$(psql_value "SELECT transport || ' ' || coalesce(flags,'-') || ' ' || coalesce(answer_count::text,'-') || ' ' || query_size || ' ' || response_size
  FROM $C1 AND qname = 'big.example.com' AND query_address = '127.0.0.1' ORDER BY time" | tr '\n' ';')"
log "resolver1 client rows for big.example.com TXT from 127.0.0.1: $big"
(( $(row_count "$C1 AND qname = 'big.example.com' AND query_address = '127.0.0.1' AND transport = 'udp' AND flags ~ '\mtc\M' AND answer_count = 0 AND response_size <= 512") == 1 )) \
  || fail "no truncated (tc, <= 512 bytes) udp client exchange for big.example.com TXT: $big"
(( $(row_count "$C1 AND qname = 'big.example.com' AND query_address = '127.0.0.1' AND transport = 'tcp' AND flags !~ '\mtc\M' AND answer_count = 1 AND response_size > 1232
    AND time >= (SELECT time FROM $C1 AND qname = 'big.example.com' AND query_address = '127.0.0.1' AND transport = 'udp')") == 1 )) \
  || fail "no complete tcp client exchange for big.example.com TXT after the truncated one: $big"
(( $(row_count "$C1 AND qname = 'big.example.com' AND query_address = '::1' AND transport = 'udp' AND flags ~ '\mtc\M' AND answer_count = 0") == 1 )) \
  || fail "no truncated udp client exchange from ::1 for big.example.com TXT: $big"
(( $(row_count "$C1 AND qname = 'big.example.com' AND query_address = '::1' AND transport = 'tcp' AND flags !~ '\mtc\M' AND answer_count = 1") == 1 )) \
  || fail "no tcp client exchange from ::1 for big.example.com TXT after the truncated one"
# Between resolver1 and auth1 the same happened at 1232 bytes: RQ over udp with TC, then tcp;
# auth1 saw both too.
rbig="$(psql_value "SELECT identity || ' ' || kind || ' ' || transport || ' ' || coalesce(flags,'-') FROM dnstap.exchange
  WHERE qname = 'big.example.com' AND kind IN ('resolver', 'auth') ORDER BY time" | tr '\n' ';')"
log "resolver/auth rows for big.example.com: $rbig"
(( $(row_count "dnstap.exchange WHERE identity = 'resolver1' AND kind = 'resolver' AND qname = 'big.example.com' AND transport = 'udp' AND flags ~ '\mtc\M'") == 1 )) \
  || fail "no truncated udp resolver exchange (resolver1 -> auth1) for big.example.com: $rbig"
(( $(row_count "dnstap.exchange WHERE identity = 'resolver1' AND kind = 'resolver' AND qname = 'big.example.com' AND transport = 'tcp' AND flags !~ '\mtc\M' AND answer_count = 1") == 1 )) \
  || fail "no tcp resolver exchange (resolver1 -> auth1) for big.example.com after the truncation: $rbig"
(( $(row_count "dnstap.exchange WHERE identity = 'auth1' AND qname = 'big.example.com' AND transport = 'udp' AND flags ~ '\mtc\M'") == 1 )) \
  || fail "auth1 has no truncated udp exchange for big.example.com: $rbig"
(( $(row_count "dnstap.exchange WHERE identity = 'auth1' AND qname = 'big.example.com' AND transport = 'tcp' AND answer_count = 1") == 1 )) \
  || fail "auth1 has no tcp exchange for big.example.com: $rbig"

# Mixed case: stored lowercase everywhere, and paired on each side.
upper="$(psql_value "SELECT count(*) FROM dnstap.exchange WHERE qname <> lower(qname)")"
((upper == 0)) || fail "$upper rows with upper case in qname: $(psql_value "SELECT DISTINCT qname FROM dnstap.exchange WHERE qname <> lower(qname) LIMIT 5" | tr '\n' ' ')"
for spec in "resolver1 client mixed.example.com A" "resolver1 resolver mixed.example.com A" "auth1 auth mixed.example.com A" \
            "resolver1 client www.example.com AAAA" "resolver1 client host4.example.com A" "resolver1 resolver host4.example.com A"; do
  read -r id k qn qt <<<"$spec"
  (( $(row_count "dnstap.exchange WHERE identity = '$id' AND kind = '$k' AND qname = '$qn' AND qtype = '$qt' AND has_query AND has_response") == 1 )) \
    || fail "no single paired $id $k row for $qn $qt (sent in mixed case): $(psql_value "SELECT kind || ' ' || query_type || '/' || coalesce(response_type,'-') FROM dnstap.exchange WHERE qname = '$qn'" | tr '\n' ';')"
done
ans="$(psql_value "SELECT answers::text FROM $C1 AND qname = 'mixed.example.com'")"
[[ "$ans" == *192.0.2.99* ]] || fail "mixed.example.com answers lack 192.0.2.99: $ans"

# CNAME chains: the whole chain in the client's answer; the cross-zone one through the forwarder.
ch="$(psql_value "SELECT answer_count || ' ' || answers::text FROM $C1 AND qname = 'chain1.example.com'")"
[[ "$ch" == "4 "* && "$ch" == *chain2.example.com* && "$ch" == *chain3.example.com* && "$ch" == *192.0.2.80* ]] \
  || fail "chain1.example.com client row lacks the 4-record chain to 192.0.2.80: $ch"
ch="$(psql_value "SELECT answer_count || ' ' || answers::text FROM $C1 AND qname = 'tonet.example.com'")"
[[ "$ch" == "2 "* && "$ch" == *target.example.net* && "$ch" == *192.0.2.200* ]] \
  || fail "tonet.example.com client row lacks CNAME + A: $ch"
# BIND 9.18 types queries to a forwarder RQ/RR too (no FQ/FR); auth1 types them AQ/CR (RD=1).
(( $(row_count "dnstap.exchange WHERE identity = 'resolver1' AND kind = 'resolver' AND qname = 'target.example.net' AND qtype = 'A' AND query_type = 'RQ' AND response_type = 'RR' AND rcode = 'NOERROR'") == 1 )) \
  || fail "no paired RQ/RR row for target.example.net (the CNAME target, forwarded): $pairs"
(( $(row_count "dnstap.exchange WHERE identity = 'auth1' AND qname = 'target.example.net' AND qtype = 'A' AND query_type = 'AQ' AND response_type = 'CR' AND flags ~ '\\mrd\\M'") == 1 )) \
  || fail "no paired AQ/CR row at auth1 for the forwarded target.example.net: $pairs"

# Direct questions to auth1 from dig (+norec): AQ/AR from 127.0.0.1, over udp and tcp.
(( $(row_count "dnstap.exchange WHERE identity = 'auth1' AND qname = 'host5.example.com' AND query_type = 'AQ' AND response_type = 'AR' AND transport = 'udp' AND query_address = '127.0.0.1'") == 1 )) \
  || fail "no paired AQ/AR udp row at auth1 for host5.example.com"
(( $(row_count "dnstap.exchange WHERE identity = 'auth1' AND qname = 'host6.example.com' AND query_type = 'AQ' AND response_type = 'AR' AND transport = 'tcp'") == 1 )) \
  || fail "no paired AQ/AR tcp row at auth1 for host6.example.com"

log "all $rows exchanges paired; per type $by_type_db"
