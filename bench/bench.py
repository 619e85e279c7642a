#!/usr/bin/env python3
"""The supervisor's benchmark: latencies, throughput, per-task overhead and memory, each next to
the floor it cannot beat, measured in the same run. Python 3 standard library only.

Called by bench/run.sh, which builds the release binaries and installs the peers; run it directly
only for one section while working on it:

    python3 bench/bench.py --sv target/release/supervisor [--quick] [--only spawn,e2e]

Timing: every interval is CLOCK_MONOTONIC in this process (time.perf_counter_ns), taken
- before the CLI process (submit, cancel, kill) is spawned, and
- when this process sees the effect: a task announces itself by writing to a FIFO this process
  polls (so the task's own start, a /bin/sh, is part of the figure and measured as a floor), or a
  state change arrives on a `supervisor events --json` stream this process reads (arrival time,
  microseconds; the event's own at_ms is milliseconds only and serves as a cross-check).
"""

import argparse
import contextlib
import json
import os
import re
import shlex
import platform
import resource
import select
import shutil
import signal
import socket
import sqlite3
import struct
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor

# bench/scale.py imports this module as `bench`: make that name this very module when it runs as
# a script, so that both share one set of helpers and one list of live daemons.
sys.modules.setdefault("bench", sys.modules[__name__])
import scale  # noqa: E402

NS = 1_000_000  # ns per ms


def now():
    return time.perf_counter_ns()


def ms(ns):
    return ns / NS


def pct(values, q):
    """Nearest-rank percentile of a list of numbers."""
    v = sorted(values)
    if not v:
        return float("nan")
    k = max(0, min(len(v) - 1, int(round(q * len(v) + 0.5)) - 1))
    return v[k]


def summary(values):
    """p50, p95, max, n of a list of milliseconds."""
    return {"p50": pct(values, 0.50), "p95": pct(values, 0.95), "max": max(values) if values else float("nan"), "n": len(values)}


def log(*args):
    print("bench:", *args, file=sys.stderr, flush=True)


def loadavg():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


# ---------------------------------------------------------------------------------------------
# /proc


def proc_status(pid):
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, val = line.partition(":")
                out[key] = val.strip()
    except OSError:
        return None
    return out


def kb(status, key):
    try:
        return int(status[key].split()[0])
    except (KeyError, ValueError, TypeError):
        return 0


def pss_kb(pid):
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


CLK_TCK = os.sysconf("SC_CLK_TCK")


def proc_stat(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except OSError:
        return None
    fields = text[text.rfind(")") + 2 :].split()
    # fields[0] is state (field 3); utime is field 14 -> index 11
    return {
        "state": fields[0],
        "ppid": int(fields[1]),
        "session": int(fields[3]),
        "utime": int(fields[11]),
        "stime": int(fields[12]),
        "cutime": int(fields[13]),
        "cstime": int(fields[14]),
    }


def cpu_seconds(pid):
    """(own utime+stime, reaped children's cutime+cstime) in seconds."""
    s = proc_stat(pid)
    if not s:
        return (0.0, 0.0)
    return ((s["utime"] + s["stime"]) / CLK_TCK, (s["cutime"] + s["cstime"]) / CLK_TCK)


def children(pid):
    out = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out += [int(x) for x in f.read().split()]
    except OSError:
        pass
    return out


def alive(pid):
    s = proc_stat(pid)
    return s is not None and s["state"] not in ("Z", "X")


def session_members(sid):
    out = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            s = proc_stat(int(name))
            if s and s["session"] == sid and s["state"] not in ("Z", "X"):
                out.append(int(name))
    return out


# ---------------------------------------------------------------------------------------------
# FIFO signals from tasks


class Fifo:
    """A FIFO a task writes one line to (`echo > FIFO`); `arm()` before the task can start,
    `wait()` returns the monotonic time at which the write was seen."""

    def __init__(self, path):
        self.path = path
        if not os.path.exists(path):
            os.mkfifo(path)
        self.fd = None

    def arm(self):
        self.close()
        self.fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK)
        self.poller = select.poll()
        self.poller.register(self.fd, select.POLLIN | select.POLLHUP)

    def wait(self, timeout_s=10.0):
        deadline = now() + int(timeout_s * 1e9)
        while True:
            left = (deadline - now()) / NS
            if left <= 0:
                raise TimeoutError(f"no signal on {self.path}")
            if self.poller.poll(left):
                t = now()
                try:
                    os.read(self.fd, 4096)
                except BlockingIOError:
                    pass
                return t

    def close(self):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


# ---------------------------------------------------------------------------------------------
# The daemon, its event stream, and CLI calls


LIVE_DAEMONS = []  # stopped on the way out, whatever happens


