#!/usr/bin/env bash
# The daemon's own part of a job's start: from `job submitted` (the submit's commit) to
# `conductor started` (a warm conductor assigned, or a cold one spawned), read from the daemon's
# JSON log, p50 and p90 over JOBS one-task `true` jobs run one after the other (`submit --wait`).
#
#   bench/start-phase.sh BINDIR [JOBS]     # BINDIR holds supervisor and conductor-worker
#
# Run it for two builds interleaved (A B A B ...): the machine's load moves the figures.
set -euo pipefail
bin=$(cd "$1" && pwd); jobs=${2:-150}
dir=$(mktemp -d /tmp/svphase.XXXX)
trap 'kill "$daemon" 2>/dev/null; wait "$daemon" 2>/dev/null; rm -rf "$dir"' EXIT
printf '[[task]]\nname = "a"\nrun = "true"\n' > "$dir/job.toml"
SUPERVISOR_LOG=info "$bin/supervisor" --state-dir "$dir/s" daemon --log-format json > "$dir/daemon.log" 2>&1 &
daemon=$!
for _ in $(seq 1 200); do [ -S "$dir/s/control.sock" ] && break; sleep 0.05; done
for _ in $(seq 1 "$jobs"); do
  "$bin/supervisor" --state-dir "$dir/s" submit --wait "$dir/job.toml" > /dev/null 2>&1
done
python3 - "$dir/daemon.log" "$bin" <<'PY'
import datetime, json, statistics, sys
submitted, phases = {}, []
for line in open(sys.argv[1]):
    try:
        entry = json.loads(line)
    except ValueError:
        continue
    fields = entry.get("fields", {})
    job = fields.get("job_id") or (entry.get("span") or {}).get("job_id")
    at = datetime.datetime.fromisoformat(entry["timestamp"].replace("Z", "+00:00")).timestamp()
    if fields.get("message") == "job submitted":
        submitted[job] = at
    elif fields.get("message") == "conductor started" and job in submitted:
        phases.append((at - submitted.pop(job)) * 1000)
phases.sort()
print(f"{sys.argv[2]}: job submitted -> conductor started p50 {statistics.median(phases):.2f} ms, "
      f"p90 {phases[int(len(phases) * 0.9)]:.2f} ms, {len(phases)} jobs")
PY
