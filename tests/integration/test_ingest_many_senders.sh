#!/usr/bin/env bash
# Several senders on one collector socket at once: two live named instances (identities
# ns1 and ns2) under dnsperf load, and fstrm_replay of a file captured earlier from a third
# named (identity ns3). Per identity every exchange is stored exactly once, and the
# collector accounts for every frame: frames_received == messages_stored + dropped_total,
# with nothing dropped.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
require_cmd dnsperf fstrm_replay dnstap-read comm
export LC_ALL=C

NAMED_OPTS=('fstrm-set-input-queue-size 16384;' 'fstrm-set-flush-timeout 1;')
QUERIES="$WORK/queries.txt"
make_queries "$QUERIES"
awk '{print tolower($1), $2}' "$QUERIES" | sort >"$WORK/expected.txt"
n_queries="$(wc -l <"$QUERIES")"

# dnsperf_run NAME PORT OUT [REPEAT]: send the query file REPEAT times (default once) and
# check that every query was sent and answered.
dnsperf_run() {
  local name="$1" port="$2" out="$3" repeat="${4:-1}"
  dnsperf -s 127.0.0.1 -p "$port" -d "$QUERIES" -n "$repeat" -c 4 -q 64 -Q 3000 -t 5 >"$out" 2>&1 \
    || { cat "$out" >&2; return 1; }
  local sent completed
  sent="$(awk '/Queries sent:/ {print $3}' "$out")"
  completed="$(awk '/Queries completed:/ {print $3}' "$out")"
  [[ "$sent" == $((n_queries * repeat)) && "$completed" == "$sent" ]] \
    || { cat "$out" >&2; log "dnsperf to $name: sent=$sent completed=$completed"; return 1; }
}

# named_success NAME: named's DNSTAPsuccess counter (fails if it dropped any).
named_success() {
  local s
  s="$(named_dnstap_stats "$1")" || fail "statistics channel of named '$1' unreachable"
  [[ "$s" == *"DNSTAPdropped=0" ]] || fail "named '$1' dropped dnstap messages: $s"
  s="${s#DNSTAPsuccess=}"
  printf '%s\n' "${s%% *}"
}

# --- 1. A capture file from a third named (ns3), written by fstrm_capture -----------------
CAPFILE="$WORK/ns3.fstrm"
start_capture "$WORK/capture.sock" "$CAPFILE"
start_named ns3 127.0.0.1 "$(free_port)" "$WORK/capture.sock" "${NAMED_OPTS[@]}"
log "capturing ns3: sending the query file ($n_queries queries) twice"
dnsperf_run ns3 "$(named_port ns3)" "$WORK/dnsperf-ns3.out" 2 || fail "dnsperf against ns3 failed"
ns3_success=0
wait_for '(( $(named_success ns3) >= 2 + 4 * n_queries ))' 10 || true
ns3_success="$(named_success ns3)"
stop_named ns3      # named sends STOP; fstrm_capture answers FINISH and keeps the file open
stop_capture
[[ -s "$CAPFILE" ]] || fail "fstrm_capture wrote nothing to $CAPFILE"

dnstap-read "$CAPFILE" >"$WORK/ns3.txt" 2>"$WORK/ns3-read.err" \
  || { cat "$WORK/ns3-read.err" >&2; fail "dnstap-read cannot read the capture"; }
file_frames="$(wc -l <"$WORK/ns3.txt")"
# dnstap-read: "DATE TIME TYPE ADDR -> ADDR PROTO SIZE QNAME/CLASS/TYPE"; queries end in Q.
file_queries="$(awk '$3 ~ /Q$/' "$WORK/ns3.txt" | wc -l)"
file_responses="$(awk '$3 ~ /R$/' "$WORK/ns3.txt" | wc -l)"
file_types="$(awk '{print $3}' "$WORK/ns3.txt" | sort | uniq -c | awk '{printf "%s=%s ", $2, $1}')"
log "capture: $file_frames frames ($file_types); named ns3 reported DNSTAPsuccess=$ns3_success"
((file_frames == ns3_success)) || fail "capture holds $file_frames frames, named ns3 sent $ns3_success"
# 2 x the query file plus the readiness probe(s) of start_named (more than one when named
# was slow to answer the first), each a query and a response.
probe_queries="$(awk -v p="$PROBE_QNAME/" '$3 ~ /Q$/ && index(tolower($NF), p) == 1' "$WORK/ns3.txt" | wc -l)"
((probe_queries >= 1)) || fail "the capture holds no readiness probe query for $PROBE_QNAME"
((file_queries == 2 * n_queries + probe_queries && file_responses == file_queries)) \
  || fail "capture has $file_queries queries / $file_responses responses, expected $((2 * n_queries + probe_queries)) each"

