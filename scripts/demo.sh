#!/usr/bin/env bash
# The daemon's main job on the embedded SQLite default: jobs go in, per-job log lines come out.
set -euo pipefail
cd "$(dirname "$0")/.."
WM=.venv/bin/workermanager
CONF=workermanager/examples/conf.yml
DB=workermanager/examples/var/sandbox.db

$WM init-db -f "$CONF"
$WM insert -f "$CONF" --count 20 Sandbox::Worker::B '{"hello": "world"}'
$WM insert -f "$CONF" --count 20 Sandbox::Worker::A '{"sleep": 0.05}'

echo "--- workermanager -n -c 4 -w 10 -f $CONF (per-job log follows) ---"
$WM -n -c 4 -w 10 -f "$CONF" &
daemon=$!
trap 'kill -TERM $daemon 2>/dev/null || true' EXIT
# Wait (at most 30 s) until no job is ready to run; A's failures wait 20 s for their retry.
for _ in $(seq 300); do
  ready=$(sqlite3 "$DB" "SELECT COUNT(*) FROM job WHERE run_after <= strftime('%s','now')")
  [ "$ready" -eq 0 ] && break
  sleep 0.1
done
kill -TERM $daemon
wait $daemon
trap - EXIT
echo "--- stopped; jobs left for a later retry: $(sqlite3 "$DB" 'SELECT COUNT(*) FROM job') ---"
