#!/usr/bin/env python3
"""Closed-loop load generator for the swarmshare tracker protocol.

Each connection keeps exactly one request in flight: it sends the next request as
soon as the previous reply's END_OF_REPLY line arrives, and the time between the
two is that request's latency. Connections are spread over worker processes, each
running one selectors loop (no thread per connection, so the generator itself
costs as little CPU as Python allows; it reports its own CPU use so a saturated
generator is visible).

Protocol (wire/src/tracker_msg.rs): request `<token> <command> <args...>\\n`, fields
separated by one space and escaped (`\\\\`, `\\s` space, `\\n`, `\\r`, `\\t`, `\\0` for the
empty string), `-` as token before login; a reply is `OK ...` or `ERR reason`, data
rows `- ...`, then the line `END_OF_REPLY`.

Standalone use:
  loadgen.py ADDR --op list_groups --conns 100 --seconds 5 [--user U --password P]
"""

import argparse
import json
import multiprocessing as mp
import os
import selectors
import socket
import time

EOR = b"END_OF_REPLY\n"


def escape(s):
    if s == "":
        return "\\0"
    return (s.replace("\\", "\\\\").replace(" ", "\\s").replace("\n", "\\n")
            .replace("\r", "\\r").replace("\t", "\\t"))


def request(token, command, *args):
    fields = [token or "-", command] + [str(a) for a in args]
    return (" ".join(escape(f) for f in fields) + "\n").encode()


class Conn:
    """A blocking protocol connection for setup work."""

    def __init__(self, addr, timeout=30):
        host, port = addr.rsplit(":", 1)
        self.s = socket.create_connection((host, int(port)), timeout=timeout)
        self.s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def call(self, token, command, *args):
        """Returns (ok, head_fields_or_reason, rows)."""
        self.s.sendall(request(token, command, *args))
        while True:
            i = self._eor()
            if i >= 0:
                reply, self.buf = self.buf[:i], self.buf[i + len(EOR):]
                break
            data = self.s.recv(1 << 16)
            if not data:
                raise ConnectionError("tracker closed the connection")
            self.buf += data
        lines = reply.decode("utf-8", "replace").splitlines()
        if not lines:
            return False, "empty reply", []
        if lines[0].startswith("ERR"):
            return False, lines[0][4:], []
        head = lines[0].split(" ")[1:]
        rows = [l[2:].split(" ") for l in lines[1:] if l.startswith("- ")]
        return True, head, rows

    def _eor(self):
        i = 0
        while True:
            i = self.buf.find(EOR, i)
            if i < 0 or i == 0 or self.buf[i - 1] == 0x0A:
                return i
            i += 1

    def close(self):
        self.s.close()


def login(addr, user, password):
    """create_user (if new) + login; returns the token."""
    c = Conn(addr)
    c.call(None, "create_user", user, password)
    ok, head, _ = c.call(None, "login", user, password)
    c.close()
    if not ok or not head:
        raise RuntimeError(f"login {user} failed: {head}")
    return head[0]


def make_request_fn(op, token, group, worker):
    if op == "list_groups":
        b = request(token, "list_groups")
        return lambda conn, seq: b
    if op == "list_files":
        b = request(token, "list_files", group)
        return lambda conn, seq: b
    if op == "create_group":
        prefix = f"{token} create_group bg{os.urandom(4).hex()}w{worker}c"  # a new name every time
        return lambda conn, seq: f"{prefix}{conn}n{seq}\n".encode()
    if op == "whoami":
        b = request(token, "whoami")
        return lambda conn, seq: b
    raise ValueError(f"unknown op {op}")


