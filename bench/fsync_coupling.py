#!/usr/bin/env python3
"""Does one process's large write + fsync stall another process's small fsync on the
same filesystem? (The leader's stall while a wiped tracker on the same disk wrote its
restore: BENCHMARKS.md, "A leader's stall during a restore on the same disk".)

A (a thread): appends 4 KiB and fsyncs, every 10 ms, as the leader's Raft log write
does; every latency is recorded. B (the main thread, after 1 s): writes SIZE MiB and
fsyncs it, as a restoring tracker writes snapshot.db; with `--mode behind` it also starts
the write-back of each 8 MiB as it goes and waits for the previous 8 MiB
(sync_file_range), so little dirty data waits for the final fsync.

Usage: bench/fsync_coupling.py DIR [--mib 300] [--mode alone|write|behind] [--runs 3]
Prints one line per run: A's fsync latency p50 / p99 / max in ms, and B's time.
"""

import argparse
import ctypes
import os
import statistics
import threading
import time

STEP = 8  # MiB written behind at a time (--mode behind)
WRITE, WAIT = 2, 1 | 2 | 4  # SYNC_FILE_RANGE_WRITE; WAIT_BEFORE | WRITE | WAIT_AFTER
libc = ctypes.CDLL("libc.so.6", use_errno=True)
libc.sync_file_range.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]


def sync_file_range(fd, offset, length, flags):
    if libc.sync_file_range(fd, offset, length, flags) != 0:
        raise OSError(ctypes.get_errno(), "sync_file_range")


def small_fsyncs(path, stop, out):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        while not stop.is_set():
            t = time.monotonic()
            os.write(fd, b"x" * 4096)
            os.fsync(fd)
            out.append((time.monotonic() - t) * 1000)
            time.sleep(0.01)
    finally:
        os.close(fd)


def big_write(path, mib, behind):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    chunk = os.urandom(1 << 20)
    t = time.monotonic()
    try:
        for k in range(mib):
            os.write(fd, chunk)
            if behind and (k + 1) % STEP == 0:
                start = (k + 1 - STEP) << 20
                sync_file_range(fd, start, STEP << 20, WRITE)
                if start >= STEP << 20:
                    sync_file_range(fd, start - (STEP << 20), STEP << 20, WAIT)
        os.fsync(fd)
    finally:
        os.close(fd)
    return (time.monotonic() - t) * 1000


def run(d, mib, mode):
    lat, stop = [], threading.Event()
    a = threading.Thread(target=small_fsyncs, args=(os.path.join(d, "a.log"), stop, lat))
    a.start()
    b_ms = None
    try:
        time.sleep(1)
        if mode != "alone":
            b_ms = big_write(os.path.join(d, "b.restore"), mib, mode == "behind")
        time.sleep(1)
    finally:
        stop.set()
        a.join(timeout=30)
    lat.sort()
    b = f"; B {mib} MiB in {b_ms:.0f} ms" if b_ms is not None else ""
    print(f"{mode}: A's fsync p50 {statistics.median(lat):.2f} / p99 "
          f"{lat[int(len(lat) * 0.99)]:.1f} / max {lat[-1]:.1f} ms ({len(lat)} fsyncs){b}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dir")
    ap.add_argument("--mib", type=int, default=300)
    ap.add_argument("--mode", choices=["alone", "write", "behind"], default="write")
    ap.add_argument("--runs", type=int, default=3)
    a = ap.parse_args()
    for _ in range(a.runs):
        run(a.dir, a.mib, a.mode)
        for f in ("a.log", "b.restore"):
            try:
                os.remove(os.path.join(a.dir, f))
            except FileNotFoundError:
                pass


if __name__ == "__main__":
    main()
