#!/usr/bin/env bash
# Autoscaler reaction against its bound: one fractals API instance behind
# steward's proxy, autoscaled on requests per second per instance; a step of load
# (RATE requests a second, bounded to SECONDS) from nothing. Measured from steward's
# own events in the same run: load step -> scale decision -> the new instance ready.
# The bound is one scrape interval (the proxy's counters are stored as series every
# SCRAPE seconds) + the new instance's start-to-ready + 1 s (the autoscaler decides
# every second here).
#
#   benches/autoscale.sh [RATE] [SCRAPE_SECONDS] [SECONDS]   defaults: 60 2 25
set -euo pipefail
cd "$(dirname "$0")/.."
RATE=${1:-60}
SCRAPE=${2:-2}
SECONDS_LOAD=${3:-25}
BENCH_NAME=autoscale source benches/common.sh
PROXY=127.0.0.1:$(free_port)
{ printf '[steward]\nstate_dir = "state"\nlisten = "127.0.0.1:%s"\nself_scrape_interval = "%ss"\n' "$(free_port)" "$SCRAPE"
  fractals_api_spec "$PROXY"
  cat <<'SPEC'
replicas = { min = 1, max = 4 }
drain_timeout = "2s"
# 20 requests a second per instance; the rate over the last two scrapes.
autoscale = { metrics = [{ expr = 'sum(irate(steward_proxy_requests_total{service="api"}[1m]))', per_instance = 20 }], interval = "1s" }
SPEC
} >"$WORK/steward.toml"
(cd "$WORK" && exec "$STEWARD" -f steward.toml serve >"$WORK/serve.log" 2>&1) & PIDS+=($!)
for _ in $(seq 1 300); do
  r=$(ready_instances "$WORK/steward.toml")
  [ "$r" = "1" ] && break
  sleep 0.2
done
[ "$r" = "1" ] || { echo "the first instance did not get ready: $r" >&2; tail "$WORK/serve.log" >&2; exit 1; }
# Two scrapes of an idle service first: the rate before the step is known to be 0.
sleep $((2 * SCRAPE + 1))

# The load step: RATE requests a second over keep-alive connections, for SECONDS.
python3 - "$PROXY" "$RATE" "$SECONDS_LOAD" "$WORK/step" <<'PY' &
import http.client, sys, threading, time
addr, rate, secs, out = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
host, port = addr.rsplit(":", 1)
threads = 4
start = time.time()
open(out, "w").write(f"{start}\n")
def run(k):
    c = http.client.HTTPConnection(host, int(port), timeout=5)
    i = 0
    while True:
        due = start + (i * threads + k) / rate
        if due - start > secs:
            return
        time.sleep(max(0.0, due - time.time()))
        try:
            c.request("GET", "/health"); c.getresponse().read()
        except Exception:
            c.close(); c = http.client.HTTPConnection(host, int(port), timeout=5)
        i += 1
ts = [threading.Thread(target=run, args=(k,)) for k in range(threads)]
[t.start() for t in ts]; [t.join() for t in ts]
PY
LOAD=$!; PIDS+=($LOAD)
for _ in $(seq 1 $((SECONDS_LOAD * 5))); do
  r=$(ready_instances "$WORK/steward.toml")
  [ "${r:-0}" -ge 2 ] && break
  sleep 0.2
done
wait $LOAD || true
[ "${r:-0}" -ge 2 ] || { echo "no second instance within the load: $r" >&2; grep -i autoscal "$WORK/serve.log" | tail >&2; exit 1; }
python3 - "$WORK/state" "$(cat "$WORK/step")" "$SCRAPE" "$RATE" <<'PY'
import json, sqlite3, sys
state, step, scrape, rate = sys.argv[1], float(sys.argv[2]) * 1000, float(sys.argv[3]), int(sys.argv[4])
db = sqlite3.connect(f"file:{state}/state.db?mode=ro", uri=True)
rows = db.execute("SELECT ts, kind, data FROM events WHERE kind IN ('fleet.scaled','fleet.instance_started','fleet.instance_ready') AND ts >= ? ORDER BY id", (int(step),)).fetchall()
scaled = next(ts for ts, kind, _ in rows if kind == "fleet.scaled")
started = {}
for ts, kind, data in rows:
    j = json.loads(data)
    if kind == "fleet.instance_started":
        started[j["instance"]] = ts
    elif kind == "fleet.instance_ready" and j["instance"] in started:
        ready, instance = ts, j["instance"]
        break
start_to_ready = (ready - started[instance]) / 1000
reaction = (ready - step) / 1000
bound = scrape + start_to_ready + 1
print(f"load step 0 -> {rate} requests/s, 20 per instance, scrape every {scrape:g} s, decisions every 1 s")
print(f"  load step -> scale decision:          {(scaled - step) / 1000:.2f} s")
print(f"  new instance start-to-ready:          {start_to_ready:.2f} s")
print(f"  load step -> new instance ready:      {reaction:.2f} s")
print(f"  bound (scrape + start-to-ready + 1 s): {bound:.2f} s  -> {'within' if reaction <= bound else 'OVER'} ({reaction / bound:.2f} of it)")
PY
