#!/usr/bin/env python3
"""Raft-mode figures: three `--replication raft` trackers on 127.0.0.1, each with
its own data dir (one cluster key), release build.

1. Durable changes/s and latency: the closed-loop 100-connection `create_group`
   load of loadgen.py, through the leader and through a follower (a follower
   forwards to the leader and replies after applying locally).
2. Failover: one connection to a follower sends `create_group` every 10 ms; the
   leader is killed (-9); the time from the kill to the first `OK` after it.

3. For scale, the same load on one shared-log tracker first (--no-reference skips it),
   and the trackers' CPU per change by thread (from /proc/PID/task/*/stat).

Usage: bench/raft.py [--tracker target/release/tracker] [--seconds 5] [--conns 100] [--kills 3]
Prints JSON; numbers go into BENCHMARKS.md by hand.
"""

import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import loadgen  # noqa: E402
from procs import cpu_by_thread, queued_by_thread  # noqa: E402

KEY = "5f1c0a9e3d7b24c68e0f1a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f\n"
ROLE = re.compile(r"tracker (\d+) (is leader|follows tracker \d+|has no leader) \(term (\d+)\)")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


class Tracker:
    def __init__(self, binary, info, no, data, extra=()):
        self.binary, self.info, self.no, self.data = binary, info, no, data
        self.extra = list(extra)
        self.proc, self.lines, self.addr = None, [], None

    def start(self):
        os.makedirs(self.data, exist_ok=True)
        key = os.path.join(self.data, "cluster.key")
        if not os.path.exists(key):
            with open(key, "w") as f:
                f.write(KEY)
            os.chmod(key, 0o600)
        self.lines = []
        self.proc = subprocess.Popen(
            [self.binary, self.info, str(self.no), "--data-dir", self.data, "--replication", "raft"]
            + self.extra,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        threading.Thread(target=self._tap, args=(self.proc.stderr,), daemon=True).start()
        line = self.proc.stdout.readline()
        m = re.search(r"listening on (\S+)", line)
        if not m:
            raise RuntimeError(f"tracker {self.no} did not start: {line!r}")
        self.addr = m.group(1)

    def _tap(self, f):
        for line in f:
            self.lines.append((time.monotonic(), line))

    def role(self):
        """(is leader, term) from the last role line."""
        for _, line in reversed(self.lines):
            m = ROLE.search(line)
            if m and int(m.group(1)) == self.no:
                return m.group(2) == "is leader", int(m.group(3))
        return False, 0

    def kill9(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()


def load_with_cpu(ts, addr, token, a):
    """loadgen's result plus the trackers' CPU per change (ms, all three trackers,
    by thread name), and each thread's time waiting for a core per change
    (`queued_by_thread`: on 2 shared cores a loop that is runnable but queued is
    what caps the rate); the warm-up second is counted at the measured rate."""
    before = {t.no: cpu_by_thread(t.proc.pid) for t in ts}
    queued_before = {t.no: queued_by_thread(t.proc.pid) for t in ts}
    r = loadgen.run_load(addr, "create_group", [token], conns=a.conns, seconds=a.seconds, procs=2)
    changes = max(r["rps"] * (a.seconds + 1.0), 1)
    per, queued = {}, {}
    for t in ts:
        for name, cpu in cpu_by_thread(t.proc.pid).items():
            key = f"t{t.no}:{name}"
            per[key] = (cpu - before[t.no].get(name, 0.0)) * 1000 / changes
        for name, waited in queued_by_thread(t.proc.pid).items():
            key = f"t{t.no}:{name}"
            queued[key] = (waited - queued_before[t.no].get(name, 0.0)) * 1000 / changes
    r["tracker_cpu_ms_per_change"] = round(sum(per.values()), 3)
    r["by_thread"] = {k: round(v, 3) for k, v in sorted(per.items()) if v >= 0.001}
    r["queued_ms_per_change_by_thread"] = {
        k: round(v, 3) for k, v in sorted(queued.items()) if v >= 0.001}
    return r


def shared_log_reference(binary, root, a):
    """The same load on one shared-log tracker, to scale the figures to the machine's
    state in the same minutes."""
    port = free_port()
    info = os.path.join(root, "shared_info.txt")
    with open(info, "w") as f:
        f.write(f"127.0.0.1:{port}\n")
    data = os.path.join(root, "shared")
    os.makedirs(data)
    p = subprocess.Popen([binary, info, "1", "--data-dir", data], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        m = re.search(r"listening on (\S+)", p.stdout.readline())
        if not m:
            raise RuntimeError("the shared-log tracker did not start")
        token = loadgen.login(m.group(1), "benchuser", "benchpass")
        return loadgen.run_load(m.group(1), "create_group", [token], conns=a.conns, seconds=a.seconds, procs=2)
    finally:
        p.kill()
        p.wait()


def leader(trackers, timeout=20):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        best = None
        for t in trackers:
            if t.proc.poll() is None:
                is_leader, term = t.role()
                if is_leader and (best is None or term > best[0]):
                    best = (term, t)
        if best:
            return best[1]
        time.sleep(0.05)
    raise RuntimeError("no leader")


def cluster(binary, root, extra=()):
    ports = [free_port() for _ in range(3)]
    info = os.path.join(root, "tracker_info.txt")
    with open(info, "w") as f:
        f.write("".join(f"127.0.0.1:{p}\n" for p in ports))
    ts = [Tracker(binary, info, i + 1, os.path.join(root, f"host{i + 1}"), extra) for i in range(3)]
    ts[0].start()
    for t in ts[1:]:
        os.makedirs(t.data, exist_ok=True)
        with open(os.path.join(ts[0].data, "tracker_key")) as src, open(os.path.join(t.data, "tracker_key"), "w") as dst:
            dst.write(src.read())
        os.chmod(os.path.join(t.data, "tracker_key"), 0o600)
        t.start()
    return ts


def failover(ts, token):
    """ms from the leader's kill -9 to the first OK through a survivor."""
    lead = leader(ts)
    lead_term = lead.role()[1]
    follower = next(t for t in ts if t is not lead)
    conn = loadgen.Conn(follower.addr, timeout=30)
    for i in range(20):  # warm: the link works
        conn.call(token, "create_group", f"warm{os.urandom(3).hex()}{i}")
    lead.kill9()
    killed = time.monotonic()
    n = 0
    while True:
        n += 1
        ok, head, _ = conn.call(token, "create_group", f"fo{os.urandom(4).hex()}{n}")
        if ok:
            took = (time.monotonic() - killed) * 1000
            break
        time.sleep(0.01)
    conn.close()
    roles = {t.no: t.role() for t in ts if t.proc.poll() is None}
    print(f"killed tracker {lead.no} (leader, term {lead_term}); {took:.0f} ms; then {roles}", file=sys.stderr)
    lead.start()
    return took


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tracker", default=os.path.join(os.path.dirname(HERE), "target/release/tracker"))
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--conns", type=int, default=100)
    ap.add_argument("--kills", type=int, default=3)
    ap.add_argument("--no-reference", action="store_true", help="skip the shared-log reference run")
    a = ap.parse_args()
    out = {}
    with tempfile.TemporaryDirectory() as root:
        if not a.no_reference:
            out["shared_log_reference"] = shared_log_reference(a.tracker, root, a)
        ts = cluster(a.tracker, root)
        try:
            lead = leader(ts)
            token = loadgen.login(lead.addr, "benchuser", "benchpass")
            time.sleep(0.5)
            follower = next(t for t in ts if t is not lead)
            out["via_leader"] = load_with_cpu(ts, lead.addr, token, a)
            out["via_follower"] = load_with_cpu(ts, follower.addr, token, a)
            times = []
            for _ in range(a.kills):
                times.append(failover(ts, token))
                leader(ts)
                time.sleep(2)
            out["kill9_leader_to_first_ok_ms"] = times
        finally:
            for t in ts:
                t.kill9()
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
