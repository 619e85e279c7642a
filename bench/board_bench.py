#!/usr/bin/env python3
"""Board benchmark (issue 11): three daemons on one PostgreSQL on this machine, against one
daemon on SQLite alone. Python 3 standard library only; needs root (the server runs as the
`postgres` user, as tests/src/postgres.rs does) and Debian's PostgreSQL server binaries.

    python3 bench/board_bench.py [--sv target/release/supervisor] [--rounds 100]
                                 [--jobs 600] [--lease 3s] [--out FILE]

Figures (medians over --rounds unless said; every interval on CLOCK_MONOTONIC in this process):

- submit to first task running, on a board daemon and on a plain one (the task writes to a FIFO
  this process polls, as bench.py's `spawn` row), and on a plain one whose store is in this
  PostgreSQL (`daemon --store`, when the build knows it);
- throughput of trivial (`true`) jobs: --jobs jobs submitted by 6 CLIs spread over the three
  hosts (`--max-jobs 8` each), first submit to last end; and what PostgreSQL did meanwhile
  (commits per second from pg_stat_database, and the server processes' CPU seconds); the same
  on the plain daemon, and on the plain daemon with its store in PostgreSQL;
- cancel from a host that does not own the job: `cancel` sent through host b for a job running
  on host a (a `sleep` task with a `true` revert) until a's own event stream shows `cancelled`;
  the same from a itself; and the whole `cancel --wait` command from b;
- `status` of a job running on host a: the whole command on a, and through host b (which
  asks a through the board for the job's whole status);
- host death (only when the build knows `on_host_loss`): SIGKILL of daemon a and its conductors
  under a job with `on_host_loss = "revert"`, until its revert (which writes to a FIFO) starts
  on another host.

Prints one JSON object (and writes it to --out).
"""

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402
from bench import Daemon, Fifo, ms, now, summary  # noqa: E402

PG_USER = "postgres"


def pg_bin():
    root = "/usr/lib/postgresql"
    versions = sorted((d for d in os.listdir(root) if d.isdigit()), key=int) if os.path.isdir(root) else []
    if not versions:
        sys.exit("board_bench: no PostgreSQL server under /usr/lib/postgresql/*/bin")
    return os.path.join(root, versions[-1], "bin")


