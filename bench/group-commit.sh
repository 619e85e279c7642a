#!/usr/bin/env bash
# Group commit at work: fsyncs (fsync + fdatasync) of the daemon per job when jobs overlap.
#
#   bench/group-commit.sh BINDIR [JOBS] [PARALLEL]    # BINDIR holds supervisor and conductor-worker
#
# JOBS (default 300) two-task `true` jobs are submitted PARALLEL (default 8) at a time to a
# daemon with --max-jobs 8 in a fresh state dir; each job needs 4 durable commits (its submit,
# two write-aheads, its end). Without group commit each is an fsync of its own; with it,
# concurrent jobs' commits share one. Needs `perf` with access to the syscall tracepoints.
# Run it for two builds interleaved (A B A B ...): the machine's load moves the figures.
set -euo pipefail
bin=$(cd "$1" && pwd); jobs=${2:-300}; par=${3:-8}
dir=$(mktemp -d /tmp/svgc.XXXX)
trap 'kill "$daemon" 2>/dev/null; wait "$daemon" 2>/dev/null; rm -rf "$dir"' EXIT
printf '[[task]]\nname = "a"\nrun = "true"\n[[task]]\nname = "b"\nrun = "true"\n' > "$dir/job.toml"
"$bin/supervisor" --state-dir "$dir/s" daemon --max-jobs 8 > "$dir/daemon.log" 2>&1 &
daemon=$!
for _ in $(seq 1 200); do [ -S "$dir/s/control.sock" ] && break; sleep 0.05; done
perf stat -e syscalls:sys_enter_fsync,syscalls:sys_enter_fdatasync -p "$daemon" -o "$dir/perf" 2>/dev/null &
counter=$!
sleep 0.3
t0=$(date +%s%N)
seq 1 "$jobs" | xargs -P "$par" -I{} "$bin/supervisor" --state-dir "$dir/s" submit "$dir/job.toml" > /dev/null
while [ "$("$bin/supervisor" --state-dir "$dir/s" ls --json | grep -c '"id"')" != 0 ]; do sleep 0.05; done
t1=$(date +%s%N)
kill -INT "$counter"; wait "$counter" || true
syncs=$(awk '/sys_enter_f/ {gsub(",", "", $1); s += $1} END {print s}' "$dir/perf")
echo "$bin: $(( syncs * 100 / jobs )) fsyncs per 100 jobs, $(( jobs * 1000000000 / (t1 - t0) )) jobs/s ($jobs two-task jobs, $par submitted at once)"
