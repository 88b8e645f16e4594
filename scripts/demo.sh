#!/usr/bin/env bash
# The daemon's main job on the embedded SQLite default: jobs go in, per-job log lines come out.
# Only the project's own commands: no sqlite3 program, no server, no root.
set -euo pipefail
cd "$(dirname "$0")/.."
WM=.venv/bin/workermanager
CONF=workermanager/examples/conf.yml

# jobs in the queue: those ready to run now ("ready") or all of them ("ready scheduled")
count_jobs() {
  { $WM status --json -f "$CONF" || true; } | .venv/bin/python -c '
import json, sys
kinds = sys.argv[1:]
print(sum(f[k] for f in json.load(sys.stdin)["queue"]["functions"] for k in kinds))' "$@"
}

$WM init-db -f "$CONF"
$WM insert -f "$CONF" --count 20 Sandbox::Worker::B '{"hello": "world"}'
$WM insert -f "$CONF" --count 20 Sandbox::Worker::A '{"sleep": 0.05}'

echo "--- workermanager -n -c 4 -w 10 -f $CONF (per-job log follows) ---"
$WM -n -c 4 -w 10 -f "$CONF" &
daemon=$!
trap 'kill -TERM $daemon 2>/dev/null || true' EXIT
# Wait (at most 30 s) until no job is ready to run; A's failures wait 20 s for their retry.
for _ in $(seq 60); do
  [ "$(count_jobs ready)" -eq 0 ] && break
  sleep 0.5
done
kill -TERM $daemon
wait $daemon
trap - EXIT
echo "--- stopped; jobs left for a later retry: $(count_jobs ready scheduled) ---"
