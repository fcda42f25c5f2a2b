"""The capped swarm of issue 14 (`bench/run.sh --only swarm`).

1 seeder -> N leechers (default 8 and 16) on the test file, every client with the
same upload limit (--swarm-limit), beside aria2c with the same cap
(--max-upload-limit) over opentracker on the same file. Reported per swarm: the
time until every leecher has the whole file against the ideal `size / limit`
(the seeder must send every byte once at its limit), the bytes the seeder
uploaded against the file size, and the CPU seconds of each kind of process.
Then a scale run: 1 seeder -> --scale-leechers (default 50) on the first
--scale-mib (default 64) MiB of the file, capped at --scale-limit, with the
tracker's and the clients' peak RSS.

Completion of a swarmshare leecher is its file appearing at the destination
(renamed into place only after the whole-file SHA-1 matched), polled every
20 ms; an aria2c leecher's is its RPC status (polled every 100 ms, 16 processes).
"""

import hashlib
import os
import shutil
import statistics
import time

import sockstat
from procs import BenchError, cpu_by_thread, proc_status

MIB = 1 << 20


def parse_rate(text):
    """`8M` -> bytes per second (powers of 1024, like the client and aria2c)."""
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:].upper(), 1)
    return int(text[:-1] if mult > 1 else text) * mult


def same_file(got, want):
    def sha1(p):
        d = hashlib.sha1()
        with open(p, "rb") as f:
            while chunk := f.read(8 * MIB):
                d.update(chunk)
        return d.hexdigest()
    if sha1(got) != sha1(want):
        raise BenchError(f"{got}: SHA-1 differs from {want}")


def cpu_total(pid):
    return sum(cpu_by_thread(pid).values())


class Procs:
    """CPU seconds of a set of processes between start() and stop(), by role."""

    def __init__(self, roles):
        self.roles = roles  # {role: [pid, ...]}
        self.t0 = {}

    def start(self):
        self.t0 = {p: cpu_total(p) for pids in self.roles.values() for p in pids}
        return self

    def stop(self):
        out = {}
        for role, pids in self.roles.items():
            secs = [cpu_total(p) - self.t0.get(p, 0.0) for p in pids]
            out[role] = (sum(secs), len(pids))
        return out


def fmt_cpu_roles(d, wall):
    parts = []
    for role, (secs, n) in d.items():
        each = f", {secs / n:.2f} each" if n > 1 else ""
        parts.append(f"{role} {secs:.2f} s{each}")
    return f"CPU over {wall:.1f} s: " + "; ".join(parts)