# --- 2. The collector, two live nameds, and the replay, all at once ------------------------
start_postgres
collector_migrate
MPORT="$(free_port)"
start_collector -u "$WORK/dnstap.sock" --postgres "$CONNINFO" --metrics "127.0.0.1:$MPORT"
start_named ns1 127.0.0.1 "$(free_port)" "$COLLECTOR_SOCKET" "${NAMED_OPTS[@]}"
start_named ns2 127.0.0.1 "$(free_port)" "$COLLECTOR_SOCKET" "${NAMED_OPTS[@]}"
wait_for '(( $(metric_sum dnstap_collector_connections_active) >= 2 ))' 10 \
  || fail "both nameds should be connected: connections_active=$(metric_sum dnstap_collector_connections_active)"

ns1_before="$(named_success ns1)"
ns2_before="$(named_success ns2)"
log "sending $n_queries queries to ns1 and to ns2 while replaying $file_frames frames of ns3"
dnsperf_run ns1 "$(named_port ns1)" "$WORK/dnsperf-ns1.out" & p1=$!
dnsperf_run ns2 "$(named_port ns2)" "$WORK/dnsperf-ns2.out" & p2=$!
sleep 0.5   # the replay lands in the middle of the load
replay_active=0
fstrm_replay -t protobuf:dnstap.Dnstap -u "$COLLECTOR_SOCKET" -r "$CAPFILE" >"$WORK/replay.log" 2>&1 & p3=$!
# While the replay runs, three senders share the socket (informational: a replay of a few
# thousand frames may finish between two samples; the two nameds stay connected throughout).
for _ in $(seq 1 20); do
  a="$(metric_sum dnstap_collector_connections_active)"
  ((a > replay_active)) && replay_active="$a"
  kill -0 "$p3" 2>/dev/null || break
  sleep 0.05
done
rc1=0 rc2=0 rc3=0
wait "$p1" || rc1=$?
wait "$p2" || rc2=$?
wait "$p3" || rc3=$?
((rc1 == 0)) || fail "dnsperf against ns1 failed"
((rc2 == 0)) || fail "dnsperf against ns2 failed"
((rc3 == 0)) || { cat "$WORK/replay.log" >&2; fail "fstrm_replay exited with status $rc3"; }
log "peak connections_active seen during the replay: $replay_active"

# The replay connection ended with STOP/FINISH; the collector logged it with its frame count.
grep -q "frames, STOP)" "$WORK/collector.log" \
  || fail "no connection of the collector ended with STOP (the replay's)"
replay_frames="$(grep -oE 'connection closed: .*\(([0-9]+) frames, STOP\)' "$WORK/collector.log" \
  | grep -oE '[0-9]+ frames' | head -n 1 | cut -d' ' -f1)"
log "collector: replay connection closed after $replay_frames frames"
((replay_frames == file_frames)) || fail "the replay connection delivered $replay_frames frames, the file has $file_frames"

ns1_sent=$(( $(named_success ns1) - ns1_before ))
ns2_sent=$(( $(named_success ns2) - ns2_before ))
log "named dnstap messages during the load: ns1=$ns1_sent ns2=$ns2_sent"
((ns1_sent == 2 * n_queries && ns2_sent == 2 * n_queries)) \
  || fail "named sent ns1=$ns1_sent ns2=$ns2_sent dnstap messages, expected $((2 * n_queries)) each"

