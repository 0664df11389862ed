#!/bin/sh
# Load for the fractals demo: submits render jobs for a while, so steward's
# autoscaler can be watched scaling the workers out on the queue depth and,
# once the queue is empty and the cooldown has passed, back to rest. Bounded:
# it stops by itself.
#
#   examples/fractals/load.sh [SECONDS] [JOBS_PER_SECOND] [URL]
#   defaults: 60 s, 4 jobs a second, http://127.0.0.1:8000 (the demo's proxy);
#   FRACTALS_JOB sets the job (JSON), default a 640x480 Mandelbrot set
#
# Each line: jobs submitted so far and the queue depth the API reports.
set -eu
secs=${1:-60}
rate=${2:-4}
url=${3:-http://127.0.0.1:8000}
job=${FRACTALS_JOB:-'{"kind":"mandelbrot","width":640,"height":480,"iterations":3000}'}
end=$(( $(date +%s) + secs ))
n=0
while [ "$(date +%s)" -lt "$end" ]; do
  i=0
  while [ "$i" -lt "$rate" ]; do
    if curl -fsS -o /dev/null -H 'content-type: application/json' -d "$job" "$url/fractals"; then
      n=$((n + 1))
    fi
    i=$((i + 1))
  done
  depth=$(curl -fsS "$url/metrics" 2>/dev/null | sed -n 's/^fractals_queue_depth //p' || true)
  echo "$(date +%T) submitted $n, queue depth ${depth:-?}"
  sleep 1
done
echo "submitted $n jobs"
