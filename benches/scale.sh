#!/usr/bin/env bash
# Scale of `steward serve` on this machine, in one run:
#  A. CHECKS http checks (default 10000) at a 10 s interval against one nginx:
#     probes/s, late runs (missed schedules), CPU and resident memory.
#  B. The API and status page with API_CHECKS checks (default 2000) and 30 days of
#     history seeded into the state database: latency of each page, 20 requests each.
#
#   benches/scale.sh [CHECKS] [API_CHECKS]
set -euo pipefail
cd "$(dirname "$0")/.."
CHECKS=${1:-10000}
API_CHECKS=${2:-2000}
WINDOW=40
BENCH_NAME=scale source benches/common.sh

NGINX_PORT=$(free_port)
start_nginx "server { listen 127.0.0.1:$NGINX_PORT backlog=4096; }"

spec() { # file checks listen state
  python3 - "$@" "$NGINX_PORT" <<'PY'
import sys
path, n, listen, state, port = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
with open(path, "w") as f:
    f.write(f'[steward]\nstate_dir = "{state}"\nlisten = "{listen}"\n')
    for i in range(n):
        f.write(f'[check.c{i}]\ntype = "http"\nurl = "http://127.0.0.1:{port}/"\ninterval = "10s"\n'
                f'timeout = "5s"\nconditions = ["[STATUS] == 200"]\ngroup = "g{i % 20}"\n')
PY
}
metric() { curl -s "http://$1/metrics" | awk -v m="$2" '$1 == m {print $2}'; }

# --- A: many checks --------------------------------------------------------------------
LISTEN=127.0.0.1:$(free_port)
spec "$WORK/a.toml" "$CHECKS" "$LISTEN" state-a
STEWARD_LOG=warn "$STEWARD" -f "$WORK/a.toml" serve >"$WORK/a.log" 2>&1 & A=$!; PIDS+=($A)
sleep 15 # every check has had its first run
r0=$(metric "$LISTEN" steward_health_runs_total); l0=$(metric "$LISTEN" steward_health_late_runs_total)
c0=$(awk '{print $14 + $15}' /proc/$A/stat)
sleep "$WINDOW"
r1=$(metric "$LISTEN" steward_health_runs_total); l1=$(metric "$LISTEN" steward_health_late_runs_total)
c1=$(awk '{print $14 + $15}' /proc/$A/stat)
rss=$(awk '/VmRSS/ {print $2}' /proc/$A/status); hwm=$(awk '/VmHWM/ {print $2}' /proc/$A/status)
fails=$(curl -s "http://$LISTEN/metrics" | awk '/^steward_check_results_total/ && /status="fail"/ {s += $2} END {print s + 0}')
kill $A; wait $A 2>/dev/null || true
awk -v n="$CHECKS" -v r=$((r1 - r0)) -v l=$((l1 - l0)) -v t=$((c1 - c0)) -v hz="$hz" -v w="$WINDOW" -v rss="$rss" -v hwm="$hwm" -v f="$fails" 'BEGIN {
  printf "A. %d checks @10s: %.0f probes/s (expected %.0f), late runs %d, failed runs %d, CPU %.1f%% of one core, %.3f CPU-ms/probe, RSS %.1f MB (peak %.1f MB)\n",
    n, r / w, n / 10, l, f, t / hz / w * 100, t * 1000 / hz / r, rss / 1024, hwm / 1024 }'

# --- B: API and status page with 30 days of history -----------------------------------
LISTEN=127.0.0.1:$(free_port)
spec "$WORK/b.toml" "$API_CHECKS" "$LISTEN" state-b
# Create the schema, then seed history the way `serve` would have written it.
STEWARD_LOG=warn "$STEWARD" -f "$WORK/b.toml" serve --listen 127.0.0.1:0 >"$WORK/b0.log" 2>&1 & B=$!
sleep 3; kill $B; wait $B 2>/dev/null || true
python3 - "$WORK/state-b/state.db" "$API_CHECKS" <<'PY'
import sqlite3, sys, time, random
db, n = sys.argv[1], int(sys.argv[2])
now = int(time.time() * 1000)
c = sqlite3.connect(db)
c.execute("PRAGMA synchronous=OFF")
H, D, M = 3_600_000, 86_400_000, 60_000
def rows(res_ms, count, per):
    start = now - now % res_ms
    for i in range(n):
        name = f"c{i}"
        for k in range(count):
            fail = 1 if random.random() < 0.01 else 0
            yield (name, res_ms // 1000, start - k * res_ms, per, per - fail, 0, fail, per * 1.5, 9.0)
q = "INSERT OR REPLACE INTO rollups VALUES (?,?,?,?,?,?,?,?,?)"
c.executemany(q, rows(D, 30, 8640))      # 30 days
c.executemany(q, rows(H, 24 * 31, 360))  # 31 days of hours
c.executemany(q, rows(M, 120, 6))        # 2 hours of minutes
c.executemany("INSERT INTO results VALUES (?,?,?,?,?,?)",
              ((f"c{i}", now - k * 10_000, 0, 1500, None, '{"status":200}') for i in range(n) for k in range(360)))
c.commit()
print(f"seeded {c.execute('select count(*) from rollups').fetchone()[0]} rollup rows, "
      f"{c.execute('select count(*) from results').fetchone()[0]} results", file=sys.stderr)
PY
STEWARD_LOG=warn "$STEWARD" -f "$WORK/b.toml" serve >"$WORK/b.log" 2>&1 & B=$!; PIDS+=($B)
for _ in $(seq 1 100); do curl -sf "http://$LISTEN/livez" >/dev/null && break; sleep 0.1; done
sleep 2
timing() { # name path
  local times
  times=$(for _ in $(seq 1 20); do curl -s -o /dev/null -w '%{time_total}\n' "http://$LISTEN$2"; done | sort -n)
  echo "$times" | awk -v name="$1" '{ a[NR] = $1 } END { printf "   %-34s median %6.1f ms   max %6.1f ms\n", name, a[int((NR + 1) / 2)] * 1000, a[NR] * 1000 }'
}
echo "B. $API_CHECKS checks, 30 days of history:"
timing "status page /" "/"
timing "/api/v1/checks" "/api/v1/checks"
timing "/api/v1/checks/c7" "/api/v1/checks/c7"
timing "/api/v1/checks/c7/history" "/api/v1/checks/c7/history?limit=100"
timing "/api/v1/checks/c7/series (30 d)" "/api/v1/checks/c7/series?from=$(( $(date +%s) * 1000 - 30 * 86400000 ))"
timing "/api/v1/events" "/api/v1/events"
timing "/metrics" "/metrics"
