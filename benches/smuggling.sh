#!/usr/bin/env bash
# The request-smuggling corpus (crates/steward-fleet/tests/fleet/smuggling) against
# Debian's HAProxy, as a point of comparison beside the references the test
# asserts against (hyper's server and nginx): every case goes byte for byte
# through steward's proxy and through HAProxy, each in front of an instance
# that records the requests it parsed, and each case where the two differ is
# listed — who refused, after how many requests, who forwarded what — grouped
# by kind of difference, with steward's reason where it refuses on purpose.
#
#   benches/smuggling.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/steward-target}
export PATH="$PATH:/usr/sbin:/sbin"
scripts/testbed install
echo "$(haproxy -v | head -n 1)"
echo "$(nginx -v 2>&1)"
out=$(mktemp)
trap 'rm -f "$out"' EXIT
STEWARD_HAPROXY=1 cargo test -q -p steward-fleet --test fleet \
  framing_matches_the_reference_parsers_on_every_case -- --nocapture >"$out" 2>&1 || {
  echo "the differential test failed:" >&2; tail -n 40 "$out" >&2; exit 1; }
grep -E '^framing corpus|^versus HAProxy' "$out"
group() { # TITLE AWK-CONDITION
  local rows
  rows=$(grep '^  differs: ' "$out" | sed 's/^  differs: //' | awk "$2" || true)
  [ -n "$rows" ] || return 0
  printf '\n%s (%s):\n' "$1" "$(printf '%s\n' "$rows" | wc -l)"
  printf '%s\n' "$rows" | sed 's/^/  /'
}
group "steward refuses, HAProxy forwards" '/steward refused/ && /haproxy forwarded/'
group "HAProxy refuses, steward forwards" '/steward forwarded/ && /haproxy refused/'
group "both refuse, at different requests" '/steward refused/ && /haproxy refused/'
group "both forward, different requests" '/steward forwarded/ && /haproxy forwarded/'
