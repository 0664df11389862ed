#!/usr/bin/env bash
# Reverse-proxy throughput per CPU and p99 latency: steward's built-in proxy vs
# Debian's nginx and HAProxy, in front of the same two upstream instances, in one run.
#
#   benches/proxy.sh [SECONDS] [CONNECTIONS] [ROUNDS]   defaults: 10 s, 32 connections, 3 rounds
#
# The upstream instances are two nginx processes (one worker each) that steward
# itself runs as the instances of a service; nginx and HAProxy are then pointed at
# the very same addresses. Each proxy gets one CPU's worth of workers (steward's
# serve runs on one thread; nginx worker_processes 1; HAProxy nbthread 1), all keep
# connections to the upstreams alive. wrk (1 thread, keep-alive) drives each for the
# same time; CPU time of the proxy process comes from /proc/PID/stat, so requests
# per CPU-second compares the proxies' efficiency independent of the load driver.
# The proxies take turns, round after round, and medians are reported, so a
# noisy moment on the machine does not land on one proxy only.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${1:-10}
CONNS=${2:-32}
ROUNDS=${3:-3}
need() { command -v "$1" >/dev/null || { echo "missing $1 (scripts/testbed install)" >&2; exit 2; }; }
BENCH_NAME=proxy source benches/common.sh
export PATH="$PATH:/usr/sbin:/sbin"
need nginx; need haproxy; need wrk

# --- the upstream instances, run by steward ------------------------------------------
mkdir -p "$WORK/base/www"
head -c 1024 /dev/zero | tr '\0' 'x' >"$WORK/base/www/index.html"
# The instances live under steward's private state directory: as root, nginx's
# workers must run as root to read them (unprivileged, the directive is ignored).
cat >"$WORK/base/nginx.tmpl" <<'CONF'
user root root; worker_processes 1; daemon off; pid nginx.pid; error_log stderr;
events { worker_connections 8192; }
http { access_log off; keepalive_requests 1000000;
  client_body_temp_path /tmp; proxy_temp_path /tmp; fastcgi_temp_path /tmp;
  uwsgi_temp_path /tmp; scgi_temp_path /tmp;
  server { listen @ADDR@; root @ROOT@/www; } }
CONF
PROXY=127.0.0.1:$(free_port)
API=127.0.0.1:$(free_port)
cat >"$WORK/steward.toml" <<SPEC
[steward]
state_dir = "state"
listen = "$API"

[check.web]
type = "tcp"
address = "$PROXY"
interval = "1s"

[image.web]
base = "dir:base"

[service.web]
image = "web"
command = ["sh", "-c", "sed -e 's|@ADDR@|{addr}|' -e 's|@ROOT@|{root}|' {root}/nginx.tmpl > {root}/nginx.conf && exec nginx -c {root}/nginx.conf -p {root}"]
replicas = 2
listen = "$PROXY"
readiness = "web"
rollout = { min_healthy_time = "1s", healthy_deadline = "30s" }
SPEC
(cd "$WORK" && exec "$STEWARD" -f steward.toml serve >"$WORK/serve.log" 2>&1) & SERVE=$!
PIDS+=($SERVE)
for _ in $(seq 1 150); do
  n=$(ready_instances "$WORK/steward.toml")
  [ "$n" = 2 ] && break
  sleep 0.2
done
[ "$n" = 2 ] || { echo "steward did not start the upstream instances" >&2; tail "$WORK/serve.log" >&2; exit 1; }
mapfile -t UPSTREAMS < <("$STEWARD" -f "$WORK/steward.toml" fleet status --json \
  | python3 -c 'import json,sys; [print(i["addr"]) for i in json.load(sys.stdin)[0]["instances"] if i["state"]=="ready"]')
# steward's pid: the serve process (its instances run in their own process groups).
STEWARD_PID=$SERVE

