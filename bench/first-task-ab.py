#!/usr/bin/env python3
"""Submit to first task running, for several builds side by side (A/B), rounds interleaved.

    bench/first-task-ab.py ROUNDS BINDIR_A BINDIR_B [BINDIR_C ...]

Each BINDIR holds `supervisor` and `conductor-worker` (e.g. two copies of target/release). One
daemon per build (default flags: warm pool, cgroup containment where the host allows it); each
round submits, for every build in turn, a one-task job whose task writes into a FIFO, and times
`supervisor submit` spawned to that write (the task running) and to the CLI's exit. Prints p50
and p25 per build. A build's figures move with the machine's load: compare only builds measured
in one run, interleaved as here. Standard library only.
"""
import os
import statistics
import subprocess
import sys
import tempfile
import time


def main():
    rounds, dirs = int(sys.argv[1]), sys.argv[2:]
    builds = {chr(65 + i): d for i, d in enumerate(dirs)}
    daemons = {}
    try:
        for name, bindir in builds.items():
            work = tempfile.mkdtemp(prefix="/tmp/ftab.")
            fifo = os.path.join(work, "f")
            os.mkfifo(fifo)
            job = os.path.join(work, "j.toml")
            with open(job, "w") as f:
                f.write(f'[[task]]\nname = "t"\nrun = "echo x > {fifo}"\n')
            state = os.path.join(work, "s")
            proc = subprocess.Popen([os.path.join(bindir, "supervisor"), "daemon", "--state-dir", state],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            daemons[name] = (bindir, state, proc, fifo, job)
            deadline = time.monotonic() + 10
            while not os.path.exists(os.path.join(state, "control.sock")):
                if time.monotonic() > deadline or proc.poll() is not None:
                    sys.exit(f"{bindir}: the daemon did not start")
                time.sleep(0.01)
        first = {name: [] for name in builds}
        cli = {name: [] for name in builds}
        for _ in range(rounds):
            for name, (bindir, state, _, fifo, job) in daemons.items():
                t0 = time.perf_counter()
                submit = subprocess.Popen([os.path.join(bindir, "supervisor"), "submit", "--state-dir", state, job],
                                          stdout=subprocess.DEVNULL)
                fd = os.open(fifo, os.O_RDONLY)  # returns once the task opens the FIFO to write
                t1 = time.perf_counter()
                os.read(fd, 16)
                os.close(fd)
                submit.wait()
                t2 = time.perf_counter()
                first[name].append((t1 - t0) * 1000)
                cli[name].append((t2 - t0) * 1000)
                time.sleep(0.005)  # the job ends (reaped, stored) before the next build's round
        for name, bindir in builds.items():
            print(f"{name} {bindir}: first task p50 {statistics.median(first[name]):.3f} ms, "
                  f"p25 {statistics.quantiles(first[name], n=4)[0]:.3f}; submit CLI p50 {statistics.median(cli[name]):.3f} ms")
    finally:
        for bindir, state, proc, _, _ in daemons.values():
            subprocess.run([os.path.join(bindir, "supervisor"), "shutdown", "--state-dir", state], capture_output=True)
            proc.wait()


if __name__ == "__main__":
    main()
