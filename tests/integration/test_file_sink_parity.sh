#!/usr/bin/env bash
# The Frame Streams file sink beside PostgreSQL: what goes to files is exactly what was
# received, and what goes to PostgreSQL is complete too.
#   1. -w 'cap-%Y%m%d-%H%M%S.fstrm' -s 2 and one SIGUSR1 while named sends for several
#      seconds: >= 2 files, each a complete Frame Streams file (START ... STOP) that
#      dnstap-read and fstrm_dump read, frames in all files == frames_received, and the
#      questions in the files are those in PostgreSQL.
#   2. plain -w FILE: SIGHUP after the file was moved away (logrotate style), then SIGHUP
#      with the file still in place; nothing received after a reopen is lost, no file is
#      truncated, every file ends with STOP.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
require_cmd dnsperf dnstap-read fstrm_dump comm
export LC_ALL=C
PYTHON=/usr/bin/python3
[[ -x "$PYTHON" ]] || fail "$PYTHON not found"

NAME=ns1
NAMED_OPTS=('fstrm-set-input-queue-size 16384;' 'fstrm-set-flush-timeout 1;')

# fstrm_frames FILE: the number of data frames in FILE, after checking its structure strictly
# (fstrm_dump and dnstap-read both accept a file cut short and make up its STOP): a START
# with the dnstap content type, data frames, and a STOP that is the last 12 bytes.
cat >"$WORK/fstrm_walk.py" <<'EOF'
import struct, sys
path = sys.argv[1]
b = open(path, 'rb').read()
n, i, frames, started = len(b), 0, 0, False
def u32(at):
    if at + 4 > n:
        sys.exit(f"{path}: truncated at byte {at} of {n}")
    return struct.unpack('>I', b[at:at + 4])[0]
while i < n:
    length = u32(i); i += 4
    if length:
        if not started:
            sys.exit(f"{path}: data frame before START")
        if i + length > n:
            sys.exit(f"{path}: data frame of {length} bytes cut short at byte {n}")
        i += length; frames += 1
        continue
    clen = u32(i); i += 4
    if clen < 4 or clen > 512 or i + clen > n:
        sys.exit(f"{path}: bad control frame length {clen} at byte {i - 4}")
    ctype, body = u32(i), b[i + 4:i + clen]
    i += clen
    if not started:
        if ctype != 2 or b'protobuf:dnstap.Dnstap' not in body:
            sys.exit(f"{path}: does not begin with START for protobuf:dnstap.Dnstap (control type {ctype})")
        started = True
    elif ctype == 3:
        if i != n:
            sys.exit(f"{path}: {n - i} bytes after STOP")
        print(frames)
        sys.exit(0)
    else:
        sys.exit(f"{path}: unexpected control frame type {ctype}")
sys.exit(f"{path}: ends without STOP ({frames} data frames)")
EOF
fstrm_frames() { "$PYTHON" "$WORK/fstrm_walk.py" "$1"; }

# check_file FILE: structure, dnstap-read and fstrm_dump agree; prints the frame count.
check_file() {
  local f="$1" n n_read n_dump
  n="$(fstrm_frames "$f" 2>"$WORK/walk.err")" || fail "$(cat "$WORK/walk.err")"
  dnstap-read "$f" >"$f.txt" 2>"$WORK/read.err" || fail "dnstap-read $f failed: $(cat "$WORK/read.err")"
  [[ ! -s "$WORK/read.err" ]] || fail "dnstap-read $f complained: $(cat "$WORK/read.err")"
  n_read="$(wc -l <"$f.txt")"
  fstrm_dump "$f" >/dev/null 2>"$f.dump" || fail "fstrm_dump $f failed: $(tail -n 3 "$f.dump")"
  n_dump="$(grep -c '^Data frame' "$f.dump" || true)"
  grep -q '^FSTRM_CONTROL_START' "$f.dump" || fail "fstrm_dump shows no START in $f"
  [[ "$(tail -n 1 "$f.dump")" == FSTRM_CONTROL_STOP* ]] || fail "fstrm_dump: $f does not end with STOP"
  ((n == n_read && n == n_dump)) \
    || fail "$f: $n data frames, but dnstap-read prints $n_read messages and fstrm_dump $n_dump frames"
  printf '%s\n' "$n"
}

# closed_frames FILE: the frame count the collector logged when it closed FILE.
closed_frames() {
  grep -F "file sink: closed $1 (" "$WORK/collector.log" | tail -n 1 | sed -E 's/.*\(([0-9]+) frames.*/\1/'
}

