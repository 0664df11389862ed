#!/usr/bin/env bash
# Backups: steward vs restic on the same generated data, in one run, printing ratios.
#
#   benches/backup.sh [SIZE_MB] [RUNS]     defaults: 1024 MB of data, 3 runs (medians)
#
# Data (made once per run, same for both): many small files, a few large random
# (incompressible) files, compressible text, and a SQL dump — in proportions of
# roughly 10 / 45 / 20 / 25 %. Measured per tool: a first backup into an empty
# repository, a second backup with nothing changed, and a full restore into an empty
# directory; wall time and peak resident memory (ru_maxrss of the process). Both
# repositories live on the local disk, both tools use a cache inside the scratch
# directory, and both use their default settings (restic 0.14: repository version 2
# with compression auto).
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE_MB=${1:-1024}
RUNS=${2:-3}
BENCH_NAME=backup source benches/common.sh
command -v restic >/dev/null || { echo "missing restic (apt-get install restic)" >&2; exit 2; }

DATA=$WORK/data
echo "generating ${SIZE_MB} MB of mixed data in $DATA"
python3 - "$DATA" "$SIZE_MB" <<'PY'
import os, random, sys
root, size = sys.argv[1], int(sys.argv[2]) * 1024 * 1024
rng = random.Random(42)
os.makedirs(root, exist_ok=True)
# small files: 10 %
small = int(size * 0.10); n = 0; i = 0
while n < small:
    d = f"{root}/small/{i // 500:03d}"; os.makedirs(d, exist_ok=True)
    b = rng.randbytes(rng.randint(512, 16384)); open(f"{d}/f{i:06d}.bin", "wb").write(b); n += len(b); i += 1
# large random files: 45 %
large = int(size * 0.45); os.makedirs(f"{root}/large", exist_ok=True)
for k in range(4):
    with open(f"{root}/large/blob{k}.bin", "wb") as f:
        left = large // 4
        while left > 0:
            c = min(left, 4 << 20); f.write(os.urandom(c)); left -= c
# compressible text: 20 %
words = "the quick brown fox jumps over lazy dogs while steward backs up fractal renders and logs".split()
text = int(size * 0.20); os.makedirs(f"{root}/text", exist_ok=True)
for k in range(8):
    with open(f"{root}/text/log{k}.txt", "w") as f:
        left = text // 8
        while left > 0:
            line = " ".join(rng.choice(words) for _ in range(12)) + "\n"; f.write(line); left -= len(line)
# a SQL dump: 25 %
sql = int(size * 0.25)
with open(f"{root}/dump.sql", "w") as f:
    f.write("CREATE TABLE fractal (id bigint primary key, kind text, width int, height int, created timestamptz, params jsonb);\n")
    left, j = sql, 0
    while left > 0:
        line = f"INSERT INTO fractal VALUES ({j}, '{rng.choice(['mandelbrot','julia'])}', {rng.randint(64,4096)}, {rng.randint(64,4096)}, '2026-0{rng.randint(1,9)}-1{rng.randint(0,9)} 12:00:00+00', '{{\"iter\": {rng.randint(10,5000)}, \"zoom\": {rng.random():.6f}}}');\n"
        f.write(line); left -= len(line); j += 1
PY
du -sh "$DATA" | awk '{print "data: " $1}'

# measure CMD... -> "seconds max_rss_kb"
measure() {
  python3 - "$@" <<'PY'
import resource, subprocess, sys, time
t = time.time()
r = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
el = time.time() - t
if r.returncode != 0:
    sys.stderr.write(r.stderr.decode()); sys.exit(r.returncode)
print(f"{el:.3f} {resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}")
PY
}
median() { sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }

PW=$WORK/password; echo "benchmark password" >"$PW"; chmod 600 "$PW"
export RESTIC_PASSWORD_FILE=$PW RESTIC_CACHE_DIR=$WORK/restic-cache
cat >"$WORK/steward.toml" <<TOML
[steward]
state_dir = "$WORK/steward-state"
[store.local]
type = "local"
path = "$WORK/steward-repo"
[backup.bench]
source = { paths = ["$DATA"] }
password = "\${file:$PW}"
TOML
ST=(env STEWARD_LOG=error "$STEWARD" -f "$WORK/steward.toml")

declare -A T
for ((r = 1; r <= RUNS; r++)); do
  echo "run $r/$RUNS"
  # restic
  rm -rf "$WORK/restic-repo" "$WORK/restic-cache" "$WORK/restore-restic"
  restic init -r "$WORK/restic-repo" -q >/dev/null
  read -r s m < <(measure restic -r "$WORK/restic-repo" backup -q "$DATA"); T[restic_first]+="$s "; T[restic_first_rss]+="$m "
  read -r s m < <(measure restic -r "$WORK/restic-repo" backup -q "$DATA"); T[restic_none]+="$s "; T[restic_none_rss]+="$m "
  read -r s m < <(measure restic -r "$WORK/restic-repo" restore latest -q --target "$WORK/restore-restic"); T[restic_restore]+="$s "; T[restic_restore_rss]+="$m "
  # steward
  rm -rf "$WORK/steward-repo" "$WORK/steward-state" "$WORK/restore-steward"
  read -r s m < <(measure "${ST[@]}" backup run bench); T[steward_first]+="$s "; T[steward_first_rss]+="$m "
  read -r s m < <(measure "${ST[@]}" backup run bench); T[steward_none]+="$s "; T[steward_none_rss]+="$m "
  read -r s m < <(measure "${ST[@]}" backup restore bench --target "$WORK/restore-steward"); T[steward_restore]+="$s "; T[steward_restore_rss]+="$m "
  # Both restores are complete and identical to the source.
  diff -rq "$DATA" "$WORK/restore-steward$DATA" >/dev/null || { echo "steward's restore differs from the data" >&2; exit 1; }
  diff -rq "$DATA" "$WORK/restore-restic$DATA" >/dev/null || { echo "restic's restore differs from the data" >&2; exit 1; }
done
med() { printf '%s\n' ${T[$1]} | median; }
mb() { awk -v k="$1" 'BEGIN { printf "%.0f", k / 1024 }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
printf '\n%-18s %12s %12s %12s %14s\n' "" "first (s)" "no-change (s)" "restore (s)" "restore RSS"
for tool in restic steward; do
  printf '%-18s %12s %12s %12s %11s MB\n' "$tool" "$(med ${tool}_first)" "$(med ${tool}_none)" "$(med ${tool}_restore)" "$(mb "$(med ${tool}_restore_rss)")"
done
printf '%-18s %12s %12s %12s\n' "peak RSS (MB)" "$(mb "$(med steward_first_rss)") / $(mb "$(med restic_first_rss)")" "$(mb "$(med steward_none_rss)") / $(mb "$(med restic_none_rss)")" "(steward / restic)"
echo
echo "steward / restic: first $(ratio "$(med steward_first)" "$(med restic_first)")x (target <= 1), no-change $(ratio "$(med steward_none)" "$(med restic_none)")x (target <= 0.5), restore $(ratio "$(med steward_restore)" "$(med restic_restore)")x (target <= 1), restore RSS $(mb "$(med steward_restore_rss)") MB (target <= 200)"