class Postgres:
    """One server in a temp dir, Unix socket only, run as the postgres user."""

    def __init__(self, work):
        self.bin = pg_bin()
        self.dir = os.path.join(work, "pg")
        os.makedirs(self.dir)
        shutil.chown(self.dir, PG_USER, PG_USER)
        self.data = os.path.join(self.dir, "data")
        self.as_pg(["initdb", "-D", self.data, "-A", "trust", "-U", "postgres", "--no-sync"])
        self.as_pg(["pg_ctl", "start", "-w", "-D", self.data, "-l", os.path.join(self.dir, "log"),
                    "-o", f"-c listen_addresses= -k {self.dir} -c max_connections=200"])
        self.as_pg(["createdb", "-h", self.dir, "-U", "postgres", "board"])
        self.url = f"postgresql://postgres@/board?host={self.dir}"

    def as_pg(self, argv):
        cmd = ["runuser", "-u", PG_USER, "--", os.path.join(self.bin, argv[0]), *argv[1:]]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def sql(self, query):
        cmd = ["runuser", "-u", PG_USER, "--", os.path.join(self.bin, "psql"), "-h", self.dir,
               "-U", "postgres", "-d", "board", "-AtX", "-c", query]
        return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip()

    def commits(self):
        return int(self.sql("SELECT xact_commit FROM pg_stat_database WHERE datname = 'board'"))

    def cpu_seconds(self):
        """CPU seconds (user + system) of the postmaster and its backends."""
        with open(os.path.join(self.data, "postmaster.pid")) as f:
            postmaster = int(f.readline())
        return sum(bench.cpu_seconds(p)[0] for p in [postmaster, *bench.children(postmaster)])

    def stop(self):
        subprocess.run(["runuser", "-u", PG_USER, "--", os.path.join(self.bin, "pg_ctl"), "stop",
                        "-m", "immediate", "-D", self.data], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def board_daemon(sv, work, name, pg, lease, max_jobs):
    extra = ("--board", pg.url, "--host", name, "--lease", lease)
    return Daemon(sv, os.path.join(work, name), max_jobs, os.path.join(work, f"{name}.log"), extra)


def jobfile(work, name, text):
    path = os.path.join(work, f"{name}.toml")
    with open(path, "w") as f:
        f.write(f'name = "{name}"\n' + text)
    return path


def first_task(sv, d, job, fifo, rounds):
    """Submit to first task running on daemon d, `rounds` times."""
    out = []
    for _ in range(rounds):
        fifo.arm()
        t0 = now()
        p = subprocess.Popen([sv, "submit", job, "--state-dir", d.dir], stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
        t1 = fifo.wait()
        stdout, _ = p.communicate()
        d.wait_terminal(stdout.decode().strip())
        out.append(ms(t1 - t0))
    fifo.close()
    return summary(out)


def throughput(sv, daemons, job, count, pg):
    """`count` trivial jobs over the daemons by 6 submitting threads; jobs/s and PostgreSQL's load."""
    before = [d.terminal_count for d in daemons]
    commits0, cpu0 = pg.commits(), pg.cpu_seconds()
    t0 = now()
    errors = []

    def submitter(k):
        for i in range(k, count, 6):
            d = daemons[i % len(daemons)]
            r = d.cli("submit", job, check=False)
            if r.returncode != 0:
                errors.append(r.stderr.strip())

    threads = [threading.Thread(target=submitter, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # A job may end on another host than the one it was submitted to (a host without a free
    # slot leaves it to be claimed): count the ends on all of them.
    deadline = time.time() + 300
    while sum(d.terminal_count for d in daemons) - sum(before) < count:
        if time.time() > deadline:
            raise TimeoutError("the jobs did not all end")
        daemons[0].wait_terminal_count(daemons[0].terminal_count + 1, 0.01)
    elapsed = (now() - t0) / 1e9
    return {
        "jobs": count,
        "seconds": round(elapsed, 3),
        "jobs_per_s": round(count / elapsed, 1),
        "submit_errors": len(errors),
        "pg_commits_per_s": round((pg.commits() - commits0) / elapsed, 1),
        "pg_cpu_s": round(pg.cpu_seconds() - cpu0, 2),
    }


def cancel_latency(sv, owner, via, job, fifo, rounds):
    """Cancel sent through `via` of a job running on `owner`, until the owner's stream shows
    `cancelled`; and the whole `cancel --wait` command through `via`."""
    seen, whole = [], []
    for i in range(rounds):
        fifo.arm()
        jid = owner.submit(job)
        fifo.wait()
        owner.wait_event(jid, "running", task="t")
        wait = i % 2 == 1
        t0 = now()
        r = subprocess.run([sv, "cancel", jid, *(["--wait"] if wait else []), "--state-dir", via.dir],
                           stdin=subprocess.DEVNULL, capture_output=True, text=True)
        t2 = now()
        t1, state = owner.wait_terminal(jid)
        if state != "cancelled":
            raise RuntimeError(f"job {jid} ended {state}: {r.stderr}")
        if wait:
            whole.append(ms(t2 - t0))
        else:
            seen.append(ms(t1 - t0))
    fifo.close()
    return {"to_cancelled_seen_by_owner": summary(seen), "cancel_wait_command": summary(whole)}


def status_latency(sv, owner, via, job, fifo, rounds):
    """The whole `status JOB` command through `via`, of a job running on `owner` (through
    another host: asked of the owner through the board, protocol 9)."""
    fifo.arm()
    jid = owner.submit(job)
    fifo.wait()
    owner.wait_event(jid, "running", task="t")
    out = []
    for _ in range(rounds):
        t0 = now()
        r = subprocess.run([sv, "status", jid, "--state-dir", via.dir],
                           stdin=subprocess.DEVNULL, capture_output=True, text=True)
        t1 = now()
        if r.returncode != 0:
            raise RuntimeError(f"status {jid}: {r.stderr}")
        out.append(ms(t1 - t0))
    subprocess.run([sv, "kill", jid, "--state-dir", owner.dir], capture_output=True)
    owner.wait_terminal(jid)
    return summary(out)


def knows_store(sv):
    """Whether this build has `daemon --store` (the store in PostgreSQL)."""
    r = subprocess.run([sv, "daemon", "--help"], capture_output=True, text=True)
    return "--store" in r.stdout


def knows_on_host_loss(sv, work):
    path = jobfile(work, "probe", 'on_host_loss = "revert"\n[[task]]\nname = "t"\nrun = "true"\n')
    return subprocess.run([sv, "validate", path], capture_output=True).returncode == 0


def host_death(sv, work, pg, lease, rounds):
    """SIGKILL of host a (daemon and conductors) under a running job with on_host_loss =
    "revert", until its revert starts elsewhere; a fresh trio of daemons per round."""
    out = []
    for r in range(rounds):
        fifo = Fifo(os.path.join(work, f"death{r}.fifo"))
        started = Fifo(os.path.join(work, f"started{r}.fifo"))
        job = jobfile(work, f"death{r}", 'on_host_loss = "revert"\n[[task]]\nname = "t"\n'
                      f'run = "echo > {started.path}; sleep 600"\nrevert = "echo > {fifo.path}"\n')
        ds = [board_daemon(sv, os.path.join(work, f"r{r}"), n, pg, lease, 8) for n in "abc"]
        a = ds[0]
        started.arm()
        a.submit(job)
        started.wait()
        fifo.arm()
        victims = [a.pid, *bench.children(a.pid)]
        victims += [p for c in bench.children(a.pid) for p in bench.session_members(c)]
        t0 = now()
        for p in victims:
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
        a.proc.wait()
        bench.LIVE_DAEMONS.remove(a)
        t1 = fifo.wait(timeout_s=60)
        out.append(ms(t1 - t0))
        for d in ds[1:]:
            d.stop()
        started.close()
        fifo.close()
    return summary(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sv", default="target/release/supervisor")
    ap.add_argument("--rounds", type=int, default=100)
    ap.add_argument("--jobs", type=int, default=600)
    ap.add_argument("--lease", default="3s")
    ap.add_argument("--death-rounds", type=int, default=3)
    ap.add_argument("--out")
    args = ap.parse_args()
    sv = os.path.abspath(args.sv)
    work = tempfile.mkdtemp(prefix="svbb-", dir="/tmp")
    os.chmod(work, 0o755)
    pg = Postgres(work)
    result = {"lease": args.lease, "load_before": os.getloadavg()}
    try:
        fifo = Fifo(os.path.join(work, "t.fifo"))
        first = jobfile(work, "first", f'[[task]]\nname = "t"\nrun = "echo > {fifo.path}"\n')
        plain = Daemon(sv, os.path.join(work, "plain"), 8, os.path.join(work, "plain.log"))
        ds = [board_daemon(sv, work, n, pg, args.lease, 8) for n in "abc"]
        a, b = ds[0], ds[1]
        bench.log("submit to first task running")
        result["first_task_plain"] = first_task(sv, plain, first, fifo, args.rounds)
        result["first_task_board"] = first_task(sv, a, first, fifo, args.rounds)
        bench.log("throughput")
        true_job = jobfile(work, "true", '[[task]]\nname = "t"\nrun = "true"\n')
        result["throughput_plain"] = throughput(sv, [plain], true_job, args.jobs, pg)
        result["throughput_board"] = throughput(sv, ds, true_job, args.jobs, pg)
        plain.stop()
        if knows_store(sv):
            bench.log("a plain daemon with its store in PostgreSQL")
            on_pg = Daemon(sv, os.path.join(work, "pgstore"), 8, os.path.join(work, "pgstore.log"),
                           ("--store", pg.url))
            result["first_task_pg_store"] = first_task(sv, on_pg, first, fifo, args.rounds)
            result["throughput_pg_store"] = throughput(sv, [on_pg], true_job, args.jobs, pg)
            on_pg.stop()
        bench.log("cancel")
        cancel = jobfile(work, "cancel", f'[[task]]\nname = "t"\nrun = "echo > {fifo.path}; sleep 600"\nrevert = "true"\n')
        result["cancel_from_owner"] = cancel_latency(sv, a, a, cancel, fifo, args.rounds // 2)
        result["cancel_from_other_host"] = cancel_latency(sv, a, b, cancel, fifo, args.rounds // 2)
        bench.log("status")
        result["status_on_owner"] = status_latency(sv, a, a, cancel, fifo, args.rounds)
        result["status_from_other_host"] = status_latency(sv, a, b, cancel, fifo, args.rounds)
        for d in ds:
            d.stop()
        if knows_on_host_loss(sv, work):
            bench.log("host death")
            result["host_death_to_revert"] = host_death(sv, work, pg, args.lease, args.death_rounds)
        result["load_after"] = os.getloadavg()
    finally:
        for d in list(bench.LIVE_DAEMONS):
            d.stop()
        pg.stop()
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