# --- 3. Per identity: exactly what was sent, once -----------------------------------------
rows() { printf "dnstap.exchange WHERE identity = '%s' AND qname IS DISTINCT FROM '%s'" "$1" "$PROBE_QNAME"; }
count_rows() { psql_value "SELECT count(*) FROM $(rows "$1")"; }
expect_ns3=$((file_queries - probe_queries))   # less the probes
wait_for "(( \$(count_rows ns1) >= n_queries && \$(count_rows ns2) >= n_queries && \$(count_rows ns3) >= expect_ns3 ))" 20 \
  || fail "rows stored: ns1=$(count_rows ns1)/$n_queries ns2=$(count_rows ns2)/$n_queries ns3=$(count_rows ns3)/$expect_ns3"
sleep 1   # a late duplicate would show up now

for id in ns1 ns2 ns3; do
  want="$n_queries"; [[ "$id" == ns3 ]] && want="$expect_ns3"
  got="$(count_rows "$id")"
  ((got == want)) || fail "identity $id: expected $want exchanges, found $got"
  unpaired="$(psql_value "SELECT count(*) FROM $(rows "$id") AND NOT (has_query AND has_response)")"
  ((unpaired == 0)) || fail "identity $id: $unpaired exchanges lack their query or response"
  dups="$(psql_value "SELECT count(*) FROM (SELECT 1 FROM $(rows "$id")
    GROUP BY qname, qtype, query_port, dns_id HAVING count(*) > 1) d")"
  ((dups == 0)) || fail "identity $id: $dups (qname, qtype, query_port, dns_id) groups stored more than once"
  # The questions: once per query file for ns1/ns2, twice for ns3.
  psql_value "SELECT qname || ' ' || qtype FROM $(rows "$id")" | sort >"$WORK/stored-$id.txt"
  if [[ "$id" == ns3 ]]; then
    sort "$WORK/expected.txt" "$WORK/expected.txt" >"$WORK/expected-$id.txt"
  else
    cp "$WORK/expected.txt" "$WORK/expected-$id.txt"
  fi
  if ! cmp -s "$WORK/expected-$id.txt" "$WORK/stored-$id.txt"; then
    log "identity $id: sent but not stored (first 5):"; comm -23 "$WORK/expected-$id.txt" "$WORK/stored-$id.txt" | head -n 5 >&2
    log "identity $id: stored but not sent (first 5):"; comm -13 "$WORK/expected-$id.txt" "$WORK/stored-$id.txt" | head -n 5 >&2
    fail "identity $id: stored (qname, qtype) list differs from what was sent"
  fi
  log "identity $id: $got exchanges, all paired, none duplicated, questions match"
done
others="$(psql_value "SELECT count(*) FROM dnstap.exchange WHERE identity NOT IN ('ns1','ns2','ns3') OR identity IS NULL")"
((others == 0)) || fail "$others rows with an unexpected identity"

# --- 4. Accounting -----------------------------------------------------------------------
stop_named ns1
stop_named ns2
stop_collector
[[ "$COLLECTOR_EXIT" == 0 ]] || fail "collector exited with status $COLLECTOR_EXIT after SIGTERM (expected 0)"
received="$(collector_stat frames_received)"
stored="$(collector_stat messages_stored)"
dropped="$(collector_stat dropped_total)"
[[ -n "$received" && -n "$stored" && -n "$dropped" ]] \
  || fail "stats line lacks frames_received/messages_stored/dropped_total"
((received == stored + dropped)) \
  || fail "invariant broken: frames_received=$received != messages_stored=$stored + dropped_total=$dropped"
((dropped == 0)) || fail "collector dropped $dropped frames: $(grep -E 'stats:' "$WORK/collector.log" | tail -n 1)"
# Everything ns1 and ns2 ever sent (probes included) plus the replayed file.
all_ns1="$((ns1_before + ns1_sent))"
all_ns2="$((ns2_before + ns2_sent))"
((received == all_ns1 + all_ns2 + file_frames)) \
  || fail "frames_received=$received, but ns1 sent $all_ns1, ns2 $all_ns2 and the replay $file_frames"
log "frames_received=$received = ns1 $all_ns1 + ns2 $all_ns2 + replay $file_frames; stored=$stored dropped=0"
