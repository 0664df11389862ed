#!/usr/bin/env bash
# Parsing a scrape: steward's exposition parser vs the `prometheus-parse` crate
# on the same Prometheus-text body (counters, gauges and 12-bucket histograms
# with labels, HELP and TYPE lines), in one run; prints µs per sample and the ratio.
#
#   benches/exposition.sh [SERIES]     default 10,000 samples
#
# In-process (a cargo bench with the release profile): the time is the parse
# alone, for both.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/steward-target}
cargo bench -q -p steward-metrics --bench exposition -- "${1:-10000}"