class Daemon:
    def __init__(self, sv, state_dir, max_jobs, log_path, extra=()):
        self.sv = sv
        self.dir = state_dir
        os.makedirs(state_dir, exist_ok=True)
        self.log = open(log_path, "ab")
        # SVBENCH_DAEMON_ARGS: extra daemon flags for a comparison run (e.g. "--metrics
        # 127.0.0.1:0" to measure what the metrics cost).
        extra = [*extra, *shlex.split(os.environ.get("SVBENCH_DAEMON_ARGS", ""))]
        self.proc = subprocess.Popen(
            [sv, "daemon", "--state-dir", state_dir, "--max-jobs", str(max_jobs), *extra],
            stdin=subprocess.DEVNULL, stdout=self.log, stderr=self.log,
        )
        deadline = time.time() + 20
        while subprocess.run([sv, "ls", "--state-dir", state_dir], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode != 0:
            if time.time() > deadline or self.proc.poll() is not None:
                raise RuntimeError(f"daemon did not become ready (see {log_path})")
            time.sleep(0.01)
        self.pid = self.proc.pid
        LIVE_DAEMONS.append(self)
        self.cond = threading.Condition()
        self.by_job = {}  # job -> [(t_ns, task, state, at_ms)]
        self.terminal_count = 0
        self.task_running = set()  # jobs whose first task was seen running
        self.task_running_ns = 0  # arrival of the last such event
        self.events = subprocess.Popen(
            [sv, "events", "--json", "--state-dir", state_dir],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=self.log, bufsize=0,
        )
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    TERMINAL = {"success", "reverted", "cancelled", "revert_failed", "killed", "crashed"}

    def _read(self):
        buf = b""
        fd = self.events.stdout.fileno()
        while True:
            chunk = os.read(fd, 65536)
            t = now()
            if not chunk:
                return
            buf += chunk
            *lines, buf = buf.split(b"\n")
            with self.cond:
                for line in lines:
                    if not line.strip():
                        continue
                    ev = json.loads(line)
                    self.by_job.setdefault(ev["job"], []).append((t, ev.get("task"), ev["state"], ev.get("at_ms")))
                    if ev.get("task") is None and ev["state"] in self.TERMINAL:
                        self.terminal_count += 1
                    elif ev.get("task") is not None and ev["state"] == "running" and ev["job"] not in self.task_running:
                        self.task_running.add(ev["job"])
                        self.task_running_ns = t
                self.cond.notify_all()

    def wait_event(self, job, state, task=None, timeout_s=30.0, any_task=False):
        """Arrival time (ns) and at_ms of the first event (job, task, state)."""
        deadline = time.time() + timeout_s
        with self.cond:
            while True:
                for t, tk, st, at in self.by_job.get(job, []):
                    if st == state and (any_task or tk == task):
                        return t, at
                left = deadline - time.time()
                if left <= 0:
                    raise TimeoutError(f"job {job}: no {state} event (task {task}); got {self.by_job.get(job)}")
                self.cond.wait(left)

    def wait_terminal(self, job, timeout_s=30.0):
        deadline = time.time() + timeout_s
        with self.cond:
            while True:
                for t, tk, st, at in self.by_job.get(job, []):
                    if tk is None and st in self.TERMINAL:
                        return t, st
                left = deadline - time.time()
                if left <= 0:
                    raise TimeoutError(f"job {job}: not terminal; got {self.by_job.get(job)}")
                self.cond.wait(left)

    def wait_task_running_count(self, count, timeout_s):
        """Waits until `count` jobs had a task running; the arrival (ns) of the last, or None.
        Counted as the events arrive: a wait over thousands of jobs costs the harness nothing."""
        deadline = time.time() + timeout_s
        with self.cond:
            while len(self.task_running) < count:
                left = deadline - time.time()
                if left <= 0:
                    return None
                self.cond.wait(min(left, 1.0))
            return self.task_running_ns

    def wait_terminal_count(self, count, timeout_s):
        deadline = time.time() + timeout_s
        with self.cond:
            while self.terminal_count < count:
                left = deadline - time.time()
                if left <= 0:
                    return False
                self.cond.wait(min(left, 1.0))
            return True

    def cli(self, *args, check=True):
        r = subprocess.run([self.sv, *args, "--state-dir", self.dir], stdin=subprocess.DEVNULL, capture_output=True, text=True)
        if check and r.returncode != 0:
            raise RuntimeError(f"supervisor {' '.join(args)}: exit {r.returncode}: {r.stderr.strip()}")
        return r

    def submit(self, file):
        return self.cli("submit", file).stdout.strip()

    def status(self, job):
        return json.loads(self.cli("status", job, "--json").stdout)

    def job_transitions(self, job):
        """The job's own transitions as the store recorded them: state -> at_ms (first)."""
        conn = sqlite3.connect(f"file:{os.path.join(self.dir, 'state.db')}?mode=ro", uri=True, timeout=10)
        try:
            rows = conn.execute("SELECT to_state, at_ms FROM transitions WHERE job_id = ? AND task_idx IS NULL ORDER BY id", (job,)).fetchall()
        finally:
            conn.close()
        out = {}
        for state, at in rows:
            out.setdefault(state, at)
        return out

    def live_count(self):
        return len(json.loads(self.cli("ls", "--json").stdout))

    def stop(self):
        """Kill every job tree still alive (conductors and their sessions), then the daemon."""
        if self in LIVE_DAEMONS:
            LIVE_DAEMONS.remove(self)
        conductors = [c for c in children(self.pid)]
        try:
            self.cli("shutdown", "--cancel", check=False)
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for c in conductors:
            for p in session_members(c):
                try:
                    os.kill(p, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        self.events.kill()
        self.events.wait()
        self.log.close()


def write(path, text):
    with open(path, "w") as f:
        f.write(text)
    return path


# ---------------------------------------------------------------------------------------------
# Floors


def spawn_reap(argv, env=None, file_actions=None):
    """Spawns and reaps `argv`: (the wall time in ns, the process's CPU, user + system, in ms
    from its rusage: what its life costs the machine, exec to exit)."""
    t0 = now()
    pid = os.posix_spawn(argv[0], argv, env if env is not None else os.environ, file_actions=file_actions or [])
    _, _, usage = os.wait4(pid, 0)
    return now() - t0, (usage.ru_utime + usage.ru_stime) * 1000


DEVNULL_ACTIONS = [
    (os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0),
    (os.POSIX_SPAWN_OPEN, 1, "/dev/null", os.O_WRONLY, 0),
    (os.POSIX_SPAWN_OPEN, 2, "/dev/null", os.O_WRONLY, 0),
]


def floor_spawn(argv, n, warm=3):
    """`n` spawns and reaps of `argv`: (their wall times, their CPU), in ms."""
    for _ in range(warm):
        spawn_reap(argv, file_actions=DEVNULL_ACTIONS)
    samples = [spawn_reap(argv, file_actions=DEVNULL_ACTIONS) for _ in range(n)]
    return [ms(wall) for wall, _ in samples], [cpu for _, cpu in samples]


def floor_sh_signal(fifo, n, warm=3):
    """/bin/sh -c 'echo > FIFO' spawned directly: spawn to the FIFO write (the task's own start)."""
    out = []
    for i in range(n + warm):
        fifo.arm()
        t0 = now()
        pid = os.posix_spawn("/bin/sh", ["/bin/sh", "-c", f"echo > {fifo.path}"], os.environ, file_actions=DEVNULL_ACTIONS)
        t1 = fifo.wait()
        os.waitpid(pid, 0)
        if i >= warm:
            out.append(ms(t1 - t0))
    fifo.close()
    return out


def frame(body):
    return struct.pack(">I", len(body)) + body


def floor_conductor_handshake(worker, work, n, warm=3):
    """conductor-worker spawned as the supervisor spawns it (new session, listening socket on
    fd 3), then connect + protocol hello + its hello back. Then SIGKILL + reap, timed apart."""
    path = os.path.join(work, "hs.sock")
    job = b"0000beef"
    # postcard: ToConductor::Hello = variant 0, protocol_version varint 1, job_id string
    hello = frame(bytes([0, 1, len(job)]) + job)
    hs, kills = [], []
    for i in range(n + warm):
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        lst = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        lst.bind(path)
        lst.listen(4)
        high = __import__("fcntl").fcntl(lst.fileno(), __import__("fcntl").F_DUPFD_CLOEXEC, 10)
        actions = DEVNULL_ACTIONS + [(os.POSIX_SPAWN_DUP2, high, 3)]
        t0 = now()
        pid = os.posix_spawn(worker, [worker, "--job-id", job.decode(), "--listen-fd", "3"], os.environ, file_actions=actions, setsid=True)
        os.close(high)
        lst.close()
        c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        c.connect(path)
        c.sendall(hello)
        got = b""
        while len(got) < 4:
            chunk = c.recv(4096)
            if not chunk:
                raise RuntimeError("conductor closed during the handshake")
            got += chunk
        need = 4 + struct.unpack(">I", got[:4])[0]
        while len(got) < need:
            got += c.recv(4096)
        t1 = now()
        c.close()
        k0 = now()
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        k1 = now()
        if got[4] != 0:
            raise RuntimeError(f"unexpected handshake reply {got!r}")
        if i >= warm:
            hs.append(ms(t1 - t0))
            kills.append(ms(k1 - k0))
    os.unlink(path)
    return hs, kills


class SqliteFloor:
    """One small INSERT + COMMIT, WAL, synchronous=FULL (what every write-ahead point costs)."""

    def __init__(self, work):
        db = os.path.join(work, "floor.db")
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(db + suffix)
        self.conn = sqlite3.connect(db, isolation_level=None)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=FULL")
        self.conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, job TEXT, state TEXT, at INTEGER)")
        self.i = 0

    def sample(self, n=1):
        out = []
        for _ in range(n):
            self.i += 1
            t0 = now()
            self.conn.execute("BEGIN")
            self.conn.execute("INSERT INTO t (job, state, at) VALUES (?, ?, ?)", ("0000beef", "running", self.i))
            self.conn.execute("COMMIT")
            out.append(ms(now() - t0))
        return out


def unified_cgroup_dir():
    """Our own cgroup in the v2 hierarchy, if one is mounted (as the supervisor finds it)."""
    try:
        with open("/proc/self/mountinfo") as f:
            mount = next((l.split(" - ")[0].split()[4] for l in f if l.split(" - ")[1].split()[0] == "cgroup2"), None)
        with open("/proc/self/cgroup") as f:
            own = next((l.strip()[3:] for l in f if l.startswith("0::")), None)
    except (OSError, IndexError):
        return None
    if not mount or own is None:
        return None
    return os.path.join(mount, own.lstrip("/"))


class CgroupFloor:
    """Moving a fresh process into a fresh cgroup v2 (a write of its pid to cgroup.procs): what
    the conductor does between fork and exec in cgroup containment. None when not writable."""

    def __init__(self):
        self.base = None
        parent = unified_cgroup_dir()
        if parent is None:
            return
        base = os.path.join(parent, f"svbench-{os.getpid()}")
        try:
            os.mkdir(base)
        except OSError:
            return
        self.base = base
        self.i = 0

    def sample(self, n=1):
        out = []
        for _ in range(n):
            self.i += 1
            d = os.path.join(self.base, f"j{self.i}")
            os.mkdir(d)
            pid = os.posix_spawn("/bin/sleep", ["/bin/sleep", "10"], os.environ, file_actions=DEVNULL_ACTIONS)
            t0 = now()
            with open(os.path.join(d, "cgroup.procs"), "w") as f:
                f.write(str(pid))
            out.append(ms(now() - t0))
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            for _ in range(1000):
                try:
                    os.rmdir(d)
                    break
                except OSError:
                    time.sleep(0.001)
        return out

    def close(self):
        if self.base:
            with contextlib.suppress(OSError):
                for name in os.listdir(self.base):
                    if os.path.isdir(os.path.join(self.base, name)):
                        os.rmdir(os.path.join(self.base, name))
                os.rmdir(self.base)
            self.base = None


def proc_scan():
    """One read of every /proc/PID/stat (what a scan for a job's processes costs)."""
    t0 = now()
    count = 0
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat", "rb") as f:
                    f.read()
                count += 1
            except OSError:
                pass
    return ms(now() - t0), count


def iso_ns(text):
    """`2026-11-28T22:35:29.022598Z` (UTC) to ns since the epoch."""
    import datetime

    text = text.rstrip("Z")
    base, _, frac = text.partition(".")
    dt = datetime.datetime.strptime(base, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=datetime.timezone.utc)
    return int(dt.timestamp()) * 1_000_000_000 + int((frac + "000000000")[:9])


def job_log_marks(daemon, job):
    """(ns, 'daemon'|'conductor', message, phase) of one job, from the daemon's log (text) and the
    job's conductor log (JSON lines): the product's own timestamps (wall clock, microseconds)."""
    marks = []
    with contextlib.suppress(OSError):
        with open(daemon.log.name, errors="replace") as f:
            for line in f:
                if f"job_id={job}" not in line:
                    continue
                parts = line.split(None, 2)
                if len(parts) < 3 or not parts[0].endswith("Z"):
                    continue
                msg = parts[2]
                # A span prefix (`job{job_id=...}: `) comes before the message; fields after it.
                if msg.startswith("job{") and "}: " in msg:
                    msg = msg.split("}: ", 1)[1]
                msg = re.split(r" \w+=", msg, maxsplit=1)[0].strip()
                marks.append((iso_ns(parts[0]), "daemon", msg, None))
    with contextlib.suppress(OSError):
        with open(os.path.join(daemon.dir, "logs", f"{job}.log"), errors="replace") as f:
            for line in f:
                with contextlib.suppress(ValueError, KeyError):
                    obj = json.loads(line)
                    marks.append((iso_ns(obj["timestamp"]), "conductor", obj["fields"].get("message", ""), (obj.get("span") or {}).get("phase")))
    marks.sort()
    return marks


def phase_table(daemon, starts, steps):
    """Median and p95 of the intervals between consecutive `steps` ((label, source, message,
    phase)) over the jobs in `starts` (job -> wall-clock ns just before the CLI was spawned)."""
    labels = ["CLI spawned"] + [s[0] for s in steps]
    spans = {i: [] for i in range(len(steps))}
    for job, t0 in starts.items():
        marks = job_log_marks(daemon, job)
        prev = t0
        for i, (_, source, message, phase) in enumerate(steps):
            t = next((m[0] for m in marks if m[0] >= prev - 2_000_000 and m[1] == source and m[2] == message and (phase is None or m[3] == phase)), None)
            if t is None:
                break
            spans[i].append(ms(t - prev))
            prev = t
    out = []
    for i in range(len(steps)):
        if spans[i]:
            out.append({"from": labels[i], "to": labels[i + 1], "p50": pct(spans[i], 0.5), "p95": pct(spans[i], 0.95), "n": len(spans[i])})
    return out


E2E_STEPS = [
    ("daemon: job submitted (stored)", "daemon", "job submitted", None),
    ("daemon: conductor started (spawned)", "daemon", "conductor started", None),
    ("conductor: supervisor connected", "conductor", "supervisor connected", None),
    ("conductor: job received (plan)", "conductor", "job received", None),
    ("conductor: step started (write-ahead acked, task spawned)", "conductor", "step started", "execute"),
    ("conductor: execute succeeded", "conductor", "execute succeeded", None),
    ("conductor: conductor finished (end acked)", "conductor", "conductor finished", None),
    ("daemon: job ended (reaped, cleaned up, stored)", "daemon", "job ended", None),
]
CANCEL_STEPS = [
    ("daemon: cancelling (stored, Cancel sent)", "daemon", "cancelling", None),
    ("conductor: execute failed (task SIGTERMed, ended)", "conductor", "execute failed", None),
    ("conductor: revert step started (write-ahead acked, spawned)", "conductor", "step started", "revert"),
    ("conductor: conductor finished (end acked)", "conductor", "conductor finished", None),
    ("daemon: job ended (reaped, cleaned up)", "daemon", "job ended", None),
]
KILL_STEPS = [
    ("daemon: job killed (SIGKILLs sent, survivors scanned)", "daemon", "job killed", None),
    ("daemon: job ended (reaped, cleaned up, stored)", "daemon", "job ended", None),
]


COUNTED = ("syscalls:sys_enter_fsync", "syscalls:sys_enter_fdatasync", "syscalls:sys_enter_openat")


def perf_count(pid=None):
    """`perf stat` of a few system calls of a running process (its threads and later children),
    or None when perf cannot (not installed, not permitted). Stop with `perf_counts`."""
    if not shutil.which("perf"):
        return None
    out = tempfile.mktemp(prefix="svb-perfstat.")
    cmd = ["perf", "stat", "-x", ",", "-o", out, "-e", ",".join(COUNTED), "-p", str(pid)]
    p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.3)
    if p.poll() is not None:
        return None
    p.out = out
    return p


def perf_counts(p):
    if p is None:
        return {}
    p.send_signal(signal.SIGINT)
    p.wait()
    counts = {}
    with contextlib.suppress(OSError):
        with open(p.out) as f:
            for line in f:
                parts = line.strip().split(",")
                if len(parts) > 2 and parts[0].isdigit():
                    counts[parts[2].split(":")[-1].replace("sys_enter_", "")] = int(parts[0])
        os.unlink(p.out)
    return counts


# ---------------------------------------------------------------------------------------------
# Sections


