#!/usr/bin/env bash
# CPU cost per probe: steward vs Prometheus blackbox_exporter, same targets, one run.
#
#   benches/probe.sh [CHECKS] [SECONDS]     defaults: 200 checks, 20 s per measurement
#
# Targets: one nginx on 127.0.0.1 serving HTTP and HTTPS (self-signed). Every probe opens
# a new connection for both tools; targets are IP literals so neither pays for name resolution. steward's number includes scheduling, judging and
# writing every result to SQLite (`steward serve` with CHECKS checks at a 1 s interval);
# blackbox_exporter's is the exporter process alone, driven by parallel /probe requests.
# CPU time comes from /proc/PID/stat (utime + stime), so the load driver is not counted.
set -euo pipefail
cd "$(dirname "$0")/.."
CHECKS=${1:-200}
SECONDS_PER_RUN=${2:-20}
need() { command -v "$1" >/dev/null || { echo "missing $1 (scripts/testbed install)" >&2; exit 2; }; }
BENCH_NAME=bench source benches/common.sh
need nginx; need prometheus-blackbox-exporter; need openssl; need curl

# --- targets -------------------------------------------------------------------------
HTTP_PORT=$(free_port); HTTPS_PORT=$(free_port)
openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj /CN=localhost \
  -addext subjectAltName=DNS:localhost,IP:127.0.0.1 -keyout "$WORK/key.pem" -out "$WORK/cert.pem" 2>/dev/null
start_nginx "server { listen 127.0.0.1:$HTTP_PORT; }" \
  "server { listen 127.0.0.1:$HTTPS_PORT ssl; ssl_certificate $WORK/cert.pem; ssl_certificate_key $WORK/key.pem; }"

# --- steward -------------------------------------------------------------------------
steward_run() { # scheme port -> cpu ms per probe
  local scheme=$1 port=$2 listen spec pid r0 r1 c0 c1
  listen=127.0.0.1:$(free_port)
  spec=$WORK/steward-$scheme.toml
  { printf '[steward]\nstate_dir = "state-%s"\nlisten = "%s"\n' "$scheme" "$listen"
    for i in $(seq 1 "$CHECKS"); do
      printf '[check.c%d]\ntype = "http"\nurl = "%s://127.0.0.1:%s/"\ninterval = "1s"\ntimeout = "900ms"\n' "$i" "$scheme" "$port"
      [ "$scheme" = https ] && printf 'ca_file = "%s"\n' "$WORK/cert.pem"
      printf 'conditions = ["[STATUS] == 200"]\n'
    done; } >"$spec"
  STEWARD_LOG=warn "$STEWARD" -f "$spec" serve >"$WORK/steward-$scheme.log" 2>&1 & pid=$!; PIDS+=($pid)
  sleep 3 # warm up: every check has started
  runs() { curl -s "http://$listen/metrics" | awk '/^steward_health_runs_total/ {print $2}'; }
  r0=$(runs); c0=$(cpu_ticks $pid)
  sleep "$SECONDS_PER_RUN"
  r1=$(runs); c1=$(cpu_ticks $pid)
  local late; late=$(curl -s "http://$listen/metrics" | awk '/^steward_health_late_runs_total/ {print $2}')
  local rss; rss=$(awk '/VmRSS/ {print $2}' "/proc/$pid/status")
  kill "$pid"; wait "$pid" 2>/dev/null || true
  echo "$(( r1 - r0 )) $(( c1 - c0 )) $late $rss"
}

# --- blackbox_exporter ---------------------------------------------------------------
BB_PORT=$(free_port)
cat >"$WORK/blackbox.yml" <<EOF
modules:
  http_2xx:
    prober: http
    timeout: 1s
    http: { preferred_ip_protocol: ip4 }
  https_2xx:
    prober: http
    timeout: 1s
    http: { preferred_ip_protocol: ip4, tls_config: { ca_file: $WORK/cert.pem } }
EOF
prometheus-blackbox-exporter --config.file="$WORK/blackbox.yml" --web.listen-address="127.0.0.1:$BB_PORT" \
  >"$WORK/blackbox.log" 2>&1 & BB=$!; PIDS+=($BB)
sleep 1
blackbox_run() { # module port scheme -> probes cpu_ticks
  local module=$1 port=$2 scheme=$3 n c0 c1 ok
  n=$(( CHECKS * SECONDS_PER_RUN ))
  c0=$(cpu_ticks $BB)
  ok=$(seq 1 "$n" | xargs -P 8 -I{} curl -s "http://127.0.0.1:$BB_PORT/probe?module=$module&target=$scheme://127.0.0.1:$port/" \
        | grep -c '^probe_success 1' || true)
  c1=$(cpu_ticks $BB)
  echo "$ok $(( c1 - c0 ))"
}

report() { # name probes ticks
  awk -v n="$2" -v t="$3" -v hz="$hz" -v name="$1" 'BEGIN { printf "%-28s %8d probes %8.3f CPU-ms/probe\n", name, n, (t * 1000 / hz) / n }'
}
ratio() { awk -v a="$2" -v at="$3" -v b="$4" -v bt="$5" -v hz="$hz" -v name="$1" \
  'BEGIN { printf "%-28s blackbox_exporter / steward = %.1fx\n", name, ((bt/b)/(at/a)) }'; }

echo "checks=$CHECKS interval=1s window=${SECONDS_PER_RUN}s clock ticks/s=$hz"
read -r sh_n sh_t sh_late sh_rss < <(steward_run http "$HTTP_PORT")
read -r ss_n ss_t ss_late ss_rss < <(steward_run https "$HTTPS_PORT")
read -r bh_n bh_t < <(blackbox_run http_2xx "$HTTP_PORT" http)
read -r bs_n bs_t < <(blackbox_run https_2xx "$HTTPS_PORT" https)
report "steward http" "$sh_n" "$sh_t"
report "blackbox_exporter http" "$bh_n" "$bh_t"
report "steward https" "$ss_n" "$ss_t"
report "blackbox_exporter https" "$bs_n" "$bs_t"
ratio "http" "$sh_n" "$sh_t" "$bh_n" "$bh_t"
ratio "https" "$ss_n" "$ss_t" "$bs_n" "$bs_t"
echo "steward late runs: http $sh_late, https $ss_late; RSS: http ${sh_rss} kB, https ${ss_rss} kB"
