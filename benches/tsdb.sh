#!/usr/bin/env bash
# Metrics ingestion and queries: steward vs Debian's Prometheus scraping the same
# targets at the same interval, in one run.
#
#   benches/tsdb.sh [TARGETS] [SERIES] [SECONDS]   defaults: 10 targets x 10,000 series, 120 s
#
# Targets: one nginx serving TARGETS exposition files of SERIES counters each (labels
# method, code, handler), rewritten every 5 s with new values by a loop whose CPU is not
# counted. Both tools scrape every 10 s. After a 70 s warm-up, for SECONDS: CPU per
# ingested sample (utime+stime of the process over samples appended), RSS per active
# series, and then the median latency of a range query over everything
# (`sum by (code) (rate(bench_requests_total[1m]))`, step 10 s, 5 runs). steward also
# reports the compressed bytes per sample its store holds (Prometheus keeps these
# minutes in its head, whose chunk bytes it does not report).
set -euo pipefail
cd "$(dirname "$0")/.."
TARGETS=${1:-10}
SERIES=${2:-10000}
SECONDS_RUN=${3:-120}
need() { command -v "$1" >/dev/null || { echo "missing $1 (scripts/testbed install)" >&2; exit 2; }; }
BENCH_NAME=tsdb source benches/common.sh
need nginx; need prometheus; need curl; need python3

# --- targets -------------------------------------------------------------------------
NGINX_PORT=$(free_port)
start_nginx "server { listen 127.0.0.1:$NGINX_PORT; default_type text/plain; }"
write_targets() { # round
  python3 - "$WORK/www" "$TARGETS" "$SERIES" "$1" <<'PY'
import os, sys
www, targets, series, r = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
for t in range(targets):
    lines = ["# TYPE bench_requests_total counter"]
    for i in range(series):
        v = (i * 7 + r * (i % 13 + 1)) 
        lines.append(f'bench_requests_total{{method="GET",code="{200 + i % 5}",handler="/api/{i}"}} {v}')
    tmp = f"{www}/t{t}.txt.tmp"
    with open(tmp, "w") as f:
        f.write("\n".join(lines) + "\n")
    os.replace(tmp, f"{www}/t{t}.txt")
PY
}
write_targets 0
( r=1; while true; do sleep 5; write_targets $r; r=$((r + 1)); done ) & PIDS+=($!)

# --- steward -------------------------------------------------------------------------
S_LISTEN=127.0.0.1:$(free_port)
{ printf '[steward]\nstate_dir = "state"\nlisten = "%s"\n' "$S_LISTEN"
  for t in $(seq 0 $((TARGETS - 1))); do
    printf '[scrape.t%d]\nurl = "http://127.0.0.1:%s/t%d.txt"\ninterval = "10s"\nsample_limit = 0\n' "$t" "$NGINX_PORT" "$t"
  done; } >"$WORK/steward.toml"
STEWARD_LOG=warn "$STEWARD" -f "$WORK/steward.toml" serve >"$WORK/steward.log" 2>&1 & SPID=$!; PIDS+=($SPID)

# --- prometheus ----------------------------------------------------------------------
P_LISTEN=127.0.0.1:$(free_port)
{ printf 'global:\n  scrape_interval: 10s\nscrape_configs:\n'
  for t in $(seq 0 $((TARGETS - 1))); do
    printf '  - job_name: t%d\n    metrics_path: /t%d.txt\n    static_configs: [{ targets: ["127.0.0.1:%s"] }]\n' "$t" "$t" "$NGINX_PORT"
  done; } >"$WORK/prometheus.yml"
prometheus --config.file="$WORK/prometheus.yml" --storage.tsdb.path="$WORK/prom" \
  --web.listen-address="$P_LISTEN" >"$WORK/prometheus.log" 2>&1 & PPID_=$!; PIDS+=($PPID_)

metric() { # addr name -> the sum of its samples (any labels)
  curl -s "http://$1/metrics" | awk -v n="$2" '$1 == n || index($1, n "{") == 1 { s += $2 } END { printf "%d", s }'
}
# The warm-up covers every one-time cost of a new series in both: Prometheus
# writes its series records to the WAL as it creates them, steward writes them
# with its first flush, 60 s after start (metrics_flush_interval).
sleep 70
s0=$(metric "$S_LISTEN" steward_tsdb_samples); sc0=$(cpu_ticks $SPID)
p0=$(metric "$P_LISTEN" prometheus_tsdb_head_samples_appended_total); pc0=$(cpu_ticks $PPID_)
start=$(date +%s)
sleep "$SECONDS_RUN"
s1=$(metric "$S_LISTEN" steward_tsdb_samples); sc1=$(cpu_ticks $SPID)
p1=$(metric "$P_LISTEN" prometheus_tsdb_head_samples_appended_total); pc1=$(cpu_ticks $PPID_)
end=$(date +%s)
s_series=$(metric "$S_LISTEN" steward_tsdb_series)
s_bytes=$(metric "$S_LISTEN" steward_tsdb_chunk_bytes)
p_series=$(metric "$P_LISTEN" prometheus_tsdb_head_series)
s_rss=$(awk '/VmRSS/ {print $2}' "/proc/$SPID/status")
p_rss=$(awk '/VmRSS/ {print $2}' "/proc/$PPID_/status")

query_ms() { # addr -> median ms of 5 range queries
  for _ in 1 2 3 4 5; do
    curl -s -o /dev/null -w '%{time_total}\n' -G "http://$1/api/v1/query_range" \
      --data-urlencode 'query=sum by (code) (rate(bench_requests_total[1m]))' \
      --data-urlencode "start=$start" --data-urlencode "end=$end" --data-urlencode step=10
  done | sort -n | awk 'NR == 3 { printf "%.1f", $1 * 1000 }'
}
s_q=$(query_ms "$S_LISTEN"); p_q=$(query_ms "$P_LISTEN")

awk -v s0="$s0" -v s1="$s1" -v sc="$((sc1 - sc0))" -v p0="$p0" -v p1="$p1" -v pc="$((pc1 - pc0))" \
    -v ss="$s_series" -v ps="$p_series" -v sr="$s_rss" -v pr="$p_rss" -v sb="$s_bytes" \
    -v sq="$s_q" -v pq="$p_q" -v hz="$hz" -v t="$TARGETS" -v n="$SERIES" 'BEGIN {
  sn = s1 - s0; pn = p1 - p0
  scpu = sc * 1e6 / hz / sn; pcpu = pc * 1e6 / hz / pn
  printf "%d targets x %d series, 10 s interval\n", t, n
  printf "%-11s %12s %14s %12s %16s %14s\n", "", "samples", "CPU us/sample", "series", "RSS KB/series", "query ms"
  printf "%-11s %12d %14.3f %12d %16.2f %14s\n", "steward", sn, scpu, ss, sr / ss, sq
  printf "%-11s %12d %14.3f %12d %16.2f %14s\n", "prometheus", pn, pcpu, ps, pr / ps, pq
  printf "steward bytes per stored sample: %.2f\n", sb / s1
  printf "prometheus / steward: CPU per sample %.1fx, RSS per series %.1fx, query %.1fx\n", pcpu / scpu, (pr / ps) / (sr / ss), pq / sq
}'
