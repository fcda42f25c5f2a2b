#!/usr/bin/env python3
"""Catch-up of a wiped tracker by a Raft snapshot larger than one peer frame
(issue 13): three `--replication raft` trackers on 127.0.0.1 (release build).

The state is made big quickly, not by a million small changes: `upload_file` of
FILES files of 100,000 pieces each (a 4 MB request line, 4 MB of piece hashes in
the state), so ~40 files make a ~150 MB state, the size 1M changes reach.
`--snapshot-every 10` keeps the Raft log short, so a wiped tracker can only catch
up by the snapshot. Then one follower is killed (-9), its data dir emptied (the
cluster key and ticket key kept, as an operator restores them) and restarted; the
figures are from its spawn to: listening, "restored a snapshot" in its log, and
serving every file (`list_files` answered by it).

Baseline, same run: the snapshot file's bytes sent over a loopback TCP socket and
written to a file with one fsync (the least any catch-up must do).

Loop stalls: from the restart until the wiped tracker serves every file, one
connection to each tracker sends `whoami` every 10 ms; the longest wait for a reply
(and how many replies came) says how long each tracker's loop stood still (the
wiped one is probed once it listens; a refused or broken connection is retried).
The same probes run during the load, for scale: what applying one 4 MB change
costs any tracker's loop.

Usage: bench/raft_catch_up.py [--tracker target/release/tracker] [--files 38]
Prints JSON; numbers go into BENCHMARKS.md by hand.
"""

import argparse
import json
import os
import shutil
import socket
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import loadgen  # noqa: E402
from raft import cluster, leader  # noqa: E402

PIECES = 100_000
PIECE_SIZE = 512 * 1024


def upload(conn, token, i):
    """One 4 MB change; resent (the same file) while the cluster says no quorum:
    the leader's loop pauses while it snapshots a state this big."""
    hashes = os.urandom(PIECES * 20).hex()
    args = ("big", f"file{i}", PIECES * PIECE_SIZE, PIECE_SIZE, os.urandom(20).hex(), hashes,
            "127.0.0.1:7000")
    for _ in range(10):
        ok, head, _ = conn.call(token, "upload_file", *args)
        if ok:
            return
        if "no quorum" not in str(head):
            break
    raise RuntimeError(f"upload {i}: {head}")


def file_count(addr, token):
    try:
        c = loadgen.Conn(addr, timeout=60)
        ok, _, rows = c.call(token, "list_files", "big")
        c.close()
        return len(rows) if ok else -1
    except OSError:
        return -1


def wait_for(cond, timeout, step=0.05):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(step)
    return False


def loopback_baseline(path, root):
    """Seconds to send `path` over loopback TCP and write it durably."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    out = os.path.join(root, "baseline.copy")

    def receive():
        conn, _ = srv.accept()
        with open(out, "wb") as f:
            while True:
                data = conn.recv(1 << 20)
                if not data:
                    break
                f.write(data)
            f.flush()
            os.fsync(f.fileno())
        conn.close()

    t0 = time.monotonic()
    th = threading.Thread(target=receive)
    th.start()
    s = socket.create_connection(srv.getsockname())
    with open(path, "rb") as f:
        s.sendfile(f)
    s.close()
    th.join()
    secs = time.monotonic() - t0
    os.remove(out)
    srv.close()
    return secs


class Probe:
    """`whoami` every 10 ms against one tracker; the longest reply wait."""

    def __init__(self, addr, token):
        self.addr, self.token = addr, token
        self.max_ms, self.replies, self.errors, self.max_at = 0.0, 0, 0, None
        self.samples = []  # (monotonic start, ms)
        self.stop = threading.Event()
        self.th = threading.Thread(target=self._run, daemon=True)
        self.th.start()

    def _run(self):
        conn = None
        while not self.stop.is_set():
            try:
                if conn is None:
                    conn = loadgen.Conn(self.addr, timeout=120)
                t, wall = time.monotonic(), time.time()
                conn.call(self.token, "whoami")
                ms = (time.monotonic() - t) * 1000
                self.samples.append((t, ms))
                if ms > self.max_ms:
                    self.max_ms, self.max_at = ms, wall
                self.replies += 1
            except OSError:
                self.errors += 1
                conn = None
            time.sleep(0.01)

    def max_between(self, start, end):
        """The longest wait of a call in flight at some point in [start, end]."""
        if start is None or end is None:
            return None
        waits = [ms for t, ms in self.samples if t <= end and t + ms / 1000 >= start]
        return round(max(waits), 1) if waits else None

    def result(self):
        self.stop.set()
        self.th.join(150)
        at = self.max_at and time.strftime("%H:%M:%S", time.gmtime(self.max_at))
        at = at and f"{at}.{int(self.max_at % 1 * 1000):03d}"
        return {"max_ms": round(self.max_ms, 1), "max_at_utc": at, "replies": self.replies,
                "reconnects": self.errors}


def first_mono(t, text):
    """When `text` first appeared in tracker `t`'s log (monotonic, as read)."""
    return next((at for at, line in t.lines if text in line), None)