class Bench:
    def __init__(self, args):
        self.a = args
        self.sv = os.path.abspath(args.sv)
        self.worker = os.path.join(os.path.dirname(self.sv), "conductor-worker")
        self.work = args.work
        self.quick = args.quick
        self.r = {"floors": {}, "figures": {}, "peers": {}, "notes": [], "load": [], "phases": {}}
        self.fifo = Fifo(os.path.join(self.work, "signal.fifo"))

    def n(self, full, quick):
        return quick if self.quick else full

    def note_load(self, where):
        self.r["load"].append((where, loadavg()))

    def jobfile(self, name, body):
        return write(os.path.join(self.work, name + ".toml"), body)

    def daemon(self, name, max_jobs=16):
        d = Daemon(self.sv, os.path.join(self.work, name), max_jobs, os.path.join(self.work, name + ".log"))
        # Warm up (and make sure the events stream is subscribed): one trivial job to its end.
        warm = self.jobfile("warm", '[[task]]\nname = "t"\nrun = "true"\n')
        job = d.submit(warm)
        d.wait_terminal(job, timeout_s=20)
        return d

    # -- floors ---------------------------------------------------------------------------------
    def floors(self):
        """A first batch of every floor; `interleave()` adds one sample of each between the
        rounds of the figures, so that floors and figures see the same load."""
        self.note_load("floors")
        n = self.n(100, 20)
        fs = self.fs = {}
        self.sqlite = SqliteFloor(self.work)
        self.cgroup = CgroupFloor()
        self.fifo2 = Fifo(os.path.join(self.work, "floor.fifo"))
        fs["true"] = floor_spawn(["/bin/true"], n)[0]
        # A job's two process lives (its task's sh, its conductor): their CPU too.
        fs["sh_true"], fs["cpu_sh_true"] = floor_spawn(["/bin/sh", "-c", "true"], n)
        fs["sh_signal"] = floor_sh_signal(self.fifo2, n)
        fs["sv_version"] = floor_spawn([self.sv, "--version"], n)[0]
        if os.path.exists(self.worker):
            fs["conductor_handshake"], fs["sigkill_reap"] = floor_conductor_handshake(self.worker, self.work, n)
            fs["conductor_noargs"], fs["cpu_conductor_noargs"] = floor_spawn([self.worker], n)
        fs["sqlite_commit"] = self.sqlite.sample(n)
        if self.cgroup.base:
            fs["cgroup_procs"] = self.cgroup.sample(n)
        scans = [proc_scan() for _ in range(10)]
        fs["proc_scan"] = [t for t, _ in scans]
        self.r["proc_count"] = max(c for _, c in scans)

    def interleave(self):
        fs = self.fs
        fs["true"] += floor_spawn(["/bin/true"], 1, warm=0)[0]
        wall, cpu = floor_spawn(["/bin/sh", "-c", "true"], 1, warm=0)
        fs["sh_true"] += wall
        fs["cpu_sh_true"] += cpu
        fs["sh_signal"] += floor_sh_signal(self.fifo2, 1, warm=0)
        fs["sv_version"] += floor_spawn([self.sv, "--version"], 1, warm=0)[0]
        if "conductor_handshake" in fs:
            hs, kills = floor_conductor_handshake(self.worker, self.work, 1, warm=0)
            fs["conductor_handshake"] += hs
            fs["sigkill_reap"] += kills
            wall, cpu = floor_spawn([self.worker], 1, warm=0)
            fs["conductor_noargs"] += wall
            fs["cpu_conductor_noargs"] += cpu
        fs["sqlite_commit"] += self.sqlite.sample(1)
        if self.cgroup.base:
            fs["cgroup_procs"] += self.cgroup.sample(1)

    def finish_floors(self):
        for key, values in self.fs.items():
            self.r["floors"][key] = summary(values)
        self.cgroup.close()

    # -- daemon latencies -----------------------------------------------------------------------
    def latencies(self):
        fig = self.r["figures"]
        d = self.daemon("lat")
        try:
            self.note_load("spawn")
            # spawn: submit to first task running, and the submit CLI's own wall time
            first = self.jobfile("first", f'[[task]]\nname = "t"\nrun = "echo > {self.fifo.path}"\n')
            total, cli, internal, starts = [], [], [], {}
            for _ in range(self.n(200, 30)):
                self.interleave()
                self.fifo.arm()
                w0 = time.time_ns()
                t0 = now()
                p = subprocess.Popen([self.sv, "submit", first, "--state-dir", d.dir], stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
                t1 = self.fifo.wait()
                out, _ = p.communicate()
                t2 = now()
                job = out.decode().strip()
                d.wait_terminal(job)
                total.append(ms(t1 - t0))
                cli.append(ms(t2 - t0))
                ev = {(tk, st): at for _, tk, st, at in d.by_job[job]}
                internal.append(ev[("t", "running")] - ev[(None, "pending")])
                starts[job] = w0
            self.fifo.close()
            fig["spawn"] = summary(total)
            fig["submit_cli"] = summary(cli)
            fig["spawn_daemon_ms"] = summary(internal)
            fig["containment"] = d.status(job).get("containment", "?")
            self.r["phases"][f"spawn, {fig['containment']} containment"] = phase_table(d, starts, E2E_STEPS[:5])

            self.note_load("e2e")
            true_job = self.jobfile("true", '[[task]]\nname = "t"\nrun = "true"\n')
            e2e = []
            starts = {}
            for _ in range(self.n(200, 30)):
                w0 = time.time_ns()
                t0 = now()
                job = subprocess.run([self.sv, "submit", true_job, "--state-dir", d.dir], capture_output=True, text=True).stdout.strip()
                t1, state = d.wait_terminal(job)
                assert state == "success", state
                e2e.append(ms(t1 - t0))
                starts[job] = w0
            fig["e2e"] = summary(e2e)
            # `submit --wait`: the whole command, and how long after the job's end (its terminal
            # event's arrival on this harness's events stream) the command exits.
            waits, after_end = [], []
            for _ in range(self.n(50, 10)):
                t0 = now()
                r = subprocess.run([self.sv, "submit", "--wait", true_job, "--state-dir", d.dir], capture_output=True, text=True)
                t2 = now()
                assert r.returncode == 0, f"submit --wait exit {r.returncode}: {r.stderr}"
                job = r.stdout.strip().splitlines()[0].split()[0] if r.stdout.strip() else ""
                waits.append(ms(t2 - t0))
                with contextlib.suppress(TimeoutError, KeyError):
                    t1, _ = d.wait_terminal(job, timeout_s=5)
                    after_end.append(ms(t2 - t1))
            fig["submit_wait"] = summary(waits)
            if after_end:
                fig["submit_wait_after_end"] = summary(after_end)
            # System calls per job, counted apart: `perf stat` on the daemon slows its forks.
            counter = perf_count(d.pid)
            counted = self.n(50, 10)
            for _ in range(counted):
                d.wait_terminal(d.submit(true_job))
            counts = perf_counts(counter)
            fig["daemon_syscalls_per_job"] = {k: v / counted for k, v in counts.items()}
            self.r["phases"]["end to end (one `true` task)"] = phase_table(d, starts, E2E_STEPS)
            for _ in range(self.n(100, 20)):
                self.interleave()

            self.note_load("cancel")
            sleeper = self.jobfile("sleeper", f'[[task]]\nname = "t"\nrun = "echo > {self.fifo.path}; exec sleep 60"\nrevert = "true"\n')
            cancel, cancel_cli, starts = [], [], {}
            for _ in range(self.n(50, 10)):
                self.interleave()
                job = self.start_sleeper(d, sleeper)
                starts[job] = time.time_ns()
                t0 = now()
                p = subprocess.Popen([self.sv, "cancel", job, "--state-dir", d.dir], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
                p.wait()
                cancel_cli.append(ms(now() - t0))
                t1, _ = d.wait_event(job, "cancelled")  # arrival time, taken by the reader thread
                cancel.append(ms(t1 - t0))
            fig["cancel_daemon"] = summary(cancel)
            self.r["phases"]["cancel (daemon)"] = phase_table(d, starts, CANCEL_STEPS)

            self.note_load("kill")
            killv, killpoll, starts = [], [], {}
            for i in range(self.n(60, 10)):
                self.interleave()
                job = self.start_sleeper(d, sleeper)
                starts[job] = time.time_ns()
                t0 = now()
                p = subprocess.Popen([self.sv, "kill", job, "--state-dir", d.dir], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
                if i % 2 == 0:
                    t1, _ = d.wait_event(job, "killed")
                    killv.append(ms(t1 - t0))
                    p.wait()
                else:
                    # As an operator sees it: `status --json` in a loop right after `kill`.
                    p.wait()
                    while True:
                        st = json.loads(subprocess.run([self.sv, "status", job, "--json", "--state-dir", d.dir], capture_output=True, text=True).stdout)
                        if st["state"] == "killed":
                            killpoll.append(ms(now() - t0))
                            break
                        if ms(now() - t0) > 10000:
                            raise TimeoutError("kill not visible in status")
                    d.wait_terminal(job)
            fig["kill_visible"] = summary(killv)
            self.r["phases"]["kill"] = phase_table(d, starts, KILL_STEPS)
            fig["kill_visible_status_poll"] = summary(killpoll)
            self.fs["cancel_cli"] = cancel_cli

            self.note_load("kill precision")
            cancel_timeout_ms = 300
            stubborn = self.jobfile("stubborn", (
                f'cancel_timeout = "{cancel_timeout_ms}ms"\nterm_grace = "100ms"\n'
                f'[[task]]\nname = "t"\nrun = "echo > {self.fifo.path}; exec sleep 60"\n'
                "revert = \"trap '' TERM INT; sleep 60\"\n"))
            over, over_lo, over_store, leftovers, starts = [], [], [], 0, {}
            for _ in range(self.n(30, 5)):
                self.interleave()
                job = self.start_sleeper(d, stubborn)
                cpid = d.status(job).get("conductor_pid")
                starts[job] = time.time_ns()
                t0 = now()
                p = subprocess.Popen([self.sv, "cancel", job, "--state-dir", d.dir], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
                p.wait()
                t_cli = now()
                d.wait_event(job, "reverting", task="t", timeout_s=5)
                t1, _ = d.wait_event(job, "killed", timeout_s=10)
                over.append(ms(t1 - t0) - cancel_timeout_ms)
                over_lo.append(ms(t1 - t_cli) - cancel_timeout_ms)
                marks = d.job_transitions(job)
                if "cancelling" in marks and "killed" in marks:
                    over_store.append(marks["killed"] - marks["cancelling"] - cancel_timeout_ms)
                if cpid and (alive(cpid) or session_members(cpid)):
                    leftovers += 1
            fig["kill_precision"] = summary(over)
            fig["kill_precision_from_cli_exit"] = summary(over_lo)
            fig["kill_precision_store"] = summary(over_store)
            self.r["phases"][f"kill precision (cancel_timeout {cancel_timeout_ms} ms)"] = phase_table(d, starts, [
                ("daemon: cancelling", "daemon", "cancelling", None),
                ("conductor: revert step started", "conductor", "step started", "revert"),
                ("daemon: cancel timeout expired", "daemon", "cancel timeout expired, killing the job", None),
                ("daemon: job killed (SIGKILLs sent, survivors scanned)", "daemon", "job killed", None),
                ("daemon: job ended", "daemon", "job ended", None)])
            fig["kill_precision_leftovers"] = leftovers
            fig["kill_precision_timeout_ms"] = cancel_timeout_ms
        finally:
            d.stop()

    def perf_attach(self, pid, name):
        """With --perf DIR: `perf record` the process (all its threads) until perf_stop."""
        if not self.a.perf:
            return None
        os.makedirs(self.a.perf, exist_ok=True)
        out = os.path.join(self.a.perf, name + ".data")
        p = subprocess.Popen(["perf", "record", "-q", "-F", "2000", "--call-graph", "dwarf,32768", "-p", str(pid), "-o", out],
                             stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)  # perf attaches
        return p

    def perf_stop(self, p):
        if p is not None:
            p.send_signal(signal.SIGINT)
            p.wait()

    def spawn_session(self):
        """The spawn figure again with session containment (the daemon's --cgroup-root pointed at
        a path that cannot be created, so it falls back as documented): the cgroup's share."""
        fig = self.r["figures"]
        d = Daemon(self.sv, os.path.join(self.work, "sess"), 16, os.path.join(self.work, "sess.log"),
                   extra=["--cgroup-root", "/proc/svbench-no-cgroup"])
        try:
            warm = self.jobfile("warm", '[[task]]\nname = "t"\nrun = "true"\n')
            d.wait_terminal(d.submit(warm), timeout_s=20)
            first = self.jobfile("first", f'[[task]]\nname = "t"\nrun = "echo > {self.fifo.path}"\n')
            total, starts = [], {}
            for _ in range(self.n(100, 20)):
                self.interleave()
                self.fifo.arm()
                w0 = time.time_ns()
                t0 = now()
                p = subprocess.Popen([self.sv, "submit", first, "--state-dir", d.dir], stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
                t1 = self.fifo.wait()
                out, _ = p.communicate()
                d.wait_terminal(out.decode().strip())
                total.append(ms(t1 - t0))
                starts[out.decode().strip()] = w0
            self.fifo.close()
            fig["spawn_session"] = summary(total)
            self.r["phases"]["spawn, session containment"] = phase_table(d, starts, E2E_STEPS[:5])
            fig["spawn_session_containment"] = d.status(out.decode().strip()).get("containment", "?")
        finally:
            d.stop()

    def start_sleeper(self, d, file):
        self.fifo.arm()
        job = d.submit(file)
        self.fifo.wait()
        self.fifo.close()
        d.wait_event(job, "running", task="t")
        return job

    # -- `run` ----------------------------------------------------------------------------------
    def run_mode(self):
        fig = self.r["figures"]
        self.note_load("run cancel")
        sleeper = self.jobfile("run-sleeper", f'[[task]]\nname = "t"\nrun = "echo > {self.fifo.path}; exec sleep 60"\nrevert = "true"\n')
        state = os.path.join(self.work, "run-state")
        out = []
        for _ in range(self.n(40, 10)):
            self.interleave()
            self.fifo.arm()
            p = subprocess.Popen([self.sv, "run", "--state-dir", state, sleeper], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            self.fifo.wait()
            self.fifo.close()
            t0 = now()
            p.send_signal(signal.SIGINT)
            rc = p.wait()
            out.append(ms(now() - t0))
            assert rc == 3, f"run exit {rc}"
        fig["cancel_run"] = summary(out)

        self.note_load("per-task")
        ntasks = self.n(1000, 200)
        many = self.jobfile("many", "".join(f'[[task]]\nname = "t{i}"\nrun = "true"\n' for i in range(ntasks)))
        one = self.jobfile("one", '[[task]]\nname = "t"\nrun = "true"\n')

        def run_once(file, tag, prefix=(), env=None):
            st = os.path.join(self.work, f"run-{tag}")
            shutil.rmtree(st, ignore_errors=True)
            t0 = now()
            rc = subprocess.run([*prefix, self.sv, "run", "--state-dir", st, file], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                env=env).returncode
            assert rc == 0, f"run exit {rc}"
            return ms(now() - t0)

        ones = [run_once(one, f"one{i}") for i in range(self.n(20, 5))]
        manys = [run_once(many, f"many{i}") for i in range(self.n(3, 1))]
        per = [(m - pct(ones, 0.5)) / (ntasks - 1) for m in manys]
        fig["run_one_task"] = summary(ones)
        fig["per_task"] = summary(per)
        fig["per_task_n"] = ntasks
        fig["run_many_total_ms"] = summary(manys)
        # The same without fsyncs (SUPERVISOR_DURABILITY=normal, documented): what is left of the
        # overhead when the write-ahead commits are not flushed to the disk.
        env = dict(os.environ, SUPERVISOR_DURABILITY="normal")
        ones_n = [run_once(one, f"one-n{i}", env=env) for i in range(self.n(10, 3))]
        manys_n = [run_once(many, f"many-n{i}", env=env) for i in range(self.n(2, 1))]
        fig["per_task_nofsync"] = summary([(m - pct(ones_n, 0.5)) / (ntasks - 1) for m in manys_n])
        if shutil.which("perf"):
            st = os.path.join(self.work, "run-count")
            shutil.rmtree(st, ignore_errors=True)
            out = tempfile.mktemp(prefix="svb-perfstat.")
            r = subprocess.run(["perf", "stat", "-x", ",", "-o", out, "-e", ",".join(COUNTED[:2]), "--", self.sv, "run", "--state-dir", st, many],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            if r.returncode == 0:
                with open(out) as f:
                    n = sum(int(l.split(",")[0]) for l in f if l.split(",")[0].isdigit())
                fig["run_fsync_per_task"] = n / ntasks
            with contextlib.suppress(OSError):
                os.unlink(out)
        if self.a.perf:
            # The same run under `perf record` (the run, its conductor and the tasks), and under
            # `strace -f -c` for where the wall time goes in system calls (fsync, waits).
            os.makedirs(self.a.perf, exist_ok=True)
            run_once(many, "perf", ("perf", "record", "-q", "-F", "2000", "--call-graph", "dwarf,32768", "-o", os.path.join(self.a.perf, "run-many.data"), "--"))
            run_once(many, "strace", ("strace", "-f", "-c", "-w", "-o", os.path.join(self.a.perf, "run-many.strace"), "--"))
            run_once(many, "strace-t", ("strace", "-f", "-tt", "-T", "-e", "trace=fsync,fdatasync,sendto,recvfrom,write,read,clone,clone3,execve,wait4,waitid,epoll_wait,pidfd_open,pidfd_send_signal", "-o", os.path.join(self.a.perf, "run-many.strace-t"), "--"))

    # -- throughput -----------------------------------------------------------------------------
    def throughput(self):
        fig = self.r["figures"]
        njobs = self.n(1000, 200)
        trivial = self.jobfile("trivial", '[[task]]\nname = "t"\nrun = "true"\n')
        blocker = self.jobfile("blocker", '[[task]]\nname = "t"\nrun = "exec sleep 600"\n')
        res = {}
        for max_jobs in self.n([2, 8, 32], [8]):
            self.note_load(f"throughput {max_jobs}")
            d = self.daemon(f"tp{max_jobs}", max_jobs)
            try:
                # Fill every slot with a blocker, queue the trivial jobs behind them, then release
                # the blockers: the figure is the daemon draining its queue, not the submit CLI.
                blockers = [d.submit(blocker) for _ in range(max_jobs)]
                for b in blockers:
                    d.wait_event(b, "running", task="t")
                with ThreadPoolExecutor(4) as pool:
                    jobs = list(pool.map(lambda _: d.submit(trivial), range(njobs)))
                base = d.terminal_count
                sleeps = []
                deadline = time.time() + 10
                while len(sleeps) < max_jobs and time.time() < deadline:
                    sleeps = [s for b in blockers for s in children(d.status(b)["conductor_pid"])]
                    if len(sleeps) < max_jobs:
                        time.sleep(0.01)
                perf = self.perf_attach(d.pid, f"daemon-drain-{max_jobs}")
                own0, kids0 = cpu_seconds(d.pid)
                t0 = now()
                for s in sleeps:
                    os.kill(s, signal.SIGTERM)
                ok = d.wait_terminal_count(base + njobs + max_jobs, timeout_s=600)
                t1 = now()
                own1, kids1 = cpu_seconds(d.pid)
                self.perf_stop(perf)
                if not ok:
                    # Missed events (a lagging subscriber): fall back to the store.
                    while d.live_count() > 0:
                        time.sleep(0.05)
                    t1 = now()
                    self.r["notes"].append(f"throughput {max_jobs}: events missed, end taken from `ls`")
                states = {}
                for j in jobs:
                    for _, tk, st, _ in d.by_job.get(j, []):
                        if tk is None and st in Daemon.TERMINAL:
                            states[st] = states.get(st, 0) + 1
                secs = (t1 - t0) / 1e9
                res[max_jobs] = {
                    "jobs": njobs, "seconds": secs, "jobs_per_s": njobs / secs,
                    "daemon_cpu_ms_per_job": (own1 - own0) * 1000 / njobs,
                    "tree_cpu_ms_per_job": (kids1 - kids0) * 1000 / njobs,
                    "states": states,
                }
                log(f"throughput --max-jobs {max_jobs}: {njobs / secs:.0f} jobs/s, daemon {(own1 - own0) * 1000 / njobs:.2f} ms CPU/job")
            finally:
                d.stop()
        fig["throughput"] = res

    # -- memory ---------------------------------------------------------------------------------
    def memory(self):
        fig = self.r["figures"]
        self.note_load("memory")
        sleeper = self.jobfile("mem-sleeper", f'[[task]]\nname = "t"\nrun = "echo > {self.fifo.path}; exec sleep 600"\n')
        plain = self.jobfile("mem-plain", '[[task]]\nname = "t"\nrun = "exec sleep 600"\n')
        counts = self.n([100, 1000], [100])
        d = self.daemon("mem", max(counts))
        mem = {}
        try:
            time.sleep(0.5)
            st = proc_status(d.pid)
            mem["daemon_idle"] = {"rss_kb": kb(st, "VmRSS"), "anon_kb": kb(st, "RssAnon"), "threads": int(st["Threads"])}
            job = self.start_sleeper(d, sleeper)
            cpid = d.status(job)["conductor_pid"]
            cs = proc_status(cpid)
            mem["conductor"] = {"rss_kb": kb(cs, "VmRSS"), "anon_kb": kb(cs, "RssAnon"), "pss_kb": pss_kb(cpid), "threads": int(cs["Threads"])}
            live = [job]
            for count in counts:
                t0 = now()
                new = [d.submit(plain) for _ in range(count - len(live))]
                live += new
                # Every job running its `sleep` (from the store: events may lag under a burst).
                deadline = time.time() + 300
                while True:
                    jobs = json.loads(d.cli("ls", "--json").stdout)
                    if sum(1 for j in jobs if j["state"] == "running" and j.get("task")) >= count:
                        break
                    if time.time() > deadline:
                        raise TimeoutError(f"{count} live jobs did not all start")
                    time.sleep(0.2)
                # ... and every conductor's task process spawned.
                while sum(len(children(c)) for c in children(d.pid)) < count and time.time() < deadline:
                    time.sleep(0.2)
                spawn_s = (now() - t0) / 1e9
                time.sleep(0.5)
                st = proc_status(d.pid)
                conductors = children(d.pid)
                rss = [kb(proc_status(c) or {}, "VmRSS") for c in conductors]
                pss = [pss_kb(c) for c in conductors]
                mem[f"daemon_{count}"] = {
                    "rss_kb": kb(st, "VmRSS"), "anon_kb": kb(st, "RssAnon"), "threads": int(st["Threads"]),
                    "fds": len(os.listdir(f"/proc/{d.pid}/fd")), "conductors": len(conductors),
                    "conductor_rss_avg_kb": sum(rss) / max(1, len(rss)), "conductor_pss_avg_kb": sum(pss) / max(1, len(pss)),
                    "start_seconds": spawn_s,
                }
                log(f"memory: {count} live jobs: daemon RSS {kb(st, 'VmRSS')} kB")
            t0 = now()
            d.cli("shutdown", "--cancel")
            d.proc.wait(timeout=300)
            mem["shutdown_cancel_s"] = (now() - t0) / 1e9
        finally:
            d.stop()
        fig["memory"] = mem

        # conductor RSS under `run`, with the dedicated worker and with supervisor as its own worker
        def run_rss(sv):
            self.fifo.arm()
            p = subprocess.Popen([sv, "run", "--state-dir", os.path.join(self.work, "rss-state"), sleeper], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            self.fifo.wait()
            self.fifo.close()
            cpid = children(p.pid)[0]
            cs = proc_status(cpid)
            rs = proc_status(p.pid)
            out = {"rss_kb": kb(cs, "VmRSS"), "anon_kb": kb(cs, "RssAnon"), "pss_kb": pss_kb(cpid), "threads": int(cs["Threads"]),
                   "run_rss_kb": kb(rs, "VmRSS")}
            p.send_signal(signal.SIGINT)
            p.wait()
            return out

        mem["conductor_run"] = run_rss(self.sv)
        alone = os.path.join(self.work, "alone")
        os.makedirs(alone, exist_ok=True)
        shutil.copy2(self.sv, os.path.join(alone, "supervisor"))
        mem["conductor_run_self"] = run_rss(os.path.join(alone, "supervisor"))


# ---------------------------------------------------------------------------------------------
# Peers


class Peers:
    def __init__(self, bench, peers_dir):
        self.b = bench
        self.dir = peers_dir
        self.r = bench.r["peers"]

    # -- pueue ----------------------------------------------------------------------------------
    def pueue(self):
        bindir = os.path.join(self.dir, "pueue", "bin")
        pueue, pueued = os.path.join(bindir, "pueue"), os.path.join(bindir, "pueued")
        if not os.path.exists(pueued):
            self.r["pueue"] = {"error": "not installed"}
            return
        base = os.path.join(self.b.work, "pq")
        shutil.rmtree(base, ignore_errors=True)
        os.makedirs(os.path.join(base, "run"))
        os.makedirs(os.path.join(base, "data"))
        cfg = write(os.path.join(base, "pueue.yml"), (
            "shared:\n"
            f"  pueue_directory: {base}/data\n"
            f"  runtime_directory: {base}/run\n"
            "  use_unix_socket: true\n"
            f"  unix_socket_path: {base}/run/pueue.sock\n"
            "daemon:\n"
            "  callback: null\n"
            "client:\n"
            "  restart_in_place: false\n"))
        env = dict(os.environ)
        log_f = open(os.path.join(base, "pueued.log"), "ab")
        d = subprocess.Popen([pueued, "-c", cfg], stdin=subprocess.DEVNULL, stdout=log_f, stderr=log_f)
        res = {"version": subprocess.run([pueue, "--version"], capture_output=True, text=True).stdout.strip()}

        def cli(*args, check=True):
            r = subprocess.run([pueue, "-c", cfg, *args], capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL)
            if check and r.returncode != 0:
                raise RuntimeError(f"pueue {' '.join(args)}: {r.returncode} {r.stderr.strip()}")
            return r

        def tasks():
            return json.loads(cli("status", "--json").stdout)["tasks"]

        def task_state(tid):
            st = tasks()[str(tid)]["status"]
            if isinstance(st, str):
                return st, None
            (name, detail), = st.items()
            res_ = detail.get("result") if isinstance(detail, dict) else None
            return name, res_

        try:
            deadline = time.time() + 20
            while cli("status", check=False).returncode != 0:
                if time.time() > deadline:
                    raise RuntimeError("pueued did not start")
                time.sleep(0.05)
            time.sleep(0.3)
            st = proc_status(d.pid)
            res["daemon_idle_rss_kb"] = kb(st, "VmRSS")
            res["daemon_idle_threads"] = int(st["Threads"])

            def add(*command):
                out = cli("add", "--print-task-id", "--", *command).stdout.strip()
                return int(out)

            # add to finished: `pueue status --json` polled every 5 ms
            self.b.note_load("pueue e2e")
            e2e = []
            for _ in range(20):
                t0 = now()
                tid = add("true")
                while task_state(tid)[0] != "Done":
                    time.sleep(0.005)
                e2e.append(ms(now() - t0))
            res["e2e"] = summary(e2e)

            self.b.note_load("pueue kill")
            kill = []
            for _ in range(10):
                tid = add("sleep", "60")
                while task_state(tid)[0] != "Running":
                    time.sleep(0.005)
                t0 = now()
                cli("kill", str(tid))
                while True:
                    name, result = task_state(tid)
                    if name == "Done":
                        break
                    time.sleep(0.005)
                kill.append(ms(now() - t0))
            res["kill_visible"] = summary(kill)
            res["kill_result"] = result
            cli("clean")

            # throughput: pause, queue N trivial tasks, start, poll until all are Done
            tp = {}
            for parallel in (2, 8, 32):
                njobs = 1000 if parallel >= 8 else 200
                self.b.note_load(f"pueue throughput {parallel}")
                cli("parallel", str(parallel))
                cli("pause")
                ids = []
                with ThreadPoolExecutor(4) as pool:
                    ids = list(pool.map(lambda _: add("true"), range(njobs)))
                own0, kids0 = cpu_seconds(d.pid)
                t0 = now()
                cli("start")
                while True:
                    ts = tasks()
                    if all(isinstance(ts[str(i)]["status"], dict) and "Done" in ts[str(i)]["status"] for i in ids):
                        break
                    time.sleep(0.25)  # its loop runs every 300 ms; polling more often only loads it
                secs = (now() - t0) / 1e9
                own1, kids1 = cpu_seconds(d.pid)
                st = proc_status(d.pid)
                tp[parallel] = {"jobs": njobs, "seconds": secs, "jobs_per_s": njobs / secs,
                                "daemon_cpu_ms_per_job": (own1 - own0) * 1000 / njobs,
                                "rss_kb_after": kb(st, "VmRSS")}
                log(f"pueue parallel {parallel}: {njobs / secs:.0f} jobs/s")
                cli("clean")
            res["throughput"] = tp
        except Exception as err:  # noqa: BLE001 - a peer failing must not lose our own figures
            res["error"] = f"{type(err).__name__}: {err}"
            log("pueue:", res["error"])
        finally:
            cli("shutdown", check=False)
            try:
                d.wait(timeout=10)
            except subprocess.TimeoutExpired:
                d.kill()
                d.wait()
            log_f.close()
        self.r["pueue"] = res

    # -- TaskFlow -------------------------------------------------------------------------------
    def taskflow(self):
        py = os.path.join(self.dir, "taskflow", "bin", "python")
        if not os.path.exists(py):
            self.r["taskflow"] = {"error": "not installed"}
            return
        script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "taskflow_bench.py")
        res = {}
        # The SQLite store's cost per task grows with the flow (about 60 ms at 20 tasks, 90 ms at
        # 100 here): 1000 tasks would take many minutes, so that flow has 200.
        for mode, n in (("memory", 1000), ("sqlite", 200)):
            self.b.note_load(f"taskflow {mode}")
            r = subprocess.run([py, script, "flow", mode, str(n), self.b.work], capture_output=True, text=True)
            res[mode] = json.loads(r.stdout) if r.returncode == 0 else {"error": r.stderr.strip()[-500:]}
        self.b.note_load("taskflow cancel")
        r = subprocess.run([py, script, "cancel", "memory", "10", self.b.work], capture_output=True, text=True)
        res["cancel"] = json.loads(r.stdout) if r.returncode == 0 else {"error": r.stderr.strip()[-500:]}
        r = subprocess.run([py, script, "one", "memory", "50", self.b.work], capture_output=True, text=True)
        res["one"] = json.loads(r.stdout) if r.returncode == 0 else {"error": r.stderr.strip()[-500:]}
        res["version"] = subprocess.run([py, "-c", "import importlib.metadata as m; print(m.version('taskflow'))"], capture_output=True, text=True).stdout.strip()
        self.r["taskflow"] = res


# ---------------------------------------------------------------------------------------------
# Report


def fmt(x, digits=2):
    if isinstance(x, str):
        return x
    if x != x:  # NaN
        return "n/a"
    if abs(x) >= 100:
        return f"{x:.0f}"
    if abs(x) >= 10:
        return f"{x:.1f}"
    return f"{x:.{digits}f}"


def trio(s):
    return f"{fmt(s['p50'])} / {fmt(s['p95'])} / {fmt(s['max'])}"


def targets(fl, fig, missed, nproc):
    """The table of the speed targets (ARCHITECTURE.md and issue 14's table): each figure's
    p50 (after the CLI's own start where the figure includes one), its floor measured in this
    run, the target and the verdict. Appends the missed ones to `missed`."""
    nan = float("nan")
    cli = fl.get("sv_version", {}).get("p50", nan)
    p = lambda k: fl.get(k, {}).get("p50", nan)  # noqa: E731
    f50 = lambda k: fig.get(k, {}).get("p50", nan) if isinstance(fig.get(k), dict) else nan  # noqa: E731
    rows = ["| figure | p50 now | floor (this run) | target | verdict |", "|---|---|---|---|---|"]

    def row(name, value, unit, floor_text, target_text, ok):
        if value != value:  # not measured in this run
            return
        verdict = "met" if ok else "**missed**"
        if not ok:
            missed.append(name)
        rows.append(f"| {name} | {fmt(value)} {unit} | {floor_text} | {target_text} | {verdict} |")

    commit, sh_true, sh_signal = p("sqlite_commit"), p("sh_true"), p("sh_signal")
    v = f50("spawn") - cli
    row("submit to first task running (after the CLI's start)", v, "ms",
        f"fsync {fmt(commit)} + task start {fmt(sh_signal)} ms", "<= 1.5 ms", v <= 1.5)
    v = f50("e2e") - cli
    row("one `true` task, submit to end (after the CLI's start)", v, "ms",
        f"fsync {fmt(commit)} + `sh -c true` {fmt(sh_true)} ms", "<= 3 ms", v <= 3.0)
    v = f50("kill_visible") - cli
    row("kill to `killed` visible (after the CLI's start)", v, "ms",
        f"SIGKILL + reap {fmt(p('sigkill_reap'))} ms", "<= 1 ms", v <= 1.0)
    v = f50("cancel_daemon") - cli - sh_true
    row("cancel to `cancelled`, beyond the revert's spawn (after the CLI's start)", v, "ms",
        f"revert `sh -c true` {fmt(sh_true)} ms (subtracted)", "<= 1 ms + the revert", v <= 1.0)
    v = f50("per_task") - sh_true
    row("per step beyond its spawn, durable", v, "ms", f"fsync {fmt(commit)} ms",
        f"<= fsync + 0.1 ms ({fmt(commit + 0.1)})", v <= commit + 0.1)
    v = f50("per_task_nofsync") - sh_true
    row("per step beyond its spawn, `SUPERVISOR_DURABILITY=normal`", v, "ms", "~0.01 ms", "<= 0.1 ms", v <= 0.1)
    # A job's two process lives (its conductor, its task's sh), CPU exec to exit, before any
    # of their work: the conductor measured as a conductor-worker that exits at its arguments.
    cpu_sh, cpu_conductor = p("cpu_sh_true"), p("cpu_conductor_noargs")
    lives = cpu_sh + cpu_conductor
    t8 = (fig.get("throughput") or {}).get(8) or (fig.get("throughput") or {}).get("8")
    if t8:
        row("throughput, trivial jobs, `--max-jobs 8`", t8["jobs_per_s"], "jobs/s",
            f"`sh -c true` spawns: {fmt(1000 / sh_true)}/s; a job's two process lives on {nproc} CPUs "
            f"(CPU {fmt(lives)} ms): {fmt(1000 * nproc / lives)}/s" if lives == lives else "-",
            ">= 800 jobs/s", t8["jobs_per_s"] >= 800)
        row("daemon CPU per job", t8["daemon_cpu_ms_per_job"], "ms", "-", "<= 0.5 ms", t8["daemon_cpu_ms_per_job"] <= 0.5)
        row("conductor + task CPU per job", t8["tree_cpu_ms_per_job"], "ms",
            f"their bare process lives: `sh -c true` {fmt(cpu_sh)} + `conductor-worker` {fmt(cpu_conductor)} ms CPU"
            if lives == lives else "-", "<= 1.5 ms", t8["tree_cpu_ms_per_job"] <= 1.5)
    v = cli / p("true")
    row("CLI start (`supervisor --version`), times `/bin/true`", v, "x", f"`/bin/true` {fmt(p('true'))} ms", "<= 1.2x", v <= 1.2)
    v = f50("run_one_task") / sh_true
    row("`supervisor run` of a one-task `true` job, whole command, times an sh spawn", v, "x",
        f"`sh -c true` {fmt(sh_true)} ms", "<= 6x", v <= 6.0)
    v = f50("submit_wait_after_end")
    row("`submit --wait` of a one-task job: exit after the job's end", v, "ms",
        f"whole command p50 {fmt(f50('submit_wait'))} ms", "<= 1 ms", v <= 1.0)
    return rows


def report(r, quick):
    """The markdown tables (figures, floors, side by side) and the list of missed budgets."""
    f, fl, fig, peers = r, r["floors"], r["figures"], r["peers"]
    rows, missed = [], []

    def row(name, how, s, floor_ms, floor_what, budget_text, ok, note=""):
        ratio = f"{s['p50'] / floor_ms:.1f}x" if floor_ms and floor_ms == floor_ms and floor_ms > 0 else "-"
        verdict = "-" if ok is None else ("met" if ok else "**missed**")
        if ok is False:
            missed.append(name)
        rows.append(f"| {name} | {how} | {trio(s)} | {(fmt(floor_ms) + ' (' + floor_what + ')') if floor_ms else '-'} | {ratio} | {budget_text} | {verdict} | {note} |")

    cli_floor = fl["sv_version"]["p50"]
    hs = fl.get("conductor_handshake", {}).get("p50", float("nan"))
    task_floor = fl["sh_signal"]["p50"]

    if "spawn" in fig:
        s = fig["spawn"]
        floor = cli_floor + hs + task_floor
        net = {k: (v - cli_floor if k != "n" else v) for k, v in s.items()}
        row("spawn: submit to first task running", f"daemon, {s['n']} one-task jobs, one at a time (containment: {fig.get('containment')})", s, floor,
            "CLI start + conductor spawn/handshake + task sh start", "p50 < 3 ms after the CLI start",
            net["p50"] < 3.0, f"minus the CLI start floor: {trio(net)}; submit CLI wall time p50 {fmt(fig['submit_cli']['p50'])}; daemon at_ms pending to task running p50 {fmt(fig['spawn_daemon_ms']['p50'], 0)} ms")
    if "spawn_session" in fig:
        s = fig["spawn_session"]
        floor = cli_floor + hs + task_floor
        net = {k: (v - cli_floor if k != "n" else v) for k, v in s.items()}
        row("spawn, session containment", f"the same, {s['n']} jobs, daemon with `--cgroup-root` unusable (containment: {fig.get('spawn_session_containment')})", s, floor,
            "as above", "p50 < 3 ms after the CLI start", net["p50"] < 3.0, f"minus the CLI start floor: {trio(net)}")
    if "e2e" in fig:
        s = fig["e2e"]
        floor = cli_floor + hs + fl["sh_true"]["p50"]
        net = s["p50"] - cli_floor
        sc = fig.get("daemon_syscalls_per_job", {})
        counts = f"; daemon system calls per job: {fmt(sc.get('fsync', float('nan')), 1)} fsync, {fmt(sc.get('openat', float('nan')), 0)} openat" if sc else ""
        row("end to end: one `true` task, submit to terminal", f"daemon, {s['n']} jobs, `success` event arrival", s, floor,
            "CLI start + conductor handshake + sh -c true", "p50 < 10 ms after the CLI start", net < 10.0, f"minus the CLI start: p50 {fmt(net)}{counts}")
    if "cancel_daemon" in fig:
        s = fig["cancel_daemon"]
        floor = cli_floor + fl["sh_true"]["p50"]
        row("cancel: request to `cancelled` (daemon)", f"{s['n']} jobs: `sleep` task, `true` revert; `cancel` spawned to `cancelled` event", s, floor,
            "CLI start + revert sh -c true", f"p50 < 10 ms + revert spawn ({fmt(fl['sh_true']['p50'])})",
            s["p50"] - cli_floor < 10.0 + fl["sh_true"]["p50"], f"minus the CLI start: p50 {fmt(s['p50'] - cli_floor)}")
    if "cancel_run" in fig:
        s = fig["cancel_run"]
        row("cancel: SIGINT to exit (`run`)", f"{s['n']} runs: `sleep` task, `true` revert", s, fl["sh_true"]["p50"],
            "revert sh -c true", f"p50 < 10 ms + revert spawn", s["p50"] < 10.0 + fl["sh_true"]["p50"], "includes the exit of `run`")
    if "kill_precision" in fig:
        s = fig["kill_precision"]
        hi = fig["kill_precision"]
        st = fig.get("kill_precision_store")
        s = fig["kill_precision_from_cli_exit"]
        store_text = f"; from the store's own `cancelling` and `killed` times (1 ms resolution, before the last commit): {trio(st)}" if st and st["n"] else ""
        row("kill precision: cancel_timeout to job gone (overshoot)", f"{s['n']} jobs, stubborn revert, cancel_timeout {fig['kill_precision_timeout_ms']} ms; from the `cancel` CLI's exit to the `killed` event, minus the timeout", s, None, "",
            "overshoot p95 < 20 ms", s["p95"] < 20.0,
            f"from the `cancel` CLI's spawn instead: {trio(hi)}{store_text}; jobs with a process left after `killed`: {fig['kill_precision_leftovers']}")
    if "kill_visible" in fig:
        s = fig["kill_visible"]
        p = fig["kill_visible_status_poll"]
        floor = cli_floor + fl.get("sigkill_reap", {}).get("p50", 0)
        row("kill visible: `kill` to status showing it", f"{s['n']} jobs, `killed` event arrival", s, floor, "CLI start + SIGKILL/reap",
            "p50 < 10 ms after the CLI start", s["p50"] - cli_floor < 10.0,
            f"minus the CLI start: p50 {fmt(s['p50'] - cli_floor)}; polling `status --json` after `kill` exits ({p['n']} jobs, one more CLI start per poll): {trio(p)}")
    if "per_task" in fig:
        s = fig["per_task"]
        over = {k: (v - fl["sh_true"]["p50"] if k != "n" else v) for k, v in s.items()}
        row("per-task overhead (`run`)", f"a job of {fig['per_task_n']} `true` tasks, ({fig['per_task_n']}-task run - 1-task run) / {fig['per_task_n'] - 1}", s,
            fl["sh_true"]["p50"], "sh -c true spawn+reap", "overhead < 0.1 ms (DESIGN section 10)", over["p50"] < 0.1,
            f"minus the floor: {fmt(over['p50'], 3)} ms per task; fsync per task: {fmt(fig.get('run_fsync_per_task', float('nan')), 2)}; write-ahead commit floor (SQLite WAL FULL) p50 {fmt(fl['sqlite_commit']['p50'], 3)} ms"
            + (f"; with SUPERVISOR_DURABILITY=normal (no fsync): {fmt(fig['per_task_nofsync']['p50'], 3)} ms per task, {fmt(fig['per_task_nofsync']['p50'] - fl['sh_true']['p50'], 3)} over the floor" if "per_task_nofsync" in fig else ""))

    out = targets(fl, fig, missed, r.get("machine", {}).get("nproc") or 1)
    out.append("")
    out.append("Every figure in detail, with how it was taken:")
    out.append("")
    out.append("| figure | how | p50 / p95 / max (ms) | floor p50 (ms) | p50 / floor | budget | verdict | notes |")
    out.append("|---|---|---|---|---|---|---|---|")
    out += rows
    if "throughput" in fig:
        for mj, t in sorted(fig["throughput"].items(), key=lambda kv: int(kv[0])):
            bad = {k: v for k, v in t["states"].items() if k != "success"}
            if bad:
                missed.append(f"throughput --max-jobs {mj}: {sum(bad.values())} of {t['jobs']} trivial jobs did not succeed ({bad})")
            out.append(f"| throughput, --max-jobs {mj} | {t['jobs']} trivial jobs queued behind blockers, then drained | {fmt(t['jobs_per_s'])} jobs/s ({fmt(t['seconds'])} s) | - | - | - | - | daemon CPU {fmt(t['daemon_cpu_ms_per_job'], 3)} ms/job; whole job tree (conductor + task, reaped) {fmt(t['tree_cpu_ms_per_job'], 3)} ms/job; end states {t['states']} |")
    if "memory" in fig:
        m = fig["memory"]
        c = m.get("conductor", {})
        ok = c.get("rss_kb", 0) / 1024 < 4.0
        if not ok:
            missed.append("memory: conductor RSS")
        cr, cs = m.get("conductor_run", {}), m.get("conductor_run_self", {})
        out.append(f"| memory: conductor during a task | /proc VmRSS (RssAnon, PSS) | {c.get('rss_kb', 0) / 1024:.1f} MB ({c.get('anon_kb', 0) / 1024:.2f} MB anon, PSS {c.get('pss_kb', 0) / 1024:.2f} MB), {c.get('threads')} thread(s) | 2.7 (tokio current_thread binary, DESIGN) | {c.get('rss_kb', 0) / 1024 / 2.7:.1f}x | < 4 MB | {'met' if ok else '**missed**'} | under `run`: {cr.get('rss_kb', 0) / 1024:.1f} MB with conductor-worker, {cs.get('rss_kb', 0) / 1024:.1f} MB with supervisor as its own conductor |")
        idle = m.get("daemon_idle", {})
        out.append(f"| memory: daemon idle | /proc VmRSS | {idle.get('rss_kb', 0) / 1024:.1f} MB ({idle.get('anon_kb', 0) / 1024:.1f} MB anon), {idle.get('threads')} threads | - | - | - | - | |")
        for k in sorted((k for k in m if k.startswith("daemon_") and k[7:].isdigit()), key=lambda k: int(k[7:])):
            v = m[k]
            out.append(f"| memory: daemon with {k[7:]} live jobs | all running (`sleep`), /proc VmRSS | {v['rss_kb'] / 1024:.1f} MB ({v['anon_kb'] / 1024:.1f} MB anon), {v['threads']} threads, {v['fds']} fds | - | - | - | - | {v['conductors']} conductors: avg RSS {v['conductor_rss_avg_kb'] / 1024:.1f} MB, avg PSS {v['conductor_pss_avg_kb'] / 1024:.2f} MB; started in {fmt(v['start_seconds'])} s |")
        if "shutdown_cancel_s" in m:
            big = max((k for k in m if k.startswith("daemon_") and k[7:].isdigit()), key=lambda k: int(k[7:]))
            out.append(f"| `shutdown --cancel` with {big[7:]} live jobs | each `sleep` task cancelled (no revert), daemon gone | {fmt(m['shutdown_cancel_s'])} s ({fmt(m['shutdown_cancel_s'] * 1000 / int(big[7:]))} ms per job) | - | - | - | - | |")

    flo = ["| floor | p50 / p95 / max (ms) |", "|---|---|"]
    names = {
        "true": "spawn + reap `/bin/true` (posix_spawn)",
        "sh_true": "spawn + reap `/bin/sh -c true`",
        "sh_signal": "spawn `/bin/sh -c 'echo > FIFO'` to the FIFO write (a task's own start)",
        "sv_version": "spawn + reap `supervisor --version` (the CLI's process start)",
        "conductor_handshake": "conductor-worker spawned as the daemon spawns it (setsid, socket on fd 3) to its protocol hello",
        "sigkill_reap": "SIGKILL + reap of that conductor",
        "conductor_noargs": "spawn + reap `conductor-worker` without arguments (exits at argument parsing)",
        "cpu_sh_true": "CPU (user + system, from its rusage) of a `/bin/sh -c true` process, exec to exit",
        "cpu_conductor_noargs": "CPU of a `conductor-worker` without arguments, exec to exit (a conductor's bare process life)",
        "sqlite_commit": "SQLite INSERT + COMMIT, WAL, synchronous=FULL (Python sqlite3, same disk)",
        "cgroup_procs": "move a fresh process into a fresh cgroup v2 (write its pid to cgroup.procs; a process born there with clone3 CLONE_INTO_CGROUP does not pay it)",
        "proc_scan": f"read every /proc/PID/stat once ({r.get('proc_count', '?')} processes; a scan for a job's processes)",
        "cancel_cli": "`supervisor cancel JOB` wall time (spawn to exit; the cancel itself runs on)",
    }
    for k, label in names.items():
        if k in fl:
            flo.append(f"| {label} | {trio(fl[k])} |")

    side = ["| figure | supervisor | pueue | TaskFlow |", "|---|---|---|---|"]
    pq, tf = peers.get("pueue", {}), peers.get("taskflow", {})

    def pget(d, *path, default="not measured"):
        for p in path:
            if not isinstance(d, dict) or p not in d:
                return default
            d = d[p]
        return d

    skipped = "skipped (--quick)" if quick else "not measured"
    pq_err = pq.get("error")
    tf_err = tf.get("error")
    if "e2e" in fig:
        pe = pget(pq, "e2e")
        tfo = pget(tf, "one")
        side.append(f"| trivial job, submit to finished (p50 / p95 / max ms) | {trio(fig['e2e'])} | "
                    f"{trio(pe) + ' (`pueue add` to `status --json` showing Done, polled every 5 ms)' if isinstance(pe, dict) else (pq_err or skipped)} | "
                    f"{trio(tfo['load_run_ms']) + ' (in process: engines.load + run of a one-task flow; no process, no daemon)' if isinstance(tfo, dict) and 'load_run_ms' in tfo else (tf_err or skipped)} |")
    if "kill_visible" in fig:
        pk = pget(pq, "kill_visible")
        side.append(f"| kill to visible status (ms) | {trio(fig['kill_visible'])} (event); {trio(fig['kill_visible_status_poll'])} (status polling) | "
                    f"{trio(pk) + ' (`pueue kill` to Done/' + str(pq.get('kill_result')) + ' in `status --json`)' if isinstance(pk, dict) else (pq_err or skipped)} | "
                    "no per-job kill: killing the conductor process stops every job on it, and no revert runs |")
    if "cancel_daemon" in fig:
        tc = pget(tf, "cancel")
        tc_text = (tf_err or skipped)
        if isinstance(tc, dict) and "latency_ms" in tc:
            tc_text = (f"{trio(tc['latency_ms'])}: a flag checked before/after execute (seed write-up); a {tc['execute_s']} s execute, flag set "
                       f"{tc['set_after_s']} s in; it waits out the execute, then reverts (revert ran: {tc['reverted']})")
        side.append(f"| cancel: request to reverted (ms) | {trio(fig['cancel_daemon'])} (daemon); {trio(fig['cancel_run']) if 'cancel_run' in fig else 'not measured'} (`run`, SIGINT) | "
                    "no revert concept: `pueue kill` only (SIGTERM/SIGKILL) | " + tc_text + " |")
    if "per_task" in fig:
        tm, ts = pget(tf, "memory"), pget(tf, "sqlite")
        def tf_per(x):
            if isinstance(x, dict) and "per_task_ms" in x:
                return f"{fmt(x['per_task_ms'], 3)} ms/task ({x['tasks']} no-op tasks, {fmt(x['total_s'])} s), peak RSS {x['maxrss_kb'] / 1024:.1f} MB"
            return (x.get("error") if isinstance(x, dict) else None) or tf_err or skipped
        side.append(f"| per-task overhead | {fmt(fig['per_task']['p50'], 3)} ms/task (spawns a process per task: floor {fmt(fl['sh_true']['p50'], 3)} ms) | one process per job, no tasks: not comparable | in memory: {tf_per(tm)}; SQLite store: {tf_per(ts)} |")
    if "throughput" in fig:
        tps = pget(pq, "throughput")
        for mj, t in sorted(fig["throughput"].items(), key=lambda kv: int(kv[0])):
            pt = tps.get(mj) or tps.get(str(mj)) if isinstance(tps, dict) else None
            ptext = (f"{fmt(pt['jobs_per_s'])} jobs/s ({pt['jobs']} jobs, `parallel {mj}`), daemon CPU {fmt(pt['daemon_cpu_ms_per_job'], 3)} ms/job"
                     if isinstance(pt, dict) else (pq_err or skipped))
            side.append(f"| throughput, {mj} at once | {fmt(t['jobs_per_s'])} jobs/s, daemon CPU {fmt(t['daemon_cpu_ms_per_job'], 3)} ms/job | {ptext} | runs jobs on threads of one process: not comparable |")
    if "memory" in fig:
        m = fig["memory"]
        pr = pq.get("daemon_idle_rss_kb")
        side.append(f"| daemon RSS, idle | {m['daemon_idle']['rss_kb'] / 1024:.1f} MB | {f'{pr / 1024:.1f} MB' if pr else (pq_err or skipped)} | no daemon (a library); flow process peak RSS above |")
        big = max((k for k in m if k.startswith("daemon_") and k[7:].isdigit()), key=lambda k: int(k[7:]), default=None)
        tps = pget(pq, "throughput")
        after = max((v.get("rss_kb_after", 0) for v in tps.values()), default=0) if isinstance(tps, dict) else 0
        if big:
            side.append(f"| daemon RSS, loaded | {m[big]['rss_kb'] / 1024:.1f} MB with {big[7:]} jobs running | {f'{after / 1024:.1f} MB after the throughput runs (1000 finished tasks kept)' if after else (pq_err or skipped)} | - |")
    ph = []
    for name, rows_ in r.get("phases", {}).items():
        if not rows_:
            continue
        ph.append(f"**{name}** (n = {rows_[0]['n']})")
        ph.append("")
        ph.append("| from | to | p50 (ms) | p95 (ms) |")
        ph.append("|---|---|---|---|")
        for x in rows_:
            ph.append(f"| {x['from']} | {x['to']} | {fmt(x['p50'])} | {fmt(x['p95'])} |")
        ph.append("")
    return "\n".join(out), "\n".join(flo), "\n".join(side), missed, "\n".join(ph)


def machine():
    info = {"nproc": os.cpu_count(), "kernel": platform.release(), "python": platform.python_version(),
            "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}
    try:
        with open("/proc/meminfo") as f:
            info["mem_gb"] = int(f.readline().split()[1]) / 1024 / 1024
        with open("/proc/cpuinfo") as f:
            info["cpu"] = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), "?")
    except OSError:
        pass
    return info


def uptime():
    r = subprocess.run(["uptime"], capture_output=True, text=True)
    return r.stdout.strip() or loadavg()


MEANINGS = """\
- **spawn**: the time from just before `supervisor submit FILE` is spawned to the moment the job's
  only task (`echo > FIFO` under `/bin/sh -c`) writes to a FIFO this harness polls, one job at a
  time. It includes the CLI's own process start (floor: `supervisor --version`), the submit
  (validate, send, store the job durably), the scheduler (`running`), the conductor's spawn (new
  session, its cgroup) and handshake, the plan, the write-ahead report of the task and its durable
  acknowledgement, and the task's spawn and `/bin/sh` start
  (floor: `sh -c 'echo > FIFO'` spawned directly). The budget (p50 under 3 ms) is judged on the
  figure minus the CLI's start floor, i.e. from the moment a CLI could send its request.
  "daemon at_ms" is the same path from the daemon's `pending` event to the task's `running` event
  (millisecond clock of the events: +-1 ms).
- **end to end**: from just before `supervisor submit` of a one-task `true` job to the arrival of
  the job's `success` event on a `supervisor events --json` stream this harness reads (the event is
  published after the store holds the state, so `status` would show it). Event relay (daemon to
  the events CLI to this process) adds tens of microseconds.
- **cancel (daemon)**: a job whose task is `sleep 60` (revert `true`) is running; from just before
  `supervisor cancel JOB` is spawned to the arrival of the job's `cancelled` event: CLI start, the
  order, `cancelling` stored, Cancel sent, SIGTERM to the task's group, the revert's write-ahead,
  its spawn and end, the job's end stored. Budget: 10 ms plus the revert's own spawn (floor `sh -c
  true`), judged after the CLI start. **cancel (`run`)**: SIGINT to `supervisor run` to its exit
  (exit code 3), same job.
- **kill precision**: the same kind of job with `cancel_timeout` 300 ms and a revert that ignores
  SIGTERM and sleeps (`trap '' TERM INT; sleep 60`); from just before `cancel` is spawned to the
  `killed` event (everything of the job SIGKILLed and reaped, the skipped revert recorded), minus
  the 300 ms: the overshoot. The judged figure is measured from the CLI's exit (by then the daemon
  holds the order and has armed its timer); the notes give it from the CLI's spawn (an upper
  bound, with the CLI's start) and from the store's own `cancelling` and `killed` times. After
  each `killed` event the harness checks that no process of the job's session is left.
- **kill visible**: a running `sleep` job; from just before `supervisor kill JOB` is spawned to the
  arrival of the `killed` event; and, in alternate rounds, to the first `supervisor status --json`
  (run in a loop right after `kill` exits) that shows `killed`: the operator's view, which adds at
  least one more CLI process start.
- **throughput**: a fresh daemon with `--max-jobs N`; N blocker jobs (`exec sleep 600`) fill the
  slots, the trivial jobs (`true`) are submitted behind them (4 submitters in parallel, not
  timed), then the blockers' `sleep` processes get SIGTERM and the clock runs until every trivial
  job's terminal event arrived: the daemon draining its queue. Daemon CPU is the daemon's own
  utime+stime (`/proc/PID/stat`, all threads) over the drain, per job; "whole job tree" is its
  cutime+cstime (the conductors it reaped, and their tasks), per job. Clock ticks are 10 ms, so CPU
  per job has +-10 ms / jobs of resolution.
- **per-task overhead**: `supervisor run` of a job of N `true` tasks (each `/bin/sh -c true`),
  wall time, minus the median wall time of a one-task job, divided by N-1. "Minus the floor"
  subtracts the spawn and reap of `/bin/sh -c true` measured here, which leaves what the
  supervisor adds per task: the write-ahead report and its durable acknowledgement (an SQLite
  commit with fsync), the spawn with its pipes, the step's end, the reports. The same job is also
  run with `SUPERVISOR_DURABILITY=normal` (no fsync) where the binary supports it, to separate
  the fsync from the rest.
- **memory**: VmRSS (resident, shared pages included), RssAnon (private) and PSS (shared pages
  divided among their users) from `/proc/PID/status` and `smaps_rollup`: the conductor of a running
  job, the daemon idle, and the daemon with 100 and 1000 jobs all running a `sleep` (the daemon's
  `--max-jobs` at 1000).
- **floors** are measured by this harness with `os.posix_spawn` + `waitpid` (no shell) in the same
  run: a first batch before the figures, then one sample of each between the rounds of the
  latency figures, so that floors and figures see the same load. "p50 / floor" divides the
  figure's p50 by the sum of the floors on its path named in the row. The budgets of the figures
  that begin with a CLI process (spawn, end to end, cancel, kill visible) are judged on the p50
  minus the CLI's start floor (`supervisor --version`); the table shows both. The conductor's floor is
  real: `conductor-worker` spawned as the daemon spawns it (new session, a listening socket on fd
  3), connected to, sent the protocol's hello, timed to its hello back.
- **pueue**: `pueued` with its own config dir, `pueue add -- true`, then `pueue status --json`
  every 5 ms until the task is Done; `pueue kill` of a running `sleep 60` until Done/Killed shows;
  throughput: `pueue pause`, add the jobs, `pueue parallel N`, `pueue start`, poll every 250 ms
  until all are Done (200 jobs at parallel 2, 1000 otherwise; the polls add to its daemon CPU).
  pueue has no revert, so no cancel row; its throughput and latency are bounded by its daemon's
  300 ms loop.
- **TaskFlow**: in one Python process, a linear flow of no-op tasks on the serial engine, in memory
  (1000 tasks) and with the SQLAlchemy + SQLite store (`sqlite:///FILE`; 200 tasks, because its
  cost per task grows with the flow and 1000 would take many minutes); per task = (N-task flow -
  one-task flow) / (N - 1), load + run, after a warm-up; peak RSS is the process's ru_maxrss. The cancel
  story is the seed write-up's decorator: a flag checked before and after each execute; the flag is
  set 0.1 s into a 2 s execute and the clock runs until `engine.run()` returns with the flow
  reverted. There is no per-job kill in TaskFlow (killing the conductor stops all its jobs).
"""


def markdown(r, args, figures, floors, side, missed, phases=""):
    m = r["machine"]
    lines = ["# Benchmarks", ""]
    lines.append("Generated by `bench/run.sh` (the harness is `bench/bench.py`, Python standard library only). "
                 "Re-run it to refresh this file; the analysis at the end is `bench/NOTES.md`, written by hand.")
    lines.append("")
    lines.append(f"- machine: {m.get('nproc')} CPUs ({m.get('cpu', '?')}), {m.get('mem_gb', 0):.1f} GiB memory, Linux {m.get('kernel')}, Python {m.get('python')}")
    lines.append(f"- date: {m.get('date')}; the run took {r.get('seconds', 0) / 60:.1f} minutes")
    lines.append(f"- command: `{args.command}`{' (quick mode: fewer rounds, no peers)' if args.quick else ''}")
    lines.append(f"- binaries: {args.built or args.sv}")
    if getattr(args, "from_json", None):
        lines.append("- rendered again from that run's results (`bench/bench.py --from-json`), to add the hand-written analysis")
    lines.append(f"- load before: `{r.get('load_start')}`")
    lines.append(f"- load after: `{r.get('load_end')}`")
    lines.append("- load average (1, 5, 15 min) at the start of each section: " + "; ".join(f"{w}: {l}" for w, l in r.get("load", [])))
    lines.append("")
    lines.append("All times in milliseconds, p50 / p95 / max over the rounds (n in the \"how\" column). "
                 "This is a 2-core VM shared with other work; a load average above 2 means the figures include waiting for a CPU. "
                 "The load average counts the benchmark's own processes too: about 1 during the throughput, memory and peer sections.")
    lines.append("")
    lines.append("## Figures")
    lines.append("")
    lines.append(figures)
    lines.append("")
    lines.append("Budgets missed: " + ("; ".join(missed) if missed else "none") + ".")
    lines.append("")
    lines.append("## Floors (same run)")
    lines.append("")
    lines.append(floors)
    lines.append("")
    lines.append("## Side by side")
    lines.append("")
    lines.append(side)
    lines.append("")
    if phases:
        lines.append("## Where the time goes (the product's own log timestamps)")
        lines.append("")
        lines.append("Each interval runs from one log line of the job to the next (daemon log, text; the conductor's log, "
                     "JSON lines; wall clock, microseconds), the first from just before the CLI was spawned; logging is on at "
                     "its default level (info) during every figure.")
        lines.append("")
        lines.append(phases)
    scale_md = scale.report(r)
    if scale_md:
        lines.append(scale_md)
    lines.append("## What each figure means")
    lines.append("")
    lines.append(MEANINGS)
    if r.get("notes"):
        lines.append("Harness notes: " + "; ".join(r["notes"]))
        lines.append("")
    if args.notes and os.path.exists(args.notes):
        with open(args.notes) as f:
            lines.append(f.read().rstrip() + "\n")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------


def run_sections(b, args, sections):
    log("floors")  # always: every figure is shown next to them
    b.floors()
    if "latencies" in sections:
        log("daemon latencies")
        b.latencies()
        log("spawn with session containment")
        b.spawn_session()
    if "run" in sections:
        log("`run`: cancel and per-task overhead")
        b.run_mode()
    if "throughput" in sections:
        log("throughput")
        b.throughput()
    if "memory" in sections:
        log("memory")
        b.memory()
    scale.run(b, sections)
    if args.peers and not args.quick:
        p = Peers(b, args.peers)
        if "pueue" in sections:
            log("pueue")
            p.pueue()
        if "taskflow" in sections:
            log("TaskFlow")
            p.taskflow()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sv", required=True)
    ap.add_argument("--work", default=None)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--peers", default=None, help="the peers' install dir; none: skip the peers")
    ap.add_argument("--only", default="", help="comma list of sections: floors,latencies,run,throughput,memory,history,live,growth,pueue,taskflow")
    ap.add_argument("--json", default=None, help="write the raw results here")
    ap.add_argument("--markdown", default=None, help="write the report (BENCHMARKS.md) here")
    ap.add_argument("--notes", default=None, help="hand-written analysis appended to the report")
    ap.add_argument("--command", default="python3 bench/bench.py", help="the command, for the report")
    ap.add_argument("--built", default="", help="how the binaries were built, for the report")
    ap.add_argument("--check", action="store_true", help="exit 1 when a budget is missed")
    ap.add_argument("--perf", default=None, help="profile into this dir: perf record of the daemon during each throughput drain, perf/strace of one many-task `run`")
    ap.add_argument("--from-json", default=None, help="only re-render --markdown from the results (--json) of an earlier run")
    args = ap.parse_args()
    if args.from_json:
        with open(args.from_json) as f:
            r = json.load(f)["raw"]
        args.command, args.built, args.quick = r.get("command", args.command), r.get("built", args.built), r.get("quick", False)
        figures, floors, side, missed, phases = report(r, args.quick)
        print(figures)
        if args.markdown:
            write(args.markdown, markdown(r, args, figures, floors, side, missed, phases))
            log(f"wrote {args.markdown}")
        return
    args.work = args.work or tempfile.mkdtemp(prefix="svb.", dir="/tmp")
    os.makedirs(args.work, exist_ok=True)
    b = Bench(args)
    b.r["machine"] = machine()
    b.r["command"], b.r["built"], b.r["quick"] = args.command, args.built, args.quick
    b.r["load_start"] = uptime()
    sections = [s for s in args.only.split(",") if s] or ["floors", "latencies", "run", "throughput", "memory",
                                                          "history", "live", "growth", "pueue", "taskflow"]
    b.r["sections"] = sections
    t0 = time.time()

    def interrupted(signum, _frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, interrupted)
    signal.signal(signal.SIGINT, interrupted)
    try:
        run_sections(b, args, sections)
    finally:
        for d in list(LIVE_DAEMONS):
            with contextlib.suppress(Exception):
                d.stop()
        if getattr(b, "cgroup", None):
            b.cgroup.close()
    b.finish_floors()
    b.note_load("end")
    b.r["load_end"] = uptime()
    b.r["seconds"] = time.time() - t0
    figures, floors, side, missed, phases = report(b.r, args.quick)
    b.r["missed"] = missed
    out = {"figures_md": figures, "floors_md": floors, "side_md": side, "phases_md": phases, "raw": b.r}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1, default=str)
    print(figures)
    print()
    print(floors)
    print()
    print(side)
    print()
    print(phases)
    if missed:
        print("\nmissed budgets: " + "; ".join(missed))
    if args.markdown:
        write(args.markdown, markdown(b.r, args, figures, floors, side, missed, phases))
        log(f"wrote {args.markdown}")
    if args.check and missed:
        sys.exit(1)


if __name__ == "__main__":
    main()
