#!/usr/bin/env bash
# The shipped deploy/ files are valid for the real tools: systemd-analyze verify accepts the
# units without a single warning, named-checkconf accepts the named.conf snippet, and the
# collector accepts the example configuration.
set -euo pipefail
: "${COLLECTOR:?COLLECTOR must point at the built dnstap-collector}"
: "${SOURCE_DIR:?SOURCE_DIR must point at the source tree}"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

fail() { echo "FAIL: $*" >&2; exit 1; }
command -v systemd-analyze >/dev/null || fail "systemd-analyze is not installed (package systemd)"
command -v named-checkconf >/dev/null || fail "named-checkconf is not installed (package bind9-utils)"

# The unit names the installed path; verify against the binary we built.
sed "s|/usr/local/bin/dnstap-collector|$COLLECTOR|" "$SOURCE_DIR/deploy/dnstap-collector.service" \
  > "$work/dnstap-collector.service"
cp "$SOURCE_DIR/deploy/dnstap-collector.socket" "$work/"
if ! out=$(systemd-analyze verify "$work/dnstap-collector.service" "$work/dnstap-collector.socket" 2>&1); then
  fail "systemd-analyze verify failed: $out"
fi
# Unknown keys are only warnings to systemd-analyze; for us they are failures.
[[ -z "$out" ]] || fail "systemd-analyze verify warned: $out"
grep -q '^Type=notify' "$work/dnstap-collector.service" || fail "service is not Type=notify"
grep -q '^Before=.*named.service' "$work/dnstap-collector.service" || fail "service does not start before named"

{ echo 'options {'; echo '  directory "/tmp";'; cat "$SOURCE_DIR/deploy/named.conf.snippet"; echo '};'; } > "$work/named.conf"
named-checkconf "$work/named.conf" || fail "named-checkconf rejects deploy/named.conf.snippet"

"$COLLECTOR" serve --check --config "$SOURCE_DIR/deploy/config.example.toml" >/dev/null \
  || fail "the collector rejects deploy/config.example.toml"
echo "deploy files: OK"
