"""Process helpers for the benchmark harness.

Every process the harness starts goes through `spawn`, is remembered by PID, and is
killed (by that PID, never by name) when the harness exits, however it exits.
Every wait has a timeout.
"""

import atexit
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

_STARTED = []  # Popen objects started by this harness


class BenchError(Exception):
    pass


try:
    import ctypes
    _libc = ctypes.CDLL(None, use_errno=True)
except OSError:
    _libc = None


def _die_with_parent():
    # PR_SET_PDEATHSIG (1): SIGKILL the child if the harness dies without cleaning up.
    if _libc is not None:
        _libc.prctl(1, signal.SIGKILL, 0, 0, 0)


def spawn(args, **kw):
    kw.setdefault("preexec_fn", _die_with_parent)
    p = subprocess.Popen([str(a) for a in args], **kw)
    _STARTED.append(p)
    return p


def stop(p, sig=signal.SIGTERM, timeout=5.0):
    """Asks process `p` (one we started) to stop; kills it after `timeout`."""
    if p is None:
        return
    if p.poll() is None:
        try:
            p.send_signal(sig)
        except ProcessLookupError:
            pass
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                pass


def kill_all_started():
    for p in reversed(_STARTED):
        if p.poll() is None:
            try:
                p.kill()
                p.wait(3)
            except Exception:
                pass


def _on_signal(signum, _frame):
    print(f"\nbench: interrupted by signal {signum}; cleaning up", file=sys.stderr)
    sys.exit(130)  # runs atexit handlers: kill started processes, remove temp dir


atexit.register(kill_all_started)
signal.signal(signal.SIGINT, _on_signal)
signal.signal(signal.SIGTERM, _on_signal)
signal.signal(signal.SIGHUP, _on_signal)


def run(args, timeout, **kw):
    """Runs a command to completion (bounded); returns CompletedProcess."""
    p = spawn(args, **kw)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        p.communicate(timeout=5)
        raise BenchError(f"{Path(str(args[0])).name} timed out after {timeout:.0f} s")
    return subprocess.CompletedProcess(args, p.returncode, out, err)


def proc_status(pid, field):
    """A kB field of /proc/<pid>/status (e.g. VmHWM) in bytes, or None."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def proc_io(pid, field="wchar"):
    try:
        with open(f"/proc/{pid}/io") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _sum_by_thread(pid, value_of):
    """{thread name: sum of `value_of(task dir)`} over the live threads of `pid`;
    numbered names are folded (pool-0, pool-1 ... -> pool). A thread that exits
    mid-walk, or a field that does not parse, is left out."""
    out = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        task = f"/proc/{pid}/task/{tid}"
        try:
            with open(f"{task}/comm") as f:
                name = f.read().strip()
            value = value_of(task)
        except (OSError, IndexError, ValueError):
            continue
        name = re.sub(r"[-_:]?\d+$", "", name) or name
        out[name] = out.get(name, 0.0) + value
    return out


def _stat_cpu_seconds(stat_text):
    """user+system CPU seconds from a /proc stat line."""
    rest = stat_text[stat_text.rindex(")") + 2:].split()
    return (int(rest[11]) + int(rest[12])) / os.sysconf("SC_CLK_TCK")


def queued_by_thread(pid):
    """{thread name: seconds spent runnable but waiting for a core}, from
    /proc/<pid>/task/*/schedstat (its second field, in ns); live threads only."""
    def waited(task):
        with open(f"{task}/schedstat") as f:
            return int(f.read().split()[1]) / 1e9
    return _sum_by_thread(pid, waited)


def cpu_by_thread(pid):
    """{thread name: CPU seconds (user+system)} of process `pid`, from /proc/<pid>/task/*/stat."""
    def cpu(task):
        with open(f"{task}/stat") as f:
            return _stat_cpu_seconds(f.read())
    out = _sum_by_thread(pid, cpu)
    # The process's own figure also counts threads that have exited.
    try:
        with open(f"/proc/{pid}/stat") as f:
            total = _stat_cpu_seconds(f.read())
        gone = total - sum(out.values())
        if gone > 0:
            out["(exited threads)"] = gone
    except OSError:
        pass
    return out


def cpu_diff(after, before):
    return {k: v - before.get(k, 0.0) for k, v in after.items() if v - before.get(k, 0.0) > 0.005}


def fmt_cpu(d):
    total = sum(d.values())
    parts = ", ".join(f"{k} {v:.2f}" for k, v in sorted(d.items(), key=lambda kv: -kv[1]))
    return f"{total:.2f} s CPU ({parts})" if d else "0 s CPU"


class LineProc:
    """A process whose stdout is read line by line on a thread, each line stamped
    with the perf_counter time it was read; stderr goes to a file."""

    def __init__(self, args, name, logdir, stdin=True, env=None, cwd=None):
        self.name = name
        self.args = [str(a) for a in args]
        self.err_path = Path(logdir) / f"{name}.stderr"
        self._errf = open(self.err_path, "wb")
        self.t_spawn = time.perf_counter()
        self.p = spawn(
            self.args,
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._errf,
            env=env,
            cwd=cwd,
        )
        self.pid = self.p.pid
        self.q = queue.Queue()
        self.history = []  # last lines, for error messages
        th = threading.Thread(target=self._reader, daemon=True)
        th.start()

    def _reader(self):
        for raw in self.p.stdout:
            t = time.perf_counter()
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            self.q.put((t, line))
        self.q.put((time.perf_counter(), None))  # EOF

    def alive(self):
        return self.p.poll() is None

    def send(self, line):
        if self.p.stdin is None or self.p.stdin.closed:
            raise BenchError(f"{self.name}: stdin is closed")
        try:
            self.p.stdin.write(line.encode() + b"\n")
            self.p.stdin.flush()
        except BrokenPipeError:
            raise BenchError(f"{self.name}: exited (broken pipe) before {line!r}\n{self.tail()}")

    def close_stdin(self):
        if self.p.stdin and not self.p.stdin.closed:
            try:
                self.p.stdin.close()
            except OSError:
                pass

    def tail(self, n=15):
        try:
            err = self.err_path.read_text(errors="replace").splitlines()[-n:]
        except OSError:
            err = []
        return ("  stdout: " + " | ".join(self.history[-n:]) + "\n  stderr: " + "\n          ".join(err))

    def expect(self, pred, timeout, what, allow_error=False):
        """Consumes stdout lines until one satisfies `pred`; returns (time, line).
        A line starting with 'error:' fails at once unless allow_error."""
        deadline = time.perf_counter() + timeout
        while True:
            left = deadline - time.perf_counter()
            if left <= 0:
                raise BenchError(f"{self.name}: timed out after {timeout:.0f} s waiting for {what}\n{self.tail()}")
            try:
                t, line = self.q.get(timeout=min(left, 0.5))
            except queue.Empty:
                continue
            if line is None:
                self.q.put((t, None))
                raise BenchError(f"{self.name}: exited (code {self.p.poll()}) while waiting for {what}\n{self.tail()}")
            self.history.append(line)
            del self.history[:-50]
            if pred(line):
                return t, line
            if line.startswith("error:") and not allow_error:
                raise BenchError(f"{self.name}: {line} (waiting for {what})\n{self.tail()}")

    def wait_exit(self, timeout):
        try:
            return self.p.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, sig=signal.SIGTERM, timeout=5.0):
        self.close_stdin()
        stop(self.p, sig, timeout)
        self._errf.close()


def quote_arg(s):
    s = str(s)
    if re.search(r'[\s"]', s):
        if '"' in s:
            raise BenchError(f"cannot quote {s!r} for the client shell")
        return f'"{s}"'
    return s
