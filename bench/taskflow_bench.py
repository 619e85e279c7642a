#!/usr/bin/env python3
"""TaskFlow side of the benchmark; run by bench/bench.py with the TaskFlow venv's python:

    python taskflow_bench.py flow memory|sqlite N WORKDIR   # linear flow of N no-op tasks
    python taskflow_bench.py cancel memory ROUNDS WORKDIR   # the seed write-up's cancel flag
    python taskflow_bench.py one memory ROUNDS WORKDIR      # one no-op task: load + run
    python taskflow_bench.py graph noop|true LEVELS WORKDIR # LEVELS x 100 tasks, parallel engine

Prints one JSON object. Per-task overhead is ((N-task flow) - (1-task flow)) / (N - 1), both
load + run, after a warm-up flow, the same arithmetic as the supervisor's figure.
"""

import contextlib
import json
import os
import resource
import sys
import threading
import time

import taskflow.engines
from taskflow import task
from taskflow.patterns import graph_flow, linear_flow


class Noop(task.Task):
    def execute(self):
        return None

    def revert(self, *args, **kwargs):
        return None


def backend(mode, work):
    if mode == "memory":
        return None
    from taskflow.persistence import backends

    path = os.path.join(work, "taskflow.db")
    for suffix in ("", "-journal", "-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path + suffix)
    be = backends.fetch({"connection": f"sqlite:///{path}"})
    with contextlib.closing(be.get_connection()) as conn:
        conn.upgrade()
    return be


def run_flow(n, be):
    flow = linear_flow.Flow("bench")
    flow.add(*[Noop(name=f"t{i}") for i in range(n)])
    t0 = time.perf_counter()
    engine = taskflow.engines.load(flow, backend=be) if be else taskflow.engines.load(flow)
    engine.run()
    return time.perf_counter() - t0


def pct(values, q):
    v = sorted(values)
    k = max(0, min(len(v) - 1, int(round(q * len(v) + 0.5)) - 1))
    return v[k]


def summary(ms):
    return {"p50": pct(ms, 0.5), "p95": pct(ms, 0.95), "max": max(ms), "n": len(ms)}


def flow_mode(mode, n, work):
    be = backend(mode, work)
    run_flow(1, be)  # warm-up: imports, first connection
    ones = [run_flow(1, be) for _ in range(5)]
    total = run_flow(n, be)
    one = pct(ones, 0.5)
    return {
        "tasks": n,
        "total_s": total,
        "one_task_s": one,
        "per_task_ms": (total - one) * 1000 / (n - 1),
        "maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        "store": "in-memory" if be is None else "SQLAlchemy + SQLite file (default journal, synchronous FULL)",
    }


# The seed write-up's pattern: a flag checked before and after each execute().
cancel_event = threading.Event()
reverted = []


class CancelableTask(task.Task):
    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if hasattr(cls, "execute") and callable(cls.execute):
            original_execute = cls.execute

            def wrapped_execute(self, *args, **kwargs):
                if cancel_event.is_set():
                    raise Exception("Flow cancelled at start")
                result = original_execute(self, *args, **kwargs)
                if cancel_event.is_set():
                    raise Exception("Flow cancelled after execution")
                return result

            cls.execute = wrapped_execute


EXECUTE_S = 2.0
SET_AFTER_S = 0.1


class SleepTask(CancelableTask):
    """The `sleep` task: a long execute that cannot be interrupted from outside."""

    def execute(self):
        started.set()
        time.sleep(EXECUTE_S)

    def revert(self, *args, **kwargs):
        reverted.append(time.perf_counter())


started = threading.Event()


def cancel_mode(rounds):
    out = []
    ok = True
    for _ in range(rounds):
        cancel_event.clear()
        started.clear()
        reverted.clear()
        flow = linear_flow.Flow("cancel")
        flow.add(SleepTask(name="t"))
        engine = taskflow.engines.load(flow)
        marks = {}

        def cancel_later():
            started.wait()
            time.sleep(SET_AFTER_S)
            marks["set"] = time.perf_counter()
            cancel_event.set()

        th = threading.Thread(target=cancel_later)
        th.start()
        try:
            engine.run()
            ok = False  # it should have failed
        except Exception:  # noqa: BLE001 - the cancel surfaces as the task's exception
            pass
        end = time.perf_counter()
        th.join()
        ok = ok and bool(reverted)
        out.append((end - marks["set"]) * 1000)
    return {"latency_ms": summary(out), "execute_s": EXECUTE_S, "set_after_s": SET_AFTER_S, "reverted": ok}


def one_mode(rounds):
    run_flow(1, None)
    return {"load_run_ms": summary([run_flow(1, None) * 1000 for _ in range(rounds)])}


class RunTrue(task.Task):
    """Runs `true` as a process: the same work as the supervisor's `run = "true"` task."""

    def execute(self):
        import subprocess

        subprocess.run(["true"], check=True)

    def revert(self, *args, **kwargs):
        return None


WIDTH = 100


def graph_flow_of(levels, kind):
    """LEVELS levels of WIDTH tasks; task i of level k runs after tasks i and i+1 (mod WIDTH)
    of level k-1: the graph of bench/flows_bench.py."""
    cls = Noop if kind == "noop" else RunTrue
    flow = graph_flow.Flow("graph")
    tasks = [[cls(name=f"l{k}t{i}") for i in range(WIDTH)] for k in range(levels)]
    for level in tasks:
        flow.add(*level)
    for k in range(1, levels):
        for i in range(WIDTH):
            flow.link(tasks[k - 1][i], tasks[k][i])
            flow.link(tasks[k - 1][(i + 1) % WIDTH], tasks[k][i])
    return flow


def graph_mode(kind, levels):
    out = {}
    for workers in (16, WIDTH):
        walls = []
        for _ in range(3):
            flow = graph_flow_of(levels, kind)
            t0 = time.perf_counter()
            engine = taskflow.engines.load(flow, engine="parallel", max_workers=workers)
            engine.run()
            walls.append(time.perf_counter() - t0)
        wall = pct(walls, 0.5)
        out[f"workers_{workers}"] = {
            "wall_s": wall,
            "per_step_ms": wall * 1000 / (levels * WIDTH),
            "walls_s": walls,
        }
    out["tasks"] = levels * WIDTH
    out["kind"] = kind
    out["engine"] = "parallel (threads)"
    out["maxrss_kb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return out


def main():
    what, mode, n, work = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    import logging

    logging.disable(logging.CRITICAL)
    if what == "flow":
        res = flow_mode(mode, n, work)
    elif what == "cancel":
        res = cancel_mode(n)
    elif what == "graph":
        res = graph_mode(mode, n)
    else:
        res = one_mode(n)
    print(json.dumps(res))


if __name__ == "__main__":
    main()
