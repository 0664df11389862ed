#!/usr/bin/env bash
# steward on the test bed's OpenStack (scripts/openstack: Nova with the fake
# driver) against the `openstack` CLI, in one run:
#
# 1. Per call, each a fresh process as the CLI is: login + create until ACTIVE,
#    show, delete until gone — steward's client (crates/steward-openstack/
#    examples/calls.rs) and `openstack server create --wait / show / delete
#    --wait`, ROUNDS times each, medians and the ratio.
# 2. A deploy of N servers, PARALLEL at a time (no readiness check: a server is
#    ready when ACTIVE; min_healthy_time 1 s), from `deploy.started` to
#    `deploy.succeeded`, against the floor ceil(N / PARALLEL) × (one boot, the
#    median create-until-ACTIVE of part 1, + min_healthy_time).
# 3. A snapshot of a server until its image is active: `steward snapshot take`
#    against `openstack server image create --wait`, ROUNDS times each (the
#    test bed's driver uploads the server's 1 MiB disk, scripts/nova/).
#
#   benches/openstack.sh [N] [PARALLEL] [ROUNDS]   defaults: 4 2 3
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-4}
P=${2:-2}
ROUNDS=${3:-3}
BENCH_NAME=openstack source benches/common.sh
if ! command -v openstack >/dev/null; then
  echo "installing the openstack CLI (python3-openstackclient) for the comparison" >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-openstackclient >/dev/null
fi
scripts/testbed up >/dev/null
# shellcheck disable=SC1090
source <(scripts/testbed env)
cargo build --release -q -p steward-openstack --example calls
CALLS=$CARGO_TARGET_DIR/release/examples/calls
export OS_AUTH_URL=$STEWARD_TEST_OS_AUTH_URL OS_USERNAME=demo OS_PASSWORD=$STEWARD_TEST_OS_DEMO_PASSWORD
export OS_PROJECT_NAME=demo OS_USER_DOMAIN_ID=default OS_PROJECT_DOMAIN_ID=default
export OS_REGION_NAME=RegionOne OS_IDENTITY_API_VERSION=3 OS_COMPUTE_API_VERSION=2.37

head -c 1048576 /dev/urandom >"$WORK/disk.raw"
IMAGE=$(openstack image create --disk-format raw --container-format bare --file "$WORK/disk.raw" \
  "steward-bench-$$" -f value -c id | tr -d '[:space:]')
trap 'openstack image delete "$IMAGE" >/dev/null 2>&1 || true; cleanup' EXIT

now() { date +%s.%N; }
: >"$WORK/cli" ; : >"$WORK/steward"
for r in $(seq 1 "$ROUNDS"); do
  t0=$(now)
  id=$(openstack server create --image "$IMAGE" --flavor steward.tiny --nic none --wait \
    "steward-bench-cli-$$-$r" -f value -c id | tr -d '[:space:]')
  t1=$(now)
  openstack server show "$id" -f value -c status >/dev/null
  t2=$(now)
  openstack server delete --wait "$id"
  t3=$(now)
  echo "$t0 $t1 $t2 $t3" | awk '{printf "%.3f %.3f %.3f\n", $2-$1, $3-$2, $4-$3}' >>"$WORK/cli"
  "$CALLS" "$IMAGE" steward.tiny "steward-bench-ours-$$-$r" | awk '{printf "%.3f %.3f %.3f %.3f\n", $1+$2, $3, $4, $1}' >>"$WORK/steward"
done

# Part 2: a deploy of N servers.
cat >"$WORK/steward.toml" <<SPEC
[steward]
state_dir = "state"
listen = "127.0.0.1:$(free_port)"

[cloud.bench]
auth_url = "\${env:OS_AUTH_URL}"
username = "demo"
password = "\${env:OS_PASSWORD}"
project = "demo"
region = "RegionOne"

[image.app]
base = "empty"
artifacts = [{ from = "index.html", to = "/index.html" }]