# send QUERYFILE RATE: dnsperf the file once at RATE queries/s; all must be answered.
send() {
  local file="$1" rate="$2" out sent completed want
  out="$WORK/dnsperf-$(basename "$file").out"
  want="$(wc -l <"$file")"
  dnsperf -s 127.0.0.1 -p "$PORT" -d "$file" -n 1 -c 2 -q 32 -Q "$rate" -t 5 >"$out" 2>&1 \
    || { cat "$out" >&2; fail "dnsperf $file failed"; }
  sent="$(awk '/Queries sent:/ {print $3}' "$out")"
  completed="$(awk '/Queries completed:/ {print $3}' "$out")"
  [[ "$sent" == "$want" && "$completed" == "$want" ]] \
    || { cat "$out" >&2; fail "$file: sent $sent, completed $completed of $want"; }
}

rows_like() { psql_value "SELECT count(*) FROM dnstap.exchange WHERE identity = '$NAME' AND qname LIKE '$1'"; }

stats_invariant() {
  local received stored dropped
  received="$(collector_stat frames_received)"
  stored="$(collector_stat messages_stored)"
  dropped="$(collector_stat dropped_total)"
  [[ -n "$received" && -n "$stored" && -n "$dropped" ]] || fail "no complete stats line in the collector log"
  ((received == stored + dropped)) \
    || fail "invariant broken: frames_received=$received != messages_stored=$stored + dropped_total=$dropped"
  ((dropped == 0)) || fail "collector dropped $dropped frames: $(grep 'stats:' "$WORK/collector.log" | tail -n 1)"
}

make_queries "$WORK/all.txt"
start_postgres
collector_migrate

# --- 1. Split files every 2 s, plus one SIGUSR1 --------------------------------------------
SPLIT_DIR="$WORK/split"
mkdir -p "$SPLIT_DIR"
start_collector -u "$WORK/dnstap.sock" --postgres "$CONNINFO" -w "$SPLIT_DIR/cap-%Y%m%d-%H%M%S.fstrm" -s 2
PORT="$(free_port)"
start_named "$NAME" 127.0.0.1 "$PORT" "$COLLECTOR_SOCKET" "${NAMED_OPTS[@]}"

# 800 questions at 120/s: about 7 s of traffic, so it spans 3 or more split periods.
awk 'NR <= 800 {print "s-" $1, $2}' "$WORK/all.txt" >"$WORK/split-queries.txt"
log "sending 800 queries over ~7 s; SIGUSR1 after 3 s"
send "$WORK/split-queries.txt" 120 & sender=$!
sleep 3
kill -USR1 "$COLLECTOR_PID"
wait "$sender" || fail "sending the split queries failed"
wait_for '(( $(rows_like "s-%") >= 800 ))' 15 || fail "only $(rows_like 's-%') of 800 exchanges in PostgreSQL"
sleep 0.5
((($(rows_like 's-%')) == 800)) || fail "expected 800 exchanges in PostgreSQL, found $(rows_like 's-%')"
stop_named "$NAME"
stop_collector
[[ "$COLLECTOR_EXIT" == 0 ]] || fail "collector exited with status $COLLECTOR_EXIT"
stats_invariant
received="$(collector_stat frames_received)"