# --- nginx and HAProxy as reverse proxies to the same instances -------------------------
NGINX_PORT=$(free_port)
servers=""; for u in "${UPSTREAMS[@]}"; do servers+="server $u; "; done
start_nginx "upstream app { $servers keepalive 64; }
  server { listen 127.0.0.1:$NGINX_PORT; location / { proxy_pass http://app;
    proxy_http_version 1.1; proxy_set_header Connection \"\"; } }"
NGINX_PID=$(cat "$WORK/nginx.pid")
HAPROXY_PORT=$(free_port)
{
  echo "global"; echo "  nbthread 1"; echo "  maxconn 4096"
  echo "defaults"; echo "  mode http"; echo "  timeout connect 2s"; echo "  timeout client 30s"; echo "  timeout server 30s"
  echo "  http-reuse always"; echo "  option http-keep-alive"
  echo "frontend f"; echo "  bind 127.0.0.1:$HAPROXY_PORT"; echo "  default_backend b"
  echo "backend b"; echo "  balance leastconn"
  i=0; for u in "${UPSTREAMS[@]}"; do echo "  server s$i $u"; i=$((i+1)); done
} >"$WORK/haproxy.cfg"
haproxy -f "$WORK/haproxy.cfg" -db >"$WORK/haproxy.log" 2>&1 & HAPROXY_PID=$!
PIDS+=($HAPROXY_PID)
sleep 0.5

# CPU ticks of a process and its children (nginx's workers).
tree_ticks() {
  local t; t=$(cpu_ticks "$1")
  [ "$1" = "$STEWARD_PID" ] && { echo "$t"; return; } # its children are the upstreams
  for c in $(pgrep -P "$1"); do t=$((t + $(cpu_ticks "$c"))); done
  echo "$t"
}

# run NAME PID ADDR -> "rps p50_ms p99_ms rps_per_cpu"
run() {
  local name=$1 pid=$2 addr=$3 c0 c1 out rps p50 p99 reqs cpu
  wrk -t1 -c"$CONNS" -d2s "http://$addr/" >/dev/null 2>&1 # warm the connection pools
  c0=$(tree_ticks "$pid")
  out=$(wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency "http://$addr/")
  c1=$(tree_ticks "$pid")
  if grep -q "Non-2xx\|Socket errors" <<<"$out"; then
    echo "$name: errors during the run:" >&2; echo "$out" >&2
    curl -si "http://$addr/" | head -8 >&2; exit 1
  fi
  rps=$(awk '/^Requests\/sec/ {print $2}' <<<"$out")
  reqs=$(awk '/requests in/ {print $1}' <<<"$out")
  p50=$(awk '$1=="50%" {print $2}' <<<"$out")
  p99=$(awk '$1=="99%" {print $2}' <<<"$out")
  cpu=$(python3 -c "print(max(($c1-$c0)/$hz, 0.01))")
  echo "$rps $(ms "$p50") $(ms "$p99") $(python3 -c "print(round($reqs/$cpu))") $cpu"
}
# wrk prints 812.00us / 1.20ms / 2.01s
ms() { python3 -c "
v='$1'
for u,f in (('us',0.001),('ms',1),('s',1000)):
    if v.endswith(u): print(round(float(v[:-len(u)])*f,3)); break"; }

echo "proxy benchmark: ${DURATION}s per proxy and round, $ROUNDS rounds, $CONNS keep-alive connections, 2 nginx upstream instances, 1 KiB responses"
: >"$WORK/results"
for round in $(seq 1 "$ROUNDS"); do
  echo "steward $(run steward "$STEWARD_PID" "$PROXY")" >>"$WORK/results"
  echo "nginx $(run nginx "$NGINX_PID" "127.0.0.1:$NGINX_PORT")" >>"$WORK/results"
  echo "haproxy $(run haproxy "$HAPROXY_PID" "127.0.0.1:$HAPROXY_PORT")" >>"$WORK/results"
  echo "round $round done" >&2
done
python3 - "$WORK/results" <<'PY'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    name, rps, p50, p99, eff, cpu = line.split()
    rows.setdefault(name, []).append((float(rps), float(p50), float(p99), float(eff), float(cpu)))
med = {n: [statistics.median(col) for col in zip(*r)] for n, r in rows.items()}
print(f"{'proxy':<10} {'req/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'req/CPU-s':>10}   (medians of {len(rows['steward'])} rounds)")
for n in ("steward", "nginx", "haproxy"):
    rps, p50, p99, eff, _ = med[n]
    print(f"{n:<10} {rps:>10.0f} {p50:>8.3f} {p99:>8.3f} {eff:>10.0f}")
s, ng, h = med["steward"], med["nginx"], med["haproxy"]
print(f"throughput per CPU: steward/nginx {s[3]/ng[3]:.2f}x, steward/haproxy {s[3]/h[3]:.2f}x (target: >= 1 vs nginx)")
print(f"p99 latency: steward/nginx {s[2]/ng[2]:.2f}x, steward/haproxy {s[2]/h[2]:.2f}x (target: <= 1 vs nginx)")
per_round = [a[3] / b[3] for a, b in zip(rows["steward"], rows["nginx"])]
print("per-round steward/nginx per CPU: " + ", ".join(f"{x:.2f}" for x in per_round))
PY