def first_line_at(t, text, since):
    for at, line in t.lines:
        if text in line:
            return at - since
    return None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tracker", default="target/release/tracker")
    ap.add_argument("--files", type=int, default=38)
    ap.add_argument("--logs", default=".", help="where the trackers' logs are written")
    a = ap.parse_args()
    root = tempfile.mkdtemp(prefix="raft_catch_up.")
    ts = cluster(os.path.abspath(a.tracker), root, ["--snapshot-every", "10"])
    out = {"loadavg_before": os.getloadavg()}
    try:
        lead = leader(ts)
        token = loadgen.login(lead.addr, "benchuser", "benchpass")
        c = loadgen.Conn(lead.addr, timeout=120)
        ok, head, _ = c.call(token, "create_group", "big")
        if not ok:
            raise RuntimeError(f"create_group: {head}")
        t0 = time.monotonic()
        loading = {f"tracker{t.no}": Probe(t.addr, token) for t in ts}
        for i in range(a.files):
            upload(c, token, i)
        c.close()
        out["load_secs"] = round(time.monotonic() - t0, 1)
        # For scale: each tracker's longest stall while it applies the 4 MB changes.
        out["loop_stalls_during_load"] = {n: p.result() for n, p in loading.items()}
        if not all(wait_for(lambda: file_count(t.addr, token) == a.files, 120) for t in ts):
            raise RuntimeError("a tracker never caught up before the wipe")
        # (The leader may have changed during the load.)
        lead = leader(ts)
        snap = os.path.join(lead.data, "snapshot.db")
        wait_for(lambda: os.path.exists(snap) and os.path.getsize(snap) > 100e6, 120)
        victim = next(t for t in ts if t is not lead)
        out["leader_and_wiped"] = [lead.no, victim.no]
        out["snapshot_mb"] = round(os.path.getsize(snap) / 1e6, 1)
        out["baseline_loopback_copy_fsync_secs"] = round(loopback_baseline(snap, root), 2)

        victim.kill9()
        for name in os.listdir(victim.data):
            if name not in ("cluster.key", "tracker_key"):
                p = os.path.join(victim.data, name)
                shutil.rmtree(p) if os.path.isdir(p) else os.remove(p)
        out["loadavg_at_restart"] = os.getloadavg()
        other = next(t for t in ts if t is not lead and t is not victim)
        probes = {"leader": Probe(lead.addr, token), "other_follower": Probe(other.addr, token)}
        t_spawn = time.monotonic()
        victim.start()
        out["listening_secs"] = round(time.monotonic() - t_spawn, 2)
        probes["wiped"] = Probe(victim.addr, token)
        caught = wait_for(lambda: file_count(victim.addr, token) == a.files, 240, step=0.2)
        out["caught_up_secs"] = round(time.monotonic() - t_spawn, 2) if caught else None
        out["loop_stalls"] = {name: p.result() for name, p in probes.items()}
        # The steps themselves: the leader's from deciding to send the snapshot
        # to 1 s later; the wiped tracker's while its restore is being written.
        sent = first_mono(lead, "sending it a snapshot")
        out["leader_max_ms_snapshot_send_to_1s"] = probes["leader"].max_between(
            sent, sent and sent + 1.0)
        out["wiped_max_ms_restore_in_flight"] = probes["wiped"].max_between(
            first_mono(victim, "restoring a snapshot"),
            first_mono(victim, "restored a snapshot"))
        restored = first_line_at(victim, "restored a snapshot", t_spawn)
        out["restored_snapshot_secs"] = round(restored, 2) if restored is not None else None
        out["victim_snapshot_mb"] = round(
            os.path.getsize(os.path.join(victim.data, "snapshot.db")) / 1e6, 1)
        out["loadavg_after"] = os.getloadavg()
        out["victim_warnings"] = [l.strip() for _, l in victim.lines if "WARN" in l][:5]
    finally:
        for t in ts:
            out[f"tracker{t.no}_exit"] = t.proc.poll()
            t.kill9()
            with open(os.path.join(a.logs, f"tracker{t.no}.log"), "w") as f:
                f.writelines(line for _, line in t.lines)
        shutil.rmtree(root, ignore_errors=True)
        print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