mapfile -t files < <(find "$SPLIT_DIR" -type f -name 'cap-*.fstrm*' ! -name '*.txt' ! -name '*.dump' | sort)
log "split run wrote ${#files[@]} files: $(for f in "${files[@]}"; do printf '%s ' "${f##*/}"; done)"
((${#files[@]} >= 2)) || fail "expected at least 2 files with -s 2 over ~7 s and a SIGUSR1, found ${#files[@]}"
grep -q 'file sink: writing' "$WORK/collector.log" || fail "the collector never logged a file it writes"
opened="$(grep -c 'file sink: writing' "$WORK/collector.log")"
((opened == ${#files[@]})) || fail "the collector logged $opened files opened, $SPLIT_DIR holds ${#files[@]}"
total=0
for f in "${files[@]}"; do
  n="$(check_file "$f")"
  logged="$(closed_frames "$f")"
  [[ "$logged" == "$n" ]] || fail "$f holds $n frames, the collector logged '${logged:-nothing}' when closing it"
  total=$((total + n))
done
log "split files: $total frames in all; collector frames_received=$received"
((total == received)) || fail "the files hold $total frames, the collector received $received"

# Parity with PostgreSQL: the questions of the queries in the files are those stored.
cat "${files[@]/%/.txt}" | awk '$3 ~ /Q$/ {split($NF, q, "/"); print tolower(q[1]), q[3]}' | sort >"$WORK/file-questions.txt"
psql_value "SELECT qname || ' ' || qtype FROM dnstap.exchange WHERE identity = '$NAME'" | sort >"$WORK/pg-questions.txt"
if ! cmp -s "$WORK/file-questions.txt" "$WORK/pg-questions.txt"; then
  comm -3 "$WORK/file-questions.txt" "$WORK/pg-questions.txt" | head -n 10 >&2
  fail "the questions in the files differ from those in PostgreSQL"
fi
log "files and PostgreSQL hold the same $(wc -l <"$WORK/pg-questions.txt") questions"
cp "$WORK/collector.log" "$WORK/collector-split.log.txt"

# --- 2. One file, SIGHUP ------------------------------------------------------------------
PLAIN_DIR="$WORK/plain"
mkdir -p "$PLAIN_DIR"
FILE="$PLAIN_DIR/dnstap.fstrm"
start_collector -u "$WORK/dnstap2.sock" --postgres "$CONNINFO" -w "$FILE"
start_named "$NAME" 127.0.0.1 "$PORT" "$COLLECTOR_SOCKET" "${NAMED_OPTS[@]}"

batch() { # batch N: 200 questions named h<N>-..., sent and stored
  awk -v p="h$1-" 'NR <= 200 {print p $1, $2}' "$WORK/all.txt" >"$WORK/hup$1.txt"
  send "$WORK/hup$1.txt" 1000
  wait_for "(( \$(rows_like 'h$1-%') >= 200 ))" 15 || fail "batch $1: only $(rows_like "h$1-%") of 200 exchanges stored"
  log "batch $1: 200 exchanges stored"
}
opened_count() { grep -c "file sink: writing" "$WORK/collector.log" || true; }

batch 1
mv "$FILE" "$FILE.rotated"   # what logrotate does before it sends SIGHUP
kill -HUP "$COLLECTOR_PID"
wait_for '(( $(opened_count) >= 2 ))' 5 || fail "no new file opened after SIGHUP"
[[ -f "$FILE" ]] || fail "after SIGHUP, $FILE was not created again"
batch 2
kill -HUP "$COLLECTOR_PID"    # file still in place: it must not be truncated
wait_for '(( $(opened_count) >= 3 ))' 5 || fail "no new file opened after the second SIGHUP"
batch 3
stop_named "$NAME"
stop_collector
[[ "$COLLECTOR_EXIT" == 0 ]] || fail "collector exited with status $COLLECTOR_EXIT"
stats_invariant
received="$(collector_stat frames_received)"
log "collector: $(grep -E 'file sink: (writing|closed)' "$WORK/collector.log" | sed 's/.*file sink: //' | tr '\n' ';')"

mapfile -t files < <(find "$PLAIN_DIR" -type f ! -name '*.txt' ! -name '*.dump' | sort)
log "plain run left ${#files[@]} files: $(for f in "${files[@]}"; do printf '%s ' "${f##*/}"; done)"
((${#files[@]} == 3)) || fail "expected 3 files (moved one, reopened one, one more after the second SIGHUP), found ${#files[@]}"
total=0
for f in "${files[@]}"; do
  n="$(check_file "$f")"
  log "  ${f##*/}: $n frames, ends with STOP"
  total=$((total + n))
done
((total == received)) || fail "the files hold $total frames, the collector received $received"
# Each batch is in the file that was current while it was sent.
in_file() { awk -v p="$2" '$3 ~ /Q$/ && index($NF, p) == 1' "$1.txt" | wc -l; }
((($(in_file "$FILE.rotated" h1-)) == 200)) || fail "$FILE.rotated lacks batch 1 ($(in_file "$FILE.rotated" h1-) of 200 queries)"
((($(in_file "$FILE" h2-)) == 200)) || fail "$FILE lacks batch 2 ($(in_file "$FILE" h2-) of 200 queries): data after SIGHUP lost or truncated"
third="$(grep -E 'file sink: writing' "$WORK/collector.log" | tail -n 1 | sed 's/.*file sink: writing //')"
[[ -f "$third" && "$third" != "$FILE" && "$third" != "$FILE.rotated" ]] \
  || fail "the file opened by the second SIGHUP is '$third'"
((($(in_file "$third" h3-)) == 200)) || fail "$third lacks batch 3 ($(in_file "$third" h3-) of 200 queries)"
log "SIGHUP: moved file kept batch 1, reopened $FILE batch 2, ${third##*/} batch 3; $total frames = frames_received"
