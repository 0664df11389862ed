# Shared set-up of the benchmark scripts (sourced, not run): a release build of
# steward, a scratch directory cleaned up on exit with every process started,
# free loopback ports, CPU-time reading, and an nginx serving a static page.
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/steward-target}
scripts/testbed install
cargo build --release -q -p steward
STEWARD=$CARGO_TARGET_DIR/release/steward

WORK=$(mktemp -d "/tmp/steward-${BENCH_NAME:-bench}.XXXXXX")
chmod 755 "$WORK" # nginx workers run as www-data
PIDS=()
# Stops what the bench started and waits for it (a writer loop may be mid-write),
# then removes the work directory.
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)

# start_nginx 'server { ... }' ... — serves $WORK/www (index.html says "ok").
start_nginx() {
  mkdir -p "$WORK/www" "$WORK/tmp"; echo ok >"$WORK/www/index.html"
  cat >"$WORK/nginx.conf" <<CONF
worker_processes 1; daemon off; pid $WORK/nginx.pid; error_log $WORK/nginx.err;
events { worker_connections 8192; }
http { access_log off; client_body_temp_path $WORK/tmp; proxy_temp_path $WORK/tmp;
  fastcgi_temp_path $WORK/tmp; uwsgi_temp_path $WORK/tmp; scgi_temp_path $WORK/tmp;
  root $WORK/www;
  $* }
CONF
  nginx -c "$WORK/nginx.conf" -p "$WORK" & PIDS+=($!)
  sleep 0.5
}

# ready_instances SPEC — how many instances of the spec's first service are ready
# (0 while serve is not answering yet).
ready_instances() {
  "$STEWARD" -f "$1" fleet status --json 2>/dev/null \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["ready"])' 2>/dev/null || echo 0
}

# fractals_api_spec PROXY — builds the demo's API (into $WORK/app, on an empty image
# base in $WORK/base) and prints the spec for it behind steward's proxy at PROXY: a
# readiness check, the image, and [service.api] up to its readiness, for the caller
# to go on with the service's other keys.
fractals_api_spec() {
  cargo build --release -q -p fractals >&2
  mkdir -p "$WORK/base"
  cp "$CARGO_TARGET_DIR/release/fractals" "$WORK/app"
  cat <<SPEC

[check.api]
type = "http"
url = "http://$1/health"
interval = "1s"
conditions = ["[STATUS] == 200"]

[image.app]
base = "dir:base"
artifacts = [{ from = "app", to = "/usr/local/bin/fractals", mode = "0755" }]

[service.api]
image = "app"
command = ["/usr/local/bin/fractals", "api", "--listen", "{addr}"]
env = { FRACTALS_DATA = "{state_dir}/data" }
listen = "$1"
readiness = "api"
SPEC
}
