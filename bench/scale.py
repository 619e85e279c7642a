"""Scale sections of the benchmark (called by bench.py; Python standard library only):

- history: a store holding 1,000,000 finished jobs (a fixture: one finished job copied in SQL,
  not run), against an empty store: `submit` (whole command), `ls` of live jobs, `ls --all
  --limit 50`, `status` (p50 over the rounds), and the daemon's start to its first answer.
- live: 10,000 live jobs on one host (`sleep` tasks, `--max-jobs` as large): the start rate,
  `ls` of them all, the daemon's RSS and descriptors, then `shutdown --cancel` of them all.
- growth: how figures grow with the work: per-step cost at 10 / 100 / 1000 tasks per job,
  throughput at `--max-jobs` 2 / 8 / 32, and memory per live job (from the live section).

Quick mode (CI smoke) shrinks every count; it asserts nothing about time.
"""

import json
import os
import resource
import sqlite3
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import bench as B


def timed(argv):
    """Wall time (ms) of one whole command, and its completed process."""
    t0 = B.now()
    r = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    return B.ms(B.now() - t0), r


def ratio_text(full, empty):
    """`full` p50 as a change from `empty`'s, with its verdict against 10%."""
    change = full["p50"] / empty["p50"] - 1
    return f"{change:+.0%} ({'met' if change <= 0.10 else '**missed**'})"