def _worker(addr, op, tokens, group, nconns, warmup, seconds, worker, out):
    try:
        host, port = addr.rsplit(":", 1)
        sel = selectors.DefaultSelector()
        fns = [make_request_fn(op, tokens[i % len(tokens)], group, worker) for i in range(nconns)]
        conns = []
        for i in range(nconns):
            s = socket.create_connection((host, int(port)), timeout=10)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            s.setblocking(False)
            st = {"i": i, "s": s, "buf": bytearray(), "t": 0.0, "seq": 0}
            conns.append(st)
            sel.register(s, selectors.EVENT_READ, st)
        lat = []
        errors = 0
        first_err = None
        total = 0
        t0 = time.perf_counter()
        t_measure = t0 + warmup
        t_end = t_measure + seconds
        cpu0 = time.process_time()
        for st in conns:
            st["t"] = time.perf_counter()
            st["s"].sendall(fns[st["i"]](st["i"], 0))
        now = t0
        while now < t_end:
            events = sel.select(timeout=1.0)
            now = time.perf_counter()
            if not events and now - t0 > warmup + seconds + 30:
                break
            for key, _ in events:
                st = key.data
                try:
                    data = st["s"].recv(1 << 16)
                except BlockingIOError:
                    continue
                if not data:
                    raise ConnectionError("tracker closed a load connection")
                buf = st["buf"]
                buf += data
                # Complete replies in the buffer (one in flight, so at most one).
                i = buf.find(EOR)
                while i >= 0 and i > 0 and buf[i - 1] != 0x0A:
                    i = buf.find(EOR, i + 1)
                if i < 0:
                    continue
                if buf[:3] == b"ERR":
                    errors += 1
                    if first_err is None:
                        first_err = bytes(buf[:200]).decode("utf-8", "replace").splitlines()[0]
                del buf[:i + len(EOR)]
                now = time.perf_counter()
                if st["t"] >= t_measure and now <= t_end:
                    lat.append(now - st["t"])
                total += 1
                st["seq"] += 1
                st["t"] = now
                if now < t_end:
                    st["s"].sendall(fns[st["i"]](st["i"], st["seq"]))
        cpu = time.process_time() - cpu0
        for st in conns:
            st["s"].close()
        out.send({"lat": lat, "errors": errors, "first_err": first_err, "total": total,
                  "cpu": cpu, "wall": time.perf_counter() - t0})
    except Exception as e:  # reported to the parent
        out.send({"fatal": f"{type(e).__name__}: {e}"})
    finally:
        out.close()


def run_load(addr, op, tokens, group=None, conns=100, seconds=5.0, warmup=1.0, procs=None):
    """Runs the load; returns dict(rps, p50_ms, p99_ms, n, errors, first_err, gen_cpu)."""
    procs = procs or 1
    procs = max(1, min(procs, conns))
    ctx = mp.get_context("fork")
    workers = []
    for w in range(procs):
        n = conns // procs + (1 if w < conns % procs else 0)
        rd, wr = ctx.Pipe(duplex=False)
        p = ctx.Process(target=_worker, args=(addr, op, tokens, group, n, warmup, seconds, w, wr), daemon=True)
        p.start()
        wr.close()
        workers.append((p, rd))
    results = []
    for p, rd in workers:
        if rd.poll(warmup + seconds + 60):
            results.append(rd.recv())
        else:
            results.append({"fatal": "load worker did not report in time"})
        p.join(5)
        if p.is_alive():
            p.kill()
    fatal = [r["fatal"] for r in results if "fatal" in r]
    if fatal:
        raise RuntimeError("; ".join(fatal))
    lat = sorted(x for r in results for x in r["lat"])
    n = len(lat)
    errors = sum(r["errors"] for r in results)
    first_err = next((r["first_err"] for r in results if r["first_err"]), None)
    gen_cpu = sum(r["cpu"] for r in results) / max(r["wall"] for r in results)

    def pct(q):
        return lat[min(n - 1, int(q * n))] * 1000 if n else float("nan")

    return {"rps": n / seconds, "p50_ms": pct(0.50), "p99_ms": pct(0.99), "n": n,
            "errors": errors, "first_err": first_err, "gen_cpu_cores": gen_cpu}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("addr")
    ap.add_argument("--op", default="list_groups", choices=["list_groups", "list_files", "create_group", "whoami"])
    ap.add_argument("--group", default="bench-g0")
    ap.add_argument("--conns", type=int, default=100)
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--warmup", type=float, default=1)
    ap.add_argument("--procs", type=int, default=None)
    ap.add_argument("--user", default="benchuser")
    ap.add_argument("--password", default="benchpass")
    a = ap.parse_args()
    token = login(a.addr, a.user, a.password)
    if a.op == "list_files":
        Conn(a.addr).call(token, "create_group", a.group)
    r = run_load(a.addr, a.op, [token], a.group, a.conns, a.seconds, a.warmup, a.procs)
    print(json.dumps(r, indent=1))


if __name__ == "__main__":
    main()
