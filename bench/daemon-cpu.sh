#!/usr/bin/env bash
# The daemon's own cost per job: CPU (utime+stime of every thread) and context switches.
#
#   bench/daemon-cpu.sh BINDIR [JOBS]     # BINDIR holds supervisor and conductor-worker
#
# Also the switches per job of each thread name (the runtime, `store`, the blocking pool).
# JOBS (default 300) one-task `true` jobs are submitted one after the other to a daemon with
# --max-jobs 8 in a fresh state dir; the figures cover the submits and the jobs' whole lives.
# Run it for two builds interleaved (A B A B ...): the machine's load moves the figures.
set -euo pipefail
bin=$(cd "$1" && pwd); jobs=${2:-300}
dir=$(mktemp -d /tmp/svcpu.XXXX)
trap 'kill "$daemon" 2>/dev/null; wait "$daemon" 2>/dev/null; rm -rf "$dir"' EXIT
printf '[[task]]\nname = "a"\nrun = "true"\n' > "$dir/job.toml"
"$bin/supervisor" --state-dir "$dir/s" daemon --max-jobs 8 > "$dir/daemon.log" 2>&1 &
daemon=$!
for _ in $(seq 1 200); do [ -S "$dir/s/control.sock" ] && break; sleep 0.05; done
ticks() { awk '{print $14 + $15}' "/proc/$daemon/stat"; }
switches() { cat /proc/"$daemon"/task/*/status | awk '/ctxt_switches/ {s += $2} END {print s}'; }
# TID NAME SWITCHES of each thread alive now.
threads() {
  for t in /proc/"$daemon"/task/*; do
    echo "$(basename "$t") $(cat "$t/comm") $(awk '/ctxt_switches/ {s += $2} END {print s}' "$t/status")"
  done | sort
}
threads > "$dir/threads.0"
t0=$(ticks); c0=$(switches)
for _ in $(seq 1 "$jobs"); do "$bin/supervisor" --state-dir "$dir/s" submit "$dir/job.toml" > /dev/null; done
while [ "$("$bin/supervisor" --state-dir "$dir/s" ls --json | grep -c '"id"')" != 0 ]; do sleep 0.1; done
t1=$(ticks); c1=$(switches)
threads > "$dir/threads.1"
hz=$(getconf CLK_TCK)
echo "$bin: daemon CPU $(( (t1 - t0) * 1000000 / hz / jobs )) us/job, context switches $(( (c1 - c0) / jobs ))/job (threads alive at the end), $jobs jobs"
# Per thread name (a thread born during the run counts from zero; one gone by the end is lost).
echo "  per thread: $(join -a 2 "$dir/threads.0" "$dir/threads.1" | awk -v n="$jobs" '
  { d = (NF == 5) ? $5 - $3 : $3; name = (NF == 5) ? $4 : $2; c[name] += d }
  END { for (k in c) printf "%s %.1f  ", k, c[k] / n }')"
