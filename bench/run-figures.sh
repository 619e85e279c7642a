#!/usr/bin/env bash
# Figures for `supervisor run` (release build): start to first task running, SIGINT to exit for a
# one-task `sleep 60` job whose revert is `true`, and the conductor's RSS while a task runs.
#
#   cargo build --release --workspace --bins && bench/run-figures.sh [ROUNDS]
#
# Prints p50 / p95 / max in milliseconds. Uses only bash, awk and /proc.
set -euo pipefail
rounds=${1:-30}
root=$(cd "$(dirname "$0")/.." && pwd)
sv="$root/target/release/supervisor"
[ -x "$sv" ] || { echo "build first: cargo build --release --workspace --bins" >&2; exit 2; }
work=$(mktemp -d /tmp/svbench.XXXXXX)
trap 'rm -rf "$work"' EXIT
now_ns() { date +%s%N; }
stats() { sort -n | awk '{v[NR]=$1} END {printf "p50 %.2f ms  p95 %.2f ms  max %.2f ms  (n=%d)\n", v[int(NR*0.5+0.5)], v[int(NR*0.95+0.5)], v[NR], NR}'; }

cat > "$work/first.toml" <<TOML
[[task]]
name = "t"
run = 'date +%s%N > "$work/started"'
TOML
cat > "$work/sleep.toml" <<TOML
[[task]]
name = "t"
run = 'touch "$work/running"; exec sleep 60'
revert = "true"
TOML

echo "== run start to first task running"
for _ in $(seq "$rounds"); do
  t0=$(now_ns)
  "$sv" run --state-dir "$work/s" "$work/first.toml" >/dev/null
  echo $(( ($(cat "$work/started") - t0) )) | awk '{print $1/1e6}'
done | stats

echo "== SIGINT to exit (one sleep task, revert true)"
for _ in $(seq "$rounds"); do
  rm -f "$work/running"
  "$sv" run --state-dir "$work/s" "$work/sleep.toml" >/dev/null 2>&1 &
  pid=$!
  until [ -e "$work/running" ]; do sleep 0.005; done
  t0=$(now_ns)
  kill -INT "$pid"
  wait "$pid" || true
  echo $(( $(now_ns) - t0 )) | awk '{print $1/1e6}'
done | stats

rss_of_conductor() {
  rm -f "$work/running"
  "$@" run --state-dir "$work/s" "$work/sleep.toml" >/dev/null 2>&1 &
  local pid=$!
  until [ -e "$work/running" ]; do sleep 0.005; done
  local cpid
  cpid=$(pgrep -P "$pid" | head -n1)
  echo "conductor pid $cpid: $(grep -E 'VmRSS|RssAnon' "/proc/$cpid/status" | tr -s ' \n' ' ')threads $(ls "/proc/$cpid/task" | wc -l)"
  kill -INT "$pid"; wait "$pid" || true
}
echo "== conductor RSS while a task runs (conductor-worker binary)"
rss_of_conductor "$sv"
echo "== conductor RSS while a task runs (supervisor serving as its own conductor)"
mkdir -p "$work/alone" && cp "$sv" "$work/alone/supervisor"
rss_of_conductor "$work/alone/supervisor"
