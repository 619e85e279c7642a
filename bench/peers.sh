#!/usr/bin/env bash
# Installs the peers the benchmark compares with, into a scratch dir (reused when present):
#   DIR/pueue/bin/{pueue,pueued}   cargo install pueue --root DIR/pueue
#   DIR/taskflow/bin/python        python3 -m venv DIR/taskflow && pip install taskflow SQLAlchemy alembic
# Usage: bench/peers.sh [DIR]   (default /tmp/svbench-peers). Needs the network the first time.
set -euo pipefail
dir=${1:-/tmp/svbench-peers}
mkdir -p "$dir"
if [ ! -x "$dir/pueue/bin/pueued" ] || [ ! -x "$dir/pueue/bin/pueue" ]; then
  echo "peers: installing pueue into $dir/pueue (cargo install, about 3 minutes)" >&2
  cargo install --locked pueue --root "$dir/pueue" >"$dir/pueue-install.log" 2>&1 \
    || cargo install pueue --root "$dir/pueue" >>"$dir/pueue-install.log" 2>&1 \
    || { echo "peers: pueue install failed, see $dir/pueue-install.log" >&2; exit 1; }
fi
if ! "$dir/taskflow/bin/python" -c 'import taskflow, sqlalchemy, alembic' 2>/dev/null; then
  echo "peers: installing TaskFlow into $dir/taskflow (venv + pip)" >&2
  python3 -m venv "$dir/taskflow"
  # The SQL persistence backend (sqlite://) needs SQLAlchemy and alembic, which taskflow does not require.
  "$dir/taskflow/bin/pip" install --quiet taskflow SQLAlchemy alembic >"$dir/taskflow-install.log" 2>&1 \
    || { echo "peers: TaskFlow install failed, see $dir/taskflow-install.log" >&2; exit 1; }
fi
echo "peers: pueue $("$dir/pueue/bin/pueue" --version 2>/dev/null | head -n1), taskflow $("$dir/taskflow/bin/python" -c 'import importlib.metadata as m; print(m.version("taskflow"))')" >&2
