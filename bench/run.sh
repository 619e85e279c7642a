#!/usr/bin/env bash
# The supervisor's benchmark: prints the figures table and writes BENCHMARKS.md.
#
#   bench/run.sh                 # full: builds the release binaries, installs the peers (pueue,
#                                # TaskFlow) into /tmp/svbench-peers once (first time: ~5 min more),
#                                # then about 6 minutes
#   bench/run.sh --quick         # smoke: fewer rounds, no peers, no network; under a minute once
#                                # built; prints the table, writes BENCHMARKS.md only with --out
#
# Options:
#   --quick            fewer rounds, only --max-jobs 8, no peers (CI)
#   --no-peers         skip pueue and TaskFlow
#   --rev REV          benchmark a committed revision: `git archive REV`, built apart under
#                      /tmp/svbench-build (the working tree is not touched)
#   --bin-dir DIR      use DIR/supervisor and DIR/conductor-worker as they are (no build)
#   --peers-dir DIR    where the peers are installed (default /tmp/svbench-peers)
#   --out FILE         the report (default: BENCHMARKS.md at the repo root; none with --quick)
#   --check            exit 1 when a budget is missed
#   --only LIST        only these sections (floors,latencies,run,throughput,memory,
#                      history,live,growth,pueue,taskflow)
#
# Needs bash, python3 (standard library), cargo; the full run needs the network the first time.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
quick=0 peers=1 rev="" bindir="" out="" check=0 only=""
peers_dir=/tmp/svbench-peers
argv=("$@")
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) quick=1; peers=0 ;;
    --no-peers) peers=0 ;;
    --rev) rev=$2; shift ;;
    --bin-dir) bindir=$2; shift ;;
    --peers-dir) peers_dir=$2; shift ;;
    --out) out=$2; shift ;;
    --check) check=1 ;;
    --only) only=$2; shift ;;
    -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
    *) echo "run.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
[ -z "$out" ] && [ "$quick" = 0 ] && out="$root/BENCHMARKS.md"

# The binaries.
if [ -n "$bindir" ]; then
  bindir=$(cd "$bindir" && pwd)
  built="prebuilt binaries in $bindir"
elif [ -n "$rev" ]; then
  sha=$(git -C "$root" rev-parse --short "$rev^{commit}")
  src=/tmp/svbench-build/$sha
  if [ ! -f "$src/Cargo.toml" ]; then
    mkdir -p "$src"
    # -m: the files get the time of extraction, not the commit's, so that cargo rebuilds them
    # in the shared target dir (artifacts of a later build there would look newer otherwise).
    git -C "$root" archive "$sha" | tar -x -m -C "$src"
  fi
  echo "run.sh: building $sha (release) in $src" >&2
  (cd "$src" && CARGO_TARGET_DIR=/tmp/svbench-build/target cargo build --release --workspace --bins >&2)
  bindir=/tmp/svbench-build/target/release
  built="commit $sha, built apart (git archive) with cargo build --release --workspace --bins"
else
  echo "run.sh: cargo build --release --workspace --bins" >&2
  (cd "$root" && cargo build --release --workspace --bins >&2)
  bindir="$root/target/release"
  built="working tree at $(git -C "$root" describe --always --dirty 2>/dev/null || echo unknown), cargo build --release --workspace --bins"
fi
[ -x "$bindir/supervisor" ] || { echo "run.sh: no $bindir/supervisor" >&2; exit 2; }

# The peers (installed once, reused).
peer_arg=()
if [ "$peers" = 1 ]; then
  if "$root/bench/peers.sh" "$peers_dir"; then
    peer_arg=(--peers "$peers_dir")
  else
    echo "run.sh: peers unavailable; continuing without them" >&2
  fi
fi

work=$(mktemp -d /tmp/svb.XXXXXX)
cleanup() { [ -n "${KEEP_BENCH_DIR:-}" ] || rm -rf "$work"; }
trap cleanup EXIT
args=(--sv "$bindir/supervisor" --work "$work" --json "$work/results.json"
      --command "bench/run.sh${argv[*]:+ ${argv[*]}}" --built "$built")
[ "$quick" = 1 ] && args+=(--quick)
[ -n "$only" ] && args+=(--only "$only")
[ -n "$out" ] && args+=(--markdown "$out" --notes "$root/bench/NOTES.md")
[ "$check" = 1 ] && args+=(--check)
python3 "$root/bench/bench.py" "${args[@]}" "${peer_arg[@]}"