def ours(ctx, h, path, n, limit, tag):
    """One swarmshare run; returns a dict of figures."""
    size = path.stat().st_size
    tr = h.Tracker(ctx, ctx.tmp / f"swarm-{tag}" / "data")
    tr.start()
    clients = []
    g = f"sw{tag}"
    try:
        seeder = h.Client(ctx, tr, f"{g}-seed", extra=["--upload-limit", limit])
        clients.append(seeder)
        seeder.user(f"{g}s", g, create_group=True)
        seeder.upload(path, g)
        leechers = []
        for i in range(n):
            # One request at each peer (a download has at most 16 connections):
            # --threads is the number of pieces in flight (SPEC.md).
            threads = str(max(8, min(16, n)))
            c = h.Client(ctx, tr, f"{g}-l{i}",
                         extra=["--upload-limit", limit, "--threads", threads])
            clients.append(c)
            leechers.append(c)
            c.user(f"{g}l{i}")
            c.join(g, seeder)
        dests = []
        for i in range(n):
            d = ctx.tmp / "dl" / f"{g}-l{i}"
            d.mkdir(parents=True)
            dests.append(d / path.name)
        ports = sockstat.listen_ports(seeder.pid)
        marks = [size // 2, size]
        meters = [sockstat.UploadMeter(p).start(marks=marks) for p in ports]
        procs = Procs({"tracker": [tr.proc.pid], "seeder": [seeder.pid],
                       "leechers": [c.pid for c in leechers]}).start()
        ideal = size / parse_rate(limit)
        deadline = time.perf_counter() + 60 + 4 * ideal
        t_start = time.perf_counter()
        for c, d in zip(leechers, dests):
            c.cmd(f"download_file {g} {path.name} {d.parent}/", "downloading ")
        done = {}
        while len(done) < n:
            if time.perf_counter() > deadline:
                raise BenchError(f"swarm {tag}: {n - len(done)} of {n} leechers not done after "
                                 f"{deadline - t_start:.0f} s")
            for i, d in enumerate(dests):
                if i not in done and d.exists():
                    done[i] = time.perf_counter() - t_start
            time.sleep(0.02)
        secs = max(done.values())
        cpu = procs.stop()
        up = sum(m.stop() for m in meters) / size if meters else None
        for d in dests:
            if d.stat().st_size != size:
                raise BenchError(f"{d}: {d.stat().st_size} bytes, expected {size}")
        same_file(dests[0], path)
        rss = [proc_status(c.pid, "VmHWM") or 0 for c in clients]
        # When the seeder had sent half the file's bytes, and all of them (once
        # each at best): against the ideal, how much of the time goes to the
        # seeder and how much to the leechers passing the last pieces on.
        sent_by = {b: min((m.crossed[b] for m in meters if b in m.crossed), default=None)
                   for b in marks} if len(meters) == 1 else {}
        seeder_marks = [(b / size, t - t_start) for b, t in sent_by.items() if t is not None]
        return {"secs": secs, "ideal": ideal, "up": up, "cpu": cpu, "seeder_marks": seeder_marks,
                "first": min(done.values()), "median": statistics.median(done.values()),
                "tracker_rss": tr.hwm(), "client_rss_max": max(rss), "client_rss_median": statistics.median(rss)}
    finally:
        for c in clients:
            c.quit()
        tr.stop()
        shutil.rmtree(ctx.tmp / "dl", ignore_errors=True)


def aria(ctx, h, world, n, limit, tag):
    """The same swarm with aria2c over opentracker; returns a dict of figures."""
    size = ctx.file.stat().st_size
    cap = f"--max-upload-limit={limit}"
    procs_ = []
    try:
        d = world.dir / f"swarm-seed-{tag}"
        d.mkdir()
        os.link(ctx.file, d / ctx.file.name)
        seeder = h.Aria(ctx, f"swarm-seed-{tag}", ["-V", "--bt-hash-check-seed=true", cap])
        procs_.append(seeder)
        seeder.gid = seeder.add_torrent(world.torrent, d)
        deadline = time.perf_counter() + ctx.hash_timeout
        while h.scrape_complete(world.port, world.ih) < 1:
            if time.perf_counter() > deadline:
                raise BenchError("aria2c swarm seeder not announced as complete")
            time.sleep(0.1)
        leechers = []
        for i in range(n):
            a = h.Aria(ctx, f"swarm-{tag}-l{i}", [cap])
            procs_.append(a)
            leechers.append(a)
        up0 = int(seeder.status(seeder.gid)["uploadLength"])
        procs = Procs({"seeder": [seeder.pid], "leechers": [a.pid for a in leechers]}).start()
        ideal = size / parse_rate(limit)
        t_start = time.perf_counter()
        for i, a in enumerate(leechers):
            dd = ctx.tmp / "dl" / f"aria-{tag}-l{i}"
            dd.mkdir(parents=True)
            a.gid = a.add_torrent(world.torrent, dd)
            a.dest = dd / ctx.file.name
        done = {}
        deadline = t_start + 60 + 4 * ideal
        while len(done) < n:
            if time.perf_counter() > deadline:
                raise BenchError(f"aria2c swarm {tag}: {n - len(done)} leechers not done")
            for i, a in enumerate(leechers):
                if i in done:
                    continue
                st = a.status(a.gid)
                if st["status"] == "error":
                    raise BenchError(f"aria2c swarm leecher {i}: {st.get('errorMessage')}")
                if int(st["totalLength"]) > 0 and st["completedLength"] == st["totalLength"]:
                    done[i] = time.perf_counter() - t_start
            time.sleep(0.1)
        secs = max(done.values())
        cpu = procs.stop()
        up = (int(seeder.status(seeder.gid)["uploadLength"]) - up0) / size
        same_file(leechers[0].dest, ctx.file)
        return {"secs": secs, "ideal": ideal, "up": up, "cpu": cpu,
                "first": min(done.values()), "median": statistics.median(done.values())}
    finally:
        for a in procs_:
            a.stop()
        shutil.rmtree(ctx.tmp / "dl", ignore_errors=True)


def first_mib(ctx, mib):
    """The first `mib` MiB of the test file, as a file of its own."""
    path = ctx.tmp / "data" / f"bench-{mib}MiB-head.bin"
    with open(ctx.file, "rb") as src, open(path, "wb") as out:
        out.write(src.read(mib * MIB))
    return path


def add_rows(ctx, label, o, b):
    res = ctx.res
    ideal = (o or b)["ideal"]
    fmt = (lambda r: f"{r['secs']:.1f} s ({r['secs'] / r['ideal']:.2f}x)" if r else "n/a")
    res.add(f"{label}: all done (ideal {ideal:.1f} s)", fmt(o), "aria2c" if b else "", fmt(b) if b else "",
            f"{o['secs'] / b['secs']:.2f}x aria2c time" if o and b else "", "<= 1.15x ideal")
    fu = (lambda r: f"{r['up']:.2f}x" if r and r.get("up") is not None else "n/a")
    res.add(f"{label}: seeder upload / file size", fu(o), "aria2c" if b else "", fu(b) if b else "", "",
            "<= 1.1x")
    for tool, r in [("swarmshare", o), ("aria2c", b)]:
        if r:
            marks = "".join(f"; seeder sent {f:.0%} of the file's bytes by {t:.1f} s"
                            for f, t in r.get("seeder_marks", []))
            res.detail(f"{tool} {label}: first leecher done {r['first']:.1f} s, median {r['median']:.1f} s, "
                       f"last {r['secs']:.1f} s{marks}; {fmt_cpu_roles(r['cpu'], r['secs'])}")


def bench_swarm(ctx, h):
    limit = ctx.args.swarm_limit
    size_mib = ctx.args.size_mib
    world = None
    if all(ctx.tools.get(t) for t in ["aria2c", "opentracker", "mktorrent"]):
        try:
            world = h.BtWorld(ctx)
        except BenchError as e:
            ctx.res.note(f"opentracker/mktorrent setup FAILED: {e}")
    try:
        for n in (n for n in ctx.args.swarm_leechers if n > 0):
            label = f"swarm 1->{n}, {size_mib} MiB, every client --upload-limit {limit}"
            o = b = None
            if world:
                h.log(f"--- aria2c swarm 1->{n}")
                try:
                    b = aria(ctx, h, world, n, limit, f"{n}")
                except (BenchError, OSError) as e:
                    ctx.res.note(f"aria2c {label} FAILED: {e}")
            if ctx.have_ss:
                h.log(f"--- swarmshare swarm 1->{n}")
                try:
                    o = ours(ctx, h, ctx.file, n, limit, f"{n}")
                except (BenchError, OSError) as e:
                    ctx.res.note(f"swarmshare {label} FAILED: {e}")
            if o or b:
                add_rows(ctx, label, o, b)
    finally:
        if world:
            world.stop()
    n, mib, lim = ctx.args.scale_leechers, ctx.args.scale_mib, ctx.args.scale_limit
    if n and ctx.have_ss:
        label = f"scale 1->{n}, {mib} MiB, every client --upload-limit {lim}"
        h.log(f"--- swarmshare {label}")
        try:
            o = ours(ctx, h, first_mib(ctx, mib), n, lim, f"scale{n}")
            add_rows(ctx, label, o, None)
            ctx.res.add(f"{label}: peak RSS", f"tracker {h.fmt_mib(o['tracker_rss'])}; clients max "
                        f"{h.fmt_mib(o['client_rss_max'])}, median {h.fmt_mib(o['client_rss_median'])}",
                        "", "", "", "completes")
        except (BenchError, OSError) as e:
            ctx.res.note(f"swarmshare {label} FAILED: {e}")
