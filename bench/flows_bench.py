#!/usr/bin/env python3
"""Flows benchmark (issue 12): a graph of LEVELS levels of 100 `true` tasks against the same
tasks as a linear job, with `supervisor run`, and TaskFlow's parallel engine on the same graph.

    python3 bench/flows_bench.py [--levels 10] [--rounds 3] [--bin target/release/supervisor]
                                 [--taskflow-python PATH] [--out FILE]

Task i of level k runs after tasks i and i+1 (mod 100) of level k-1, so every level waits for
the one before it and holds 100 tasks that can run together. Figures, each the median of
`--rounds` runs (wall time of `supervisor run`, from its start to its exit):

- linear: the 1000 tasks one after the other; per-step overhead = (wall - one-task job) / 999;
- graph at max_parallel 16 and 100: wall, and wall / tasks (the amortised cost of a step);
- TaskFlow's parallel engine (`engine="parallel"`, threads), with no-op Python tasks and with
  tasks that run `true` as a process (bench/taskflow_bench.py), if `--taskflow-python` is given.

Prints one JSON object (and writes it to `--out`).
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

WIDTH = 100


def graph_job(levels, max_parallel):
    lines = [f'name = "graph-{levels}x{WIDTH}"', 'flow = "graph"', f"max_parallel = {max_parallel}", ""]
    for k in range(levels):
        for i in range(WIDTH):
            lines.append("[[task]]")
            lines.append(f'name = "l{k}t{i}"')
            lines.append('run = "true"')
            if k > 0:
                lines.append(f'after = ["l{k - 1}t{i}", "l{k - 1}t{(i + 1) % WIDTH}"]')
            lines.append("")
    return "\n".join(lines)


def linear_job(count):
    lines = [f'name = "linear-{count}"', ""]
    for n in range(count):
        lines += ["[[task]]", f'name = "t{n}"', 'run = "true"', ""]
    return "\n".join(lines)


def run_once(binary, work, name, text):
    path = os.path.join(work, f"{name}.toml")
    with open(path, "w") as f:
        f.write(text)
    state = os.path.join(work, f"state-{name}")
    shutil.rmtree(state, ignore_errors=True)
    t0 = time.perf_counter()
    done = subprocess.run(
        [binary, "run", "--state-dir", state, path],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "SUPERVISOR_LOG": "warn"},
    )
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        sys.exit(f"{name}: supervisor run exited {done.returncode}")
    shutil.rmtree(state, ignore_errors=True)
    return wall


def median_wall(binary, work, name, text, rounds):
    walls = [run_once(binary, work, name, text) for _ in range(rounds)]
    return statistics.median(walls), walls


def load():
    with open("/proc/loadavg") as f:
        return f.read().split()[0]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--levels", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--bin", default="target/release/supervisor")
    ap.add_argument("--taskflow-python", default=None)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    count = args.levels * WIDTH
    work = tempfile.mkdtemp(prefix="flows-bench-")
    res = {"tasks": count, "levels": args.levels, "width": WIDTH, "load_before": load()}
    run_once(args.bin, work, "warmup", linear_job(1))
    one, _ = median_wall(args.bin, work, "one", linear_job(1), args.rounds)
    res["one_task_s"] = one
    wall, walls = median_wall(args.bin, work, "linear", linear_job(count), args.rounds)
    res["linear"] = {"wall_s": wall, "walls_s": walls, "per_step_ms": (wall - one) * 1000 / (count - 1)}
    for parallel in (16, WIDTH):
        wall, walls = median_wall(args.bin, work, f"graph{parallel}", graph_job(args.levels, parallel), args.rounds)
        res[f"graph_max_parallel_{parallel}"] = {
            "wall_s": wall,
            "walls_s": walls,
            "per_step_ms": (wall - one) * 1000 / count,
            "speedup_over_linear": res["linear"]["wall_s"] / wall,
        }
    if args.taskflow_python:
        script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "taskflow_bench.py")
        for kind in ("noop", "true"):
            out = subprocess.run(
                [args.taskflow_python, script, "graph", kind, str(args.levels), work],
                capture_output=True,
                text=True,
                check=True,
            )
            res[f"taskflow_parallel_{kind}"] = json.loads(out.stdout.strip().splitlines()[-1])
    res["load_after"] = load()
    shutil.rmtree(work, ignore_errors=True)
    text = json.dumps(res, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
