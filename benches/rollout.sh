#!/usr/bin/env bash
# Rollout time against its floor: N instances of the fractals API replaced
# max_parallel at a time, each new one gated by min_healthy_time. The floor is
# ceil(N / parallel) × (start-to-ready + min_healthy_time), with start-to-ready
# measured from steward's own events in the same run; the rest is overhead
# (steward's tick, drains, bookkeeping).
#
#   benches/rollout.sh [INSTANCES] [PARALLEL] [MIN_HEALTHY_SECONDS]   defaults: 6 2 2
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-6}
P=${2:-2}
MHT=${3:-2}
BENCH_NAME=rollout source benches/common.sh
mkdir -p "$WORK/base/etc"
echo v1 >"$WORK/base/etc/release"
PROXY=127.0.0.1:$(free_port)
{ printf '[steward]\nstate_dir = "state"\nlisten = "127.0.0.1:%s"\n' "$(free_port)"
  fractals_api_spec "$PROXY"
  cat <<SPEC
replicas = $N
rollout = { max_parallel = $P, min_healthy_time = "${MHT}s", healthy_deadline = "60s", progress_deadline = "10m" }
drain_timeout = "5s"
SPEC
} >"$WORK/steward.toml"
(cd "$WORK" && exec "$STEWARD" -f steward.toml serve >"$WORK/serve.log" 2>&1) & PIDS+=($!)
S() { "$STEWARD" -f "$WORK/steward.toml" "$@"; }
for _ in $(seq 1 300); do
  r=$(S fleet status --json 2>/dev/null | python3 -c 'import json,sys; d=json.load(sys.stdin)[0]; print(d["ready"], (d["deploy"] or {}).get("result"))' 2>/dev/null || true)
  [ "$r" = "$N succeeded" ] && break
  sleep 0.2
done
[ "$r" = "$N succeeded" ] || { echo "the first deploy did not finish: $r" >&2; tail "$WORK/serve.log" >&2; exit 1; }
echo v2 >"$WORK/base/etc/release"
S image build >/dev/null 2>&1
t0=$(date +%s.%N)
S deploy api >"$WORK/deploy.out" 2>&1 || { cat "$WORK/deploy.out" >&2; exit 1; }
t1=$(date +%s.%N)
python3 - "$WORK/state" "$N" "$P" "$MHT" "$t0" "$t1" <<'PY'
import json, math, sqlite3, sys
state, n, p, mht, t0, t1 = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5]), float(sys.argv[6])
db = sqlite3.connect(f"file:{state}/state.db?mode=ro", uri=True)
d = db.execute("SELECT id, started_ms, finished_ms, to_digest FROM fleet_deploy WHERE kind='deploy' ORDER BY id DESC LIMIT 1").fetchone()
_, started, finished, to = d
started_at, ready_at = {}, {}
for ts, kind, data in db.execute("SELECT ts, kind, data FROM events WHERE kind IN ('fleet.instance_started','fleet.instance_ready') AND ts >= ?", (started,)):
    j = json.loads(data)
    (started_at if kind.endswith("started") else ready_at)[j["instance"]] = ts
starts = [ready_at[i] - started_at[i] for i in started_at if i in ready_at]
start_s = sum(starts) / len(starts) / 1000
took = (finished - started) / 1000
floor = math.ceil(n / p) * (start_s + mht)
print(f"rollout of {n} instances, max_parallel {p}, min_healthy_time {mht:g}s")
print(f"  start-to-ready (mean of {len(starts)} new instances): {start_s*1000:.0f} ms")
print(f"  floor ceil(N/P) x (start + min_healthy_time): {floor:.2f} s")
print(f"  measured (deploy started -> succeeded):       {took:.2f} s")
print(f"  overhead: {took - floor:.2f} s ({(took/floor - 1)*100:.1f} %), {((took - floor)/math.ceil(n/p))*1000:.0f} ms per batch")
print(f"  steward deploy wall time (build check + follow): {t1 - t0:.2f} s")
PY