class Scale:
    def __init__(self, b):
        self.b = b
        self.sv = b.sv
        self.work = b.work
        self.quick = b.quick
        self.r = b.r.setdefault("scale", {})

    # -- a store of a million finished jobs -----------------------------------------------------
    def history(self):
        count = self.b.n(1_000_000, 20_000)
        rounds = self.b.n(50, 10)
        self.b.note_load("history")
        out = {"count": count, "rounds": rounds}
        stores = {"empty": self.history_store("hist-empty", 0), "full": self.history_store("hist-full", count)}
        try:
            # Both daemons run throughout and their rounds alternate (empty, full, empty, ...), so
            # that a change of the machine's load falls on both sides alike.
            for _ in range(rounds):
                for store in stores.values():
                    self.history_round(store)
        finally:
            for store in stores.values():
                for job in store["live"]:
                    store["daemon"].cli("cancel", job)
                store["daemon"].stop()
        for key, store in stores.items():
            out[key] = {k: v for k, v in store.items() if k not in ("daemon", "live", "state", "template", "trivial", "times")}
            out[key].update({k: B.summary(v) for k, v in store["times"].items()})
        self.r["history"] = out

    def history_store(self, name, fill):
        """A daemon on a store of `fill` finished jobs, with 5 live `sleep` jobs."""
        state = os.path.join(self.work, name)
        trivial = self.b.jobfile("hist-true", '[[task]]\nname = "t"\nrun = "true"\n')
        sleeper = self.b.jobfile("hist-sleep", '[[task]]\nname = "t"\nrun = "exec sleep 600"\n')
        d = self.b.daemon(name, 8)
        template = d.submit(trivial)
        d.wait_terminal(template)
        d.cli("shutdown")
        d.proc.wait(timeout=60)
        d.stop()
        fill_seconds = 0.0
        if fill:
            t0 = time.time()
            fill_history(os.path.join(state, "state.db"), template, fill)
            fill_seconds = time.time() - t0
            B.log(f"history: {fill} finished jobs copied into the store in {fill_seconds:.1f} s")
        size_mb = sum(os.path.getsize(os.path.join(state, f)) for f in os.listdir(state)
                      if f.startswith("state.db")) / 1e6
        t0 = B.now()
        d = B.Daemon(self.sv, state, 8, os.path.join(self.work, name + "-2.log"))
        start_ms = (B.now() - t0) / B.NS
        store = {"jobs": fill + 1, "store_mb": size_mb, "fill_seconds": fill_seconds, "daemon_start_ms": start_ms,
                 "daemon": d, "state": state, "template": template, "trivial": trivial, "live": [],
                 "times": {"submit": [], "ls_live": [], "ls_all_50": [], "status": []}}
        try:
            store["live"] = [d.submit(sleeper) for _ in range(5)]
            for job in store["live"]:
                d.wait_event(job, "running", any_task=True)
        except BaseException:
            d.stop()
            raise
        return store

    def history_round(self, store):
        """One round of the everyday commands on one store: submit (to its job's end), ls, status."""
        sv, state, times = self.sv, store["state"], store["times"]
        t, r = timed([sv, "submit", store["trivial"], "--state-dir", state])
        times["submit"].append(t)
        store["daemon"].wait_terminal(r.stdout.strip())
        times["ls_live"].append(timed([sv, "ls", "--state-dir", state])[0])
        times["ls_all_50"].append(timed([sv, "ls", "--all", "--limit", "50", "--state-dir", state])[0])
        times["status"].append(timed([sv, "status", store["template"], "--state-dir", state])[0])

    # -- ten thousand live jobs -----------------------------------------------------------------
    def live(self):
        wanted = self.b.n(10_000, 200)
        # The daemon allows (hard RLIMIT_NOFILE - 256) / 2 live jobs (supervisor/src/daemon/fd_limit.rs).
        # As root the harness raises the hard limit its daemon inherits to what `wanted` needs
        # (as an operator would with systemd's LimitNOFILE=), and puts it back after.
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        out = {"wanted": wanted}
        if 2 * wanted + 256 > hard:
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (soft, 2 * wanted + 256))
                out["fd_hard_raised"] = {"from": hard, "to": 2 * wanted + 256}
            except (OSError, ValueError) as err:
                out["fd_hard_note"] = f"the harness cannot raise it ({err}; it needs CAP_SYS_RESOURCE)"
        try:
            self.live_jobs(wanted, out)
        finally:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        self.r["live"] = out

    def live_jobs(self, wanted, out):
        allowed = (resource.getrlimit(resource.RLIMIT_NOFILE)[1] - 256) // 2
        count = min(wanted, allowed)
        self.b.note_load("live")
        out.update({"count": count, "fd_allowed": allowed})
        needed = 3 * count + 2000  # conductor, sh, sleep per job, and the rest of the machine
        with open("/proc/sys/kernel/pid_max") as f:
            pid_max = int(f.read())
        if pid_max < needed:
            try:
                with open("/proc/sys/kernel/pid_max", "w") as f:
                    f.write(str(4 * count + 10_000))
                out["pid_max_raised"] = {"from": pid_max, "to": 4 * count + 10_000}
            except OSError as err:
                out["pid_max_note"] = f"pid_max {pid_max} < {needed} and cannot be raised: {err}"
        plain = self.b.jobfile("live-sleep", '[[task]]\nname = "t"\nrun = "exec sleep 3600"\n')
        d = self.b.daemon("live", count + 10)
        try:
            time.sleep(0.3)
            st = B.proc_status(d.pid)
            out["daemon_idle_rss_kb"] = B.kb(st, "VmRSS")
            t0 = B.now()
            with ThreadPoolExecutor(8) as pool:
                submitted = list(pool.map(lambda _: d.submit(plain), range(count)))
            submit_s = (B.now() - t0) / 1e9
            out["submitted"] = len(set(submitted))
            # Counted by the event reader as they arrive (a scan of every job per event would
            # cost the harness O(jobs^2) and slow the daemon it shares two CPUs with).
            last = d.wait_task_running_count(count, 900)
            if last is None:
                raise TimeoutError(f"{count} live jobs did not all start")
            started_s = (last - t0) / 1e9
            B.log(f"live: {count} jobs running {started_s:.1f} s after the first submit")
            time.sleep(1.0)
            st = B.proc_status(d.pid)
            ls_ms, r = timed([self.sv, "ls", "--json", "--state-dir", d.dir])
            listed = len(json.loads(r.stdout)) if r.returncode == 0 else -1
            conductors = B.children(d.pid)
            sample = conductors[:: max(1, len(conductors) // 100)]
            rss = [B.kb(B.proc_status(c) or {}, "VmRSS") for c in sample]
            pss = [B.pss_kb(c) for c in sample]
            out.update({
                "submit_seconds": submit_s, "started_seconds": started_s,
                "start_rate_per_s": count / started_s,
                "daemon_rss_kb": B.kb(st, "VmRSS"), "daemon_anon_kb": B.kb(st, "RssAnon"),
                "daemon_threads": int(st["Threads"]), "daemon_fds": len(os.listdir(f"/proc/{d.pid}/fd")),
                "fd_limit": nofile_limit(d.pid), "conductors": len(conductors),
                "conductor_rss_avg_kb": sum(rss) / max(1, len(rss)),
                "conductor_pss_avg_kb": sum(pss) / max(1, len(pss)),
                "ls_all_live_ms": ls_ms, "ls_listed": listed,
            })
            B.log(f"live: daemon RSS {out['daemon_rss_kb']} kB, {out['daemon_fds']} descriptors; ls {ls_ms:.0f} ms")
            t0 = B.now()
            r = subprocess.run([self.sv, "shutdown", "--cancel", "--state-dir", d.dir], capture_output=True, text=True, timeout=900)
            d.proc.wait(timeout=900)
            out["shutdown_cancel_seconds"] = (B.now() - t0) / 1e9
            out["shutdown_exit"] = r.returncode
            out["left_behind"] = sum(1 for c in conductors if B.alive(c))
        finally:
            d.stop()

    # -- how each figure grows ------------------------------------------------------------------
    def growth(self):
        self.b.note_load("growth")
        out = {"per_step": {}, "throughput": {}}
        state = os.path.join(self.work, "growth-run")
        for tasks in self.b.n([10, 100, 1000], [10, 100]):
            body = "".join(f'[[task]]\nname = "t{i}"\nrun = "true"\n' for i in range(tasks))
            many = self.b.jobfile(f"growth-{tasks}", body)
            one = self.b.jobfile("growth-1", '[[task]]\nname = "t0"\nrun = "true"\n')
            rounds = self.b.n(5, 2)
            t_many = [timed([self.sv, "run", many, "--state-dir", state])[0] for _ in range(rounds)]
            t_one = [timed([self.sv, "run", one, "--state-dir", state])[0] for _ in range(rounds)]
            floor = B.pct(B.floor_spawn(["/bin/sh", "-c", "true"], 20)[0], 0.5)
            per_step = (B.pct(t_many, 0.5) - B.pct(t_one, 0.5)) / (tasks - 1)
            out["per_step"][tasks] = {"per_step_ms": per_step, "sh_spawn_ms": floor,
                                      "beyond_spawn_ms": per_step - floor}
        trivial = self.b.jobfile("growth-true", '[[task]]\nname = "t"\nrun = "true"\n')
        jobs = self.b.n(600, 100)
        for max_jobs in self.b.n([2, 8, 32], [2, 8]):
            d = self.b.daemon(f"growth-mj{max_jobs}", max_jobs)
            try:
                base = d.terminal_count
                cpu0 = B.cpu_seconds(d.pid)[0]
                t0 = B.now()
                with ThreadPoolExecutor(8) as pool:
                    list(pool.map(lambda _: d.submit(trivial), range(jobs)))
                if not d.wait_terminal_count(base + jobs, 300):
                    raise TimeoutError(f"throughput at --max-jobs {max_jobs}: not all {jobs} jobs ended")
                secs = (B.now() - t0) / 1e9
                cpu = B.cpu_seconds(d.pid)[0] - cpu0
                out["throughput"][max_jobs] = {"jobs": jobs, "jobs_per_s": jobs / secs,
                                               "daemon_cpu_ms_per_job": cpu * 1000 / jobs}
            finally:
                d.stop()
        self.r["growth"] = out


def fill_history(db, template, count):
    """Copies the finished job `template` (and its tasks) `count` times in one transaction, with
    fresh ids and submission order after every existing job (as tests/tests/scale.rs does)."""
    conn = sqlite3.connect(db, timeout=30)
    try:
        with conn:
            conn.execute(
                """WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?2)
                   INSERT INTO jobs (id, seq, name, source, spec, state, reason, created_ms, started_ms,
                                     ended_ms, containment, last_report)
                   SELECT printf('%08x', 268435456 + n.i), (SELECT MAX(seq) FROM jobs) + n.i,
                          'history-' || n.i, j.source, j.spec, j.state, j.reason, j.created_ms,
                          j.started_ms, j.ended_ms, j.containment, j.last_report
                   FROM n, jobs j WHERE j.id = ?1""", (template, count))
            conn.execute(
                """INSERT INTO tasks (job_id, idx, name, has_revert, state, attempts, exec_outcome,
                                      result, error, started_ms, ended_ms)
                   SELECT j.id, t.idx, t.name, t.has_revert, t.state, t.attempts, t.exec_outcome,
                          t.result, t.error, t.started_ms, t.ended_ms
                   FROM jobs j, tasks t WHERE j.name LIKE 'history-%' AND t.job_id = ?1""", (template,))
    finally:
        conn.close()


def nofile_limit(pid):
    with open(f"/proc/{pid}/limits") as f:
        for line in f:
            if line.startswith("Max open files"):
                return int(line.split()[3])
    return None


def run(b, sections):
    s = Scale(b)
    for name in ("history", "live", "growth"):
        if name in sections:
            B.log(f"scale: {name}")
            getattr(s, name)()


def report(r):
    """The Markdown of the scale sections, or "" when none ran."""
    s = r.get("scale") or {}
    lines = []
    h = s.get("history")
    if h:
        e, f = h["empty"], h["full"]
        cli = (r.get("floors", {}).get("sv_version") or {}).get("p50", 0.0)
        lines += ["### A store of many finished jobs", "",
                  f"{h['count']:,} finished jobs copied into the store with SQL (the fixture; "
                  f"{f['fill_seconds']:.0f} s, store {f['store_mb']:.0f} MB), against an empty store; "
                  f"whole commands, p50 / p95 / max over {h['rounds']} rounds, the two stores' rounds alternating, 5 live `sleep` jobs on each throughout. "
                  f"The targets are judged on the p50 after the CLI's own start ({B.fmt(cli)} ms, "
                  "`supervisor --version`, same run).", "",
                  "| figure | empty store | full store | full, after the CLI's start | target |", "|---|---|---|---|---|"]
        lines.append(f"| `submit` | {B.trio(e['submit'])} | {B.trio(f['submit'])} | {B.fmt(f['submit']['p50'] - cli)} "
                     f"| within 10% of empty: {ratio_text(f['submit'], e['submit'])} |")
        for key, name, target in (("ls_live", "`ls` (live jobs)", 5), ("ls_all_50", "`ls --all --limit 50`", 20), ("status", "`status`", 3)):
            net = f[key]["p50"] - cli
            verdict = "met" if net < target else "**missed**"
            lines.append(f"| {name} | {B.trio(e[key])} | {B.trio(f[key])} | {B.fmt(net)} | p50 < {target} ms: {verdict} |")
        verdict = "met" if f["daemon_start_ms"] < 1000 else "**missed**"
        lines.append(f"| daemon start to first answer | {e['daemon_start_ms']:.0f} | {f['daemon_start_ms']:.0f} | | < 1000 ms: {verdict} |")
        lines.append("")
    lv = s.get("live")
    if lv:
        rss_mb = lv["daemon_rss_kb"] / 1024
        lines += ["### Live jobs on one host", "",
                  f"{lv['count']:,} jobs each running `exec sleep 3600`, submitted by 8 clients at once, `--max-jobs` {lv['count'] + 10}.", "",
                  "| figure | value |", "|---|---|",
                  f"| all submitted (8 `submit` CLIs at once) | {lv['submit_seconds']:.1f} s ({lv['count'] / lv['submit_seconds']:.0f} jobs/s) |",
                  f"| all running, from the first submit | {lv['started_seconds']:.1f} s ({lv['start_rate_per_s']:.0f} jobs/s) |",
                  f"| daemon RSS with all running (target < 120 MB) | {rss_mb:.1f} MB ({'met' if rss_mb < 120 else '**missed**'}); idle {lv['daemon_idle_rss_kb'] / 1024:.1f} MB |",
                  f"| memory per live job in the daemon | {(lv['daemon_rss_kb'] - lv['daemon_idle_rss_kb']) / lv['count']:.1f} kB |",
                  f"| daemon descriptors / its limit | {lv['daemon_fds']:,} / {lv['fd_limit']:,} |",
                  f"| conductor, average of 100 (RSS / PSS) | {lv['conductor_rss_avg_kb'] / 1024:.2f} MB / {lv['conductor_pss_avg_kb'] / 1024:.2f} MB |",
                  f"| `ls --json` of all {lv['ls_listed']:,} | {lv['ls_all_live_ms']:.0f} ms |",
                  f"| `shutdown --cancel` of all | {lv['shutdown_cancel_seconds']:.1f} s (exit {lv['shutdown_exit']}; conductors left: {lv['left_behind']}) |"]
        if lv.get("wanted", lv["count"]) > lv["count"]:
            lines.append(f"| note | {lv['wanted']:,} wanted; the hard open files limit here ({lv['fd_limit']:,}) allows "
                         f"{lv['fd_allowed']:,} live jobs at two descriptors each (README, How many live jobs)"
                         + (f"; {lv['fd_hard_note']}" if lv.get("fd_hard_note") else "") + " |")
        if lv.get("fd_hard_raised"):
            fr = lv["fd_hard_raised"]
            lines.append(f"| note | the hard open files limit raised from {fr['from']:,} to {fr['to']:,} for the daemon "
                         "(the harness runs as root; an operator would set systemd's LimitNOFILE=) |")
        if lv.get("pid_max_raised"):
            pm = lv["pid_max_raised"]
            lines.append(f"| note | `kernel.pid_max` raised from {pm['from']} to {pm['to']} for the run (3 processes a job) |")
        lines.append("")
    g = s.get("growth")
    if g:
        lines += ["### How the figures grow with the work", "",
                  "Per step of a `supervisor run` of N `true` tasks: (N-task run - one-task run) / (N - 1), p50 of the runs, "
                  "next to a `/bin/sh -c true` spawn measured alongside.", "",
                  "| tasks per job | per step | sh spawn | beyond the spawn |", "|---|---|---|---|"]
        for tasks, v in sorted(g["per_step"].items(), key=lambda kv: int(kv[0])):
            lines.append(f"| {tasks} | {v['per_step_ms']:.2f} ms | {v['sh_spawn_ms']:.2f} ms | {v['beyond_spawn_ms']:.2f} ms |")
        lines += ["", "Throughput of trivial jobs (8 clients submitting, until every job ended):", "",
                  "| `--max-jobs` | jobs | jobs/s | daemon CPU per job |", "|---|---|---|---|"]
        for mj, v in sorted(g["throughput"].items(), key=lambda kv: int(kv[0])):
            lines.append(f"| {mj} | {v['jobs']} | {v['jobs_per_s']:.0f} | {v['daemon_cpu_ms_per_job']:.2f} ms |")
        lines.append("")
    if not lines:
        return ""
    return "\n".join(["## Scale", ""] + lines)