[service.api]
provider = "openstack"
flavor = "steward.tiny"
networks = ["steward-test"]
port = 8080
image = "app"
command = ["/app", "--listen", "{addr}"]
replicas = $N
rollout = { max_parallel = $P, min_healthy_time = "1s", healthy_deadline = "5m", progress_deadline = "30m" }

[snapshot.api]
service = "api"
SPEC
echo v1 >"$WORK/index.html"
S() { "$STEWARD" -f "$WORK/steward.toml" "$@"; }
S image build >/dev/null
(cd "$WORK" && exec "$STEWARD" -f steward.toml serve >"$WORK/serve.log" 2>&1) & PIDS+=($!)
for _ in $(seq 1 1500); do
  r=$(S fleet status --json 2>/dev/null | python3 -c 'import json,sys; d=json.load(sys.stdin)[0]; print(d["ready"], (d["deploy"] or {}).get("result"))' 2>/dev/null || true)
  [ "$r" = "$N succeeded" ] && break
  sleep 0.2
done
[ "$r" = "$N succeeded" ] || { echo "the deploy did not finish: $r" >&2; tail "$WORK/serve.log" >&2; exit 1; }
kill "${PIDS[-1]}"; wait "${PIDS[-1]}" 2>/dev/null || true
S down >/dev/null

# Part 3: snapshots of one server.
SID=$(openstack server create --image "$IMAGE" --flavor steward.tiny --nic none --wait \
  "steward-bench-snap-$$" -f value -c id | tr -d '[:space:]')
: >"$WORK/snap"
for r in $(seq 1 "$ROUNDS"); do
  t0=$(now)
  cli_image=$(openstack server image create --name "steward-bench-cli-snap-$$-$r" --wait "$SID" -f value -c id | tr -d '[:space:]')
  t1=$(now)
  ours_image=$(S snapshot take api --server "$SID" 2>/dev/null | sed -n 's/^snapshot api: \([^ ]*\).*/\1/p')
  t2=$(now)
  [ -n "$ours_image" ] || { echo "steward snapshot take failed" >&2; exit 1; }
  openstack image delete "$cli_image" "$ours_image"
  echo "$t0 $t1 $t2" | awk '{printf "%.3f %.3f\n", $2-$1, $3-$2}' >>"$WORK/snap"
done
openstack server delete --wait "$SID"

python3 - "$WORK" "$N" "$P" <<'PY'
import math, sqlite3, statistics, sys
work, n, p = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
cli = [list(map(float, l.split())) for l in open(f"{work}/cli")]
ours = [list(map(float, l.split())) for l in open(f"{work}/steward")]
med = lambda rows, i: statistics.median(r[i] for r in rows)
print(f"per call, median of {len(cli)} (a fresh process each, as the CLI is):")
for i, what in enumerate(["create until ACTIVE", "show", "delete until gone"]):
    c, s = med(cli, i), med(ours, i)
    print(f"  {what:<20} openstack CLI {c:7.3f} s   steward {s:7.3f} s   ({c/s:.1f}x)")
print(f"  (steward's login to Keystone, in its create: {med(ours, 3)*1000:.0f} ms)")
db = sqlite3.connect(f"file:{work}/state/state.db?mode=ro", uri=True)
started, finished = db.execute("SELECT started_ms, finished_ms FROM fleet_deploy ORDER BY id LIMIT 1").fetchone()
took = (finished - started) / 1000
boot = med(cli + ours, 0)
floor = math.ceil(n / p) * (boot + 1.0)
print(f"deploy of {n} servers, max_parallel {p}, min_healthy_time 1s:")
print(f"  floor ceil(N/P) x (one boot {boot:.2f} s + 1 s): {floor:.2f} s")
print(f"  measured (deploy started -> succeeded):      {took:.2f} s ({took/floor:.2f}x the floor)")
snap = [list(map(float, l.split())) for l in open(f"{work}/snap")]
c, s = med(snap, 0), med(snap, 1)
print(f"snapshot of a server until its image is active, median of {len(snap)}:")
print(f"  openstack server image create --wait {c:7.3f} s   steward snapshot take {s:7.3f} s   ({c/s:.2f}x)")
PY
