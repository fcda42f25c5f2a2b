#!/usr/bin/env python3
"""swarmshare benchmark harness (run it through bench/run.sh, which builds first).

Starts real trackers and clients on 127.0.0.1 and measures, each the median of
--runs runs, beside baselines measured in the same run:
  - upload hashing (client `upload_file` until `uploaded ...`) vs sha1sum, openssl sha1
  - download 1->1, 4->1, 1->4 vs aria2c over opentracker (+ rqbit as leecher if installed)
  - bytes the seeder uploaded in 1->4, as a multiple of the file size
  - tracker reads/s and p50/p99 with 100 connections, durable mutations/s
  - tracker restart time with a long log, with and without the SQLite cache
  - the operator view's cost: tracker reads/s under the 100-connection load with
    and without /status and /metrics being fetched (`--only operator`)
  - peak RSS of the downloading client and of the tracker
  - the capped swarm (`--only swarm`, bench/swarm.py): 1 -> 8 and 1 -> 16 with every
    client at the same --upload-limit, beside aria2c, and a 50-leecher scale run
"""

import argparse
import base64
import datetime
import glob
import hashlib
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

sys.dont_write_bytecode = True  # keep bench/ free of __pycache__
sys.path.insert(0, str(Path(__file__).resolve().parent))
import loadgen  # noqa: E402
from procs import BenchError, LineProc, cpu_by_thread, cpu_diff, fmt_cpu, proc_status, quote_arg, run  # noqa: E402
import sockstat  # noqa: E402
import swarm  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
MB = 1e6
MIB = 1 << 20
PIECE = 512 * 1024


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def median(xs):
    return statistics.median(xs) if xs else None


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fmt_rate(size, secs):
    return f"{size / secs / MB:,.0f} MB/s ({secs:.2f} s)"


def fmt_mib(b):
    return f"{b / MIB:.1f} MiB" if b is not None else "n/a"


# ---------------------------------------------------------------- results

class Results:
    def __init__(self):
        self.rows = []   # (measure, swarmshare, baseline, baseline figure, ratio, target)
        self.notes = []
        self.details = []

    def add(self, measure, ours, baseline="", base="", ratio="", target=""):
        self.rows.append((measure, ours, baseline, base, ratio, target))
        log(f"RESULT {measure}: {ours}" + (f" | {baseline}: {base} | ratio {ratio}" if baseline else ""))

    def detail(self, text):
        self.details.append(text)
        log(f"DETAIL {text}")

    def note(self, text):
        self.notes.append(text)
        log(f"NOTE {text}")

    def table(self):
        head = ("Measure", "swarmshare", "Baseline", "Baseline figure", "swarmshare vs baseline", "Target")
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in self.rows:
            lines.append("| " + " | ".join(str(c) for c in r) + " |")
        return "\n".join(lines)


def speed_ratio(ours_secs, base_secs):
    if ours_secs is None or base_secs is None:
        return "n/a"
    return f"{base_secs / ours_secs:.2f}x speed (time {ours_secs / base_secs:.2f}x)"


# ---------------------------------------------------------------- bencode

def bdecode(data, i=0):
    c = data[i:i + 1]
    if c == b"i":
        j = data.index(b"e", i)
        return int(data[i + 1:j]), j + 1
    if c == b"l":
        i += 1
        out = []
        while data[i:i + 1] != b"e":
            v, i = bdecode(data, i)
            out.append(v)
        return out, i + 1
    if c == b"d":
        i += 1
        out = {}
        while data[i:i + 1] != b"e":
            k, i = bdecode(data, i)
            start = i
            v, i = bdecode(data, i)
            out[k] = v
            if k == b"info":
                out[b"__info_raw"] = data[start:i]
        return out, i + 1
    j = data.index(b":", i)
    n = int(data[i:j])
    return data[j + 1:j + 1 + n], j + 1 + n


def info_hash(torrent_path):
    d, _ = bdecode(Path(torrent_path).read_bytes())
    return hashlib.sha1(d[b"__info_raw"]).digest()


# ---------------------------------------------------------------- context

class Ctx:
    def __init__(self, args):
        self.args = args
        self.size = args.size_mib * MIB
        self.runs = args.runs
        self.warm = args.warmup_runs
        base = args.tmp_dir or None
        self.tmp = Path(tempfile.mkdtemp(prefix="swarmshare-bench-", dir=base))
        self.logs = self.tmp / "logs"
        self.logs.mkdir()
        self.file = self.tmp / "data" / f"bench-{args.size_mib}MiB.bin"
        self.file.parent.mkdir()
        self.file_sha1 = None
        self.res = Results()
        self.tools = {}
        self.client_bin = ROOT / "target" / "release" / "client"
        self.tracker_bin = ROOT / "target" / "release" / "tracker"
        # A generous bound on any single download: 60 s + 5 MB/s.
        self.dl_timeout = 60 + self.size / (5 * MB)
        self.hash_timeout = 60 + self.size / (20 * MB)

    def cleanup(self):
        if self.args.keep_tmp:
            log(f"keeping {self.tmp}")
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)


def find_tools(ctx):
    for name in ["aria2c", "opentracker", "mktorrent", "sha1sum", "openssl", "rqbit", "transmission-cli"]:
        ctx.tools[name] = shutil.which(name)
    for name in ["aria2c", "opentracker", "mktorrent", "sha1sum", "openssl"]:
        if not ctx.tools[name]:
            ctx.res.note(f"baseline tool `{name}` is MISSING; figures that need it are skipped")
    if not ctx.tools["rqbit"]:
        ctx.res.note("rqbit is not installed (`cargo install rqbit --locked`); rqbit leecher figures skipped")
    ok = ctx.client_bin.exists() and ctx.tracker_bin.exists()
    if not ok:
        ctx.res.note("swarmshare release binaries missing (target/release/{tracker,client}); swarmshare figures skipped")
    ctx.have_ss = ok


def machine_info():
    info = {"cores": os.cpu_count(), "kernel": platform.release(),
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}
    try:
        info["nproc"] = subprocess.run(["nproc"], capture_output=True, text=True, timeout=5).stdout.strip()
    except Exception:
        info["nproc"] = str(os.cpu_count())
    model, flags = "unknown", set()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name") and model == "unknown":
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    info["cpu"] = model
    info["sha_ni"] = "yes" if "sha_ni" in flags else "no"
    try:
        info["mem"] = fmt_mib(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError):
        info["mem"] = "?"
    vers = []
    try:
        out = subprocess.run(["dpkg-query", "-W", "aria2", "opentracker", "mktorrent", "openssl", "coreutils"],
                             capture_output=True, text=True, timeout=10).stdout
        vers = [" ".join(l.split()) for l in out.splitlines() if l.strip()]
    except Exception:
        pass
    if shutil.which("rqbit"):
        try:
            vers.append(subprocess.run(["rqbit", "--version"], capture_output=True, text=True, timeout=10).stdout.strip())
        except Exception:
            pass
    info["versions"] = ", ".join(vers)
    info["load_start"] = loadavg()
    return info


def disk_write_speed(tmp, mib=512):
    """Sequential write + fsync of `mib` MiB in the temp dir, MB/s: downloads are
    fsynced before they are reported done, so a slow disk bounds them."""
    path = tmp / "disk-speed.bin"
    block = os.urandom(4 << 20)
    t0 = time.perf_counter()
    try:
        with open(path, "wb") as f:
            for _ in range(mib // 4):
                f.write(block)
            f.flush()
            os.fsync(f.fileno())
        return mib * 1048576 / (time.perf_counter() - t0) / 1e6
    except OSError:
        return None
    finally:
        path.unlink(missing_ok=True)


def loadavg():
    try:
        return " ".join(open("/proc/loadavg").read().split()[:3])
    except OSError:
        return "?"


# ---------------------------------------------------------------- test file + hashing

def make_file(ctx):
    log(f"creating {ctx.args.size_mib} MiB test file {ctx.file}")
    # Deterministic pseudo-random content: AES-128-CTR keystream of zeros, fixed key.
    with open(ctx.file, "wb") as out:
        enc = subprocess.Popen(["openssl", "enc", "-aes-128-ctr", "-nosalt", "-K", "73776172"+"6d7368617265"+"2d62656e",
                                "-iv", "0" * 32, "-in", "/dev/zero"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        left = ctx.size
        while left:
            chunk = enc.stdout.read(min(left, 8 * MIB))
            if not chunk:
                raise BenchError("openssl enc produced too little data")
            out.write(chunk)
            left -= len(chunk)
        enc.kill()
        enc.wait(5)
    os.sync()  # write the new file back now, so writeback does not run during the first measurements
    warm(ctx.file)


def warm(path):
    with open(path, "rb") as f:
        while f.read(8 * MIB):
            pass


def time_cmd(args, timeout):
    t0 = time.perf_counter()
    cp = run(args, timeout, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    dt = time.perf_counter() - t0
    if cp.returncode != 0:
        raise BenchError(f"{args[0]} failed: {cp.stderr.decode(errors='replace')[:300]}")
    return dt, cp.stdout.decode(errors="replace")


def bench_hash_baselines(ctx):
    out = {}
    for name, cmd in [("sha1sum", ["sha1sum", ctx.file]), ("openssl sha1", ["openssl", "sha1", ctx.file])]:
        if not shutil.which(cmd[0]):
            continue
        times = []
        for _ in range(ctx.runs):
            dt, text = time_cmd(cmd, ctx.hash_timeout)
            times.append(dt)
            h = re.search(r"\b([0-9a-f]{40})\b", text).group(1)
            ctx.file_sha1 = ctx.file_sha1 or h
            if h != ctx.file_sha1:
                raise BenchError(f"{name} disagrees on the file's SHA-1")
        out[name] = median(times)
        log(f"{name}: {fmt_rate(ctx.size, out[name])}")
    if ctx.file_sha1 is None:
        h = hashlib.sha1()
        with open(ctx.file, "rb") as f:
            while chunk := f.read(8 * MIB):
                h.update(chunk)
        ctx.file_sha1 = h.hexdigest()
    return out


# ---------------------------------------------------------------- swarmshare processes

class Tracker:
    def __init__(self, ctx, data_dir, name="tracker", info=None, port=None):
        self.ctx = ctx
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.info = info or (self.data_dir.parent / f"{name}_info.txt")
        self.info.write_text(f"127.0.0.1:{self.port}\n")
        self.name = name
        self.proc = None
        self.n = 0

    def start(self, timeout=30, more_args=()):
        """Starts the tracker; returns seconds from spawn to its `listening on` line."""
        self.n += 1
        extra = [*(self.ctx.args.tracker_arg or []), *more_args]
        self.proc = LineProc([self.ctx.tracker_bin, self.info, "1", "--data-dir", self.data_dir, *extra],
                             f"{self.name}-{self.n}", self.ctx.logs, stdin=False)
        t, _ = self.proc.expect(lambda l: "listening on" in l, timeout, "`tracker 1 listening on ADDR`")
        self.addr = f"127.0.0.1:{self.port}"
        return t - self.proc.t_spawn

    def hwm(self):
        return proc_status(self.proc.pid, "VmHWM") if self.proc else None

    def stop(self):
        if self.proc:
            self.proc.stop(signal.SIGTERM, timeout=30)
            self.proc = None


class Client:
    """A swarmshare client driven through its piped shell."""

    def __init__(self, ctx, tracker, name, extra=()):
        self.ctx = ctx
        self.name = name
        self.state = ctx.tmp / "clients" / name
        self.state.mkdir(parents=True, exist_ok=True)
        self.proc = LineProc([ctx.client_bin, tracker.info, "--state-dir", self.state, "--listen", "127.0.0.1:0",
                              *(ctx.args.client_arg or []), *extra],
                             f"client-{name}", ctx.logs, stdin=True, cwd=self.state)
        self.pid = self.proc.pid

    def cmd(self, line, expect=None, timeout=30):
        """Sends a command; returns (time sent, time of outcome line, outcome line).
        `expect`: the outcome must start with it (other lines before it are skipped)."""
        t0 = time.perf_counter()
        self.proc.send(line)
        if expect is None:
            t, out = self.proc.expect(lambda l: True, timeout, f"the outcome of {line!r}")
            if out.startswith("error:"):
                raise BenchError(f"{self.name}: {line!r} -> {out}")
        else:
            t, out = self.proc.expect(lambda l: l.startswith(expect), timeout, f"`{expect}...` after {line!r}")
        return t0, t, out

    def user(self, user, group=None, create_group=False):
        self.cmd(f"create_user {user} pw-{user}", "user ")
        self.cmd(f"login {user} pw-{user}", "logged in")
        self.user_id = user
        if create_group:
            self.cmd(f"create_group {group}", "group ")

    def join(self, group, owner):
        self.cmd(f"join_group {group}", "join request")
        owner.cmd(f"accept_request {group} {self.user_id}", f"{self.user_id} accepted")

    def upload(self, path, group):
        t0, t, _ = self.cmd(f"upload_file {quote_arg(path)} {group}", "uploaded ", timeout=self.ctx.hash_timeout)
        return t - t0

    def downloads(self, timeout=10):
        """show_downloads -> (time the reply began, list of lines [D]/[C]/[F] ...)."""
        self.proc.send("show_downloads")
        t, head = self.proc.expect(lambda l: re.match(r"^\d+ downloads?\b", l) is not None, timeout,
                                   "`N downloads` after show_downloads")
        n = int(head.split()[0])
        rows = []
        while len(rows) < n:
            _, l = self.proc.expect(lambda l: l.startswith("["), timeout, "a show_downloads row")
            rows.append(l)
        return t, rows

    def quit(self):
        try:
            if self.proc.alive():
                self.proc.send("logout")
                self.proc.expect(lambda l: True, 5, "the outcome of logout", allow_error=True)
                self.proc.send("quit")
                self.proc.wait_exit(5)
        except BenchError:
            pass
        self.proc.stop(signal.SIGKILL, timeout=5)


# ---------------------------------------------------------------- swarmshare: hashing

def bench_ss_hash(ctx, base):
    tr = Tracker(ctx, ctx.tmp / "ss-hash" / "data")
    tr.start()
    try:
        times = []
        for r in range(ctx.runs):
            c = Client(ctx, tr, f"hash{r}")  # fresh state dir: no cached hashes
            try:
                c.user(f"hasher{r}", f"hashgroup{r}", create_group=True)
                cpu0 = cpu_by_thread(c.pid)
                times.append(c.upload(ctx.file, f"hashgroup{r}"))
                if r == 0:
                    ctx.res.detail(f"swarmshare upload_file client (run 1): "
                                   f"{fmt_cpu(cpu_diff(cpu_by_thread(c.pid), cpu0))} in {times[-1]:.2f} s")
                log(f"swarmshare upload_file run {r + 1}: {times[-1]:.3f} s")
            finally:
                c.quit()
    finally:
        tr.stop()
    return median(times)


def add_hash_rows(ctx, t, base):
    meas = f"upload hashing, {ctx.args.size_mib} MiB"
    ours = fmt_rate(ctx.size, t) if t else "n/a"
    for name in ["openssl sha1", "sha1sum"]:
        if name in base:
            ctx.res.add(meas, ours, name, fmt_rate(ctx.size, base[name]),
                        speed_ratio(t, base[name]) if t else "n/a",
                        "time <= 1.15x openssl sha1" if name == "openssl sha1" else "")
    if not base:
        ctx.res.add(meas, ours)


# ---------------------------------------------------------------- swarmshare: downloads

def run_name(ctx, r):
    return f"warm-up run {r + 1}" if r < ctx.warm else f"run {r - ctx.warm + 1}"


class DownloadRuns:
    """The figures of one download series, a value per run: time, seeder upload
    (multiples of the file size), the largest leecher peak RSS, time to first
    payload. Warm-up runs are dropped when they end."""

    def __init__(self):
        self.times, self.ups, self.rsss, self.ttfb = [], [], [], []
        # aria2c only: until its files were on disk (swarmshare fsyncs before "done")
        self.durable = []

    def end_run(self, ctx, r, tool, label, secs, leecher_pids, paths):
        """Records run `r` (its upload and ttfb figures already added): its time and
        the leechers' peak RSS; checks the downloaded files and logs the run."""
        self.times.append(secs)
        self.rsss.append(max(proc_status(pid, "VmHWM") or 0 for pid in leecher_pids))
        for i, path in enumerate(paths):
            check_download(ctx, path, full=(r == ctx.warm and i == 0))
        log(f"{tool} {label} {run_name(ctx, r)}: {fmt_rate(ctx.size, secs)}"
            + (f", seeder uploaded {self.ups[-1]:.2f}x file size" if self.ups else ""))
        if r < ctx.warm:
            for lst in (self.times, self.ups, self.rsss, self.ttfb, self.durable):
                lst.clear()

    def summary(self):
        return {"secs": median(self.times), "upload_x": median(self.ups) if self.ups else None,
                "rss": median(self.rsss), "ttfb": median(self.ttfb),
                "durable_secs": median(self.durable) if self.durable else None}


def fsync_all(paths):
    """fsyncs the files in parallel; returns the perf_counter when all are on disk.
    aria2c reports a download complete with its data still in the page cache;
    swarmshare fsyncs before it does, so this is aria2c's figure on equal terms."""
    def one(path):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    threads = [threading.Thread(target=one, args=(p,)) for p in paths]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter()


def check_download(ctx, path, full):
    if not path.exists():
        raise BenchError(f"download reported complete but {path} does not exist")
    if path.stat().st_size != ctx.size:
        raise BenchError(f"{path} has {path.stat().st_size} bytes, expected {ctx.size}")
    if full:
        dt, text = time_cmd(["openssl", "sha1", path], ctx.hash_timeout) if shutil.which("openssl") else (0, "")
        if text and ctx.file_sha1 not in text:
            raise BenchError(f"{path}: SHA-1 mismatch")


def bench_ss_download(ctx, label, n_seed, n_leech):
    """Returns dict(secs, upload_x, rss) medians, or raises BenchError."""
    tr = Tracker(ctx, ctx.tmp / f"ss-{n_seed}-{n_leech}" / "data")
    tr.start()
    seeders, g = [], f"dl{n_seed}x{n_leech}"
    name = ctx.file.name
    runs = DownloadRuns()
    try:
        for i in range(n_seed):
            c = Client(ctx, tr, f"{g}-seed{i}")
            seeders.append(c)
            c.user(f"{g}s{i}", g, create_group=(i == 0))
            if i:
                c.join(g, seeders[0])
        for c in seeders:
            c.upload(ctx.file, g)
        owner = seeders[0]
        for r in range(ctx.warm + ctx.runs):
            leechers = []
            dl_root = ctx.tmp / "dl" / f"{g}-r{r}"
            try:
                for i in range(n_leech):
                    c = Client(ctx, tr, f"{g}-r{r}-leech{i}")
                    leechers.append(c)
                    c.user(f"{g}r{r}l{i}")
                    c.join(g, owner)
                dests = []
                for i in range(n_leech):
                    d = dl_root / f"l{i}"
                    d.mkdir(parents=True)
                    dests.append(d)
                meters = []
                if n_seed == 1:
                    ports = sockstat.listen_ports(owner.pid)
                    if not ports:
                        ctx.res.note(f"{label}: could not find the seeder's listening port; upload not measured")
                    meters = [sockstat.UploadMeter(p).start() for p in ports]
                cpu0 = {c.pid: cpu_by_thread(c.pid) for c in leechers + seeders}
                t_start = time.perf_counter()
                for c, d in zip(leechers, dests):
                    c.cmd(f"download_file {g} {quote_arg(name)} {quote_arg(str(d) + '/')}", "downloading ")
                done = {}
                deadline = t_start + ctx.dl_timeout
                while len(done) < n_leech:
                    if time.perf_counter() > deadline:
                        raise BenchError(f"{label}: downloads not done after {ctx.dl_timeout:.0f} s")
                    for i, c in enumerate(leechers):
                        if i in done:
                            continue
                        t_reply, rows = c.downloads()
                        for row in rows:
                            if name not in row:
                                continue
                            if row.startswith("[C]"):
                                done[i] = t_reply
                            elif row.startswith("[F]"):
                                raise BenchError(f"{label}: leecher {i} failed: {row}")
                    time.sleep(ctx.args.poll_ms / 1000)
                secs = max(done.values()) - t_start
                if r == ctx.warm:
                    for role, c in [("leecher 1", leechers[0]), ("seeder 1", seeders[0])]:
                        ctx.res.detail(f"swarmshare {label} {role} (run 1 after warm-up): "
                                       f"{fmt_cpu(cpu_diff(cpu_by_thread(c.pid), cpu0[c.pid]))} in {secs:.2f} s")
                if meters:
                    runs.ups.append(sum(m.stop() for m in meters) / ctx.size)
                    firsts = [m.t_first for m in meters if m.t_first is not None]
                    if firsts and n_leech == 1:
                        runs.ttfb.append(min(firsts) - t_start)
                runs.end_run(ctx, r, "swarmshare", label, secs, [c.pid for c in leechers],
                             [d / name for d in dests])
            finally:
                for c in leechers:
                    c.quit()
                shutil.rmtree(dl_root, ignore_errors=True)
    finally:
        for c in seeders:
            c.quit()
        tr.stop()
    return runs.summary()


# ---------------------------------------------------------------- aria2c / opentracker / rqbit

class Aria:
    """One aria2c process with JSON-RPC on 127.0.0.1."""
    COMMON = ["--enable-dht=false", "--enable-dht6=false", "--bt-enable-lpd=false", "--enable-peer-exchange=false",
              "--disable-ipv6=true", "--bt-external-ip=127.0.0.1", "--interface=127.0.0.1",
              "--bt-tracker-connect-timeout=5", "--bt-tracker-timeout=5", "--summary-interval=0",
              "--console-log-level=warn", "--file-allocation=none", "--seed-ratio=0.0",
              "--bt-save-metadata=false", "--enable-rpc=true", "--rpc-listen-all=false",
              "--bt-max-peers=0", "--max-overall-upload-limit=0", "--max-overall-download-limit=0",
              "--check-certificate=false", "--auto-save-interval=0"]

    def __init__(self, ctx, name, extra):
        self.ctx = ctx
        self.rpc_port = free_port()
        self.bt_port = free_port()
        self.proc = LineProc(["aria2c", *self.COMMON, f"--rpc-listen-port={self.rpc_port}",
                              f"--listen-port={self.bt_port}", *extra], f"aria2c-{name}", ctx.logs, stdin=False)
        self.pid = self.proc.pid
        deadline = time.perf_counter() + 15
        while True:
            try:
                self.call("aria2.getVersion")
                break
            except (OSError, urllib.error.URLError):
                if time.perf_counter() > deadline or not self.proc.alive():
                    raise BenchError(f"aria2c {name}: RPC did not come up\n{self.proc.tail()}")
                time.sleep(0.05)

    def call(self, method, *params):
        body = json.dumps({"jsonrpc": "2.0", "id": "b", "method": method, "params": list(params)}).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{self.rpc_port}/jsonrpc", body,
                                     {"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as r:
            out = json.loads(r.read())
        if "error" in out:
            raise BenchError(f"aria2 {method}: {out['error']}")
        return out["result"]

    def add_torrent(self, torrent, dir_):
        b64 = base64.b64encode(Path(torrent).read_bytes()).decode()
        return self.call("aria2.addTorrent", b64, [], {"dir": str(dir_)})

    def status(self, gid):
        return self.call("aria2.tellStatus", gid, ["status", "completedLength", "totalLength", "uploadLength",
                                                    "errorMessage", "seeder"])

    def stop(self):
        self.proc.stop(signal.SIGKILL, timeout=5)


def scrape_complete(port, ih):
    url = f"http://127.0.0.1:{port}/scrape?info_hash={urllib.parse.quote_from_bytes(ih)}"
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            d, _ = bdecode(r.read())
        return d.get(b"files", {}).get(ih, {}).get(b"complete", 0)
    except Exception:
        return 0


class BtWorld:
    """opentracker + a torrent of the test file (whitelisted)."""

    def __init__(self, ctx):
        self.ctx = ctx
        # One dir per world: the downloads and the swarm parts each make one.
        self.dir = Path(tempfile.mkdtemp(prefix="bt-", dir=ctx.tmp))
        self.dir.chmod(0o755)  # opentracker reads it after dropping privileges
        self.port = free_port()
        self.torrent = self.dir / "bench.torrent"
        run(["mktorrent", "-a", f"http://127.0.0.1:{self.port}/announce", "-l", "19", "-o", self.torrent, ctx.file],
            ctx.hash_timeout, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.ih = info_hash(self.torrent)
        # opentracker chroots into -d before reading the whitelist: give the path relative to it.
        wl = self.dir / "whitelist.txt"
        wl.write_text(self.ih.hex() + "\n")
        self.tracker = LineProc(["opentracker", "-i", "127.0.0.1", "-p", self.port, "-P", self.port,
                                 "-w", wl.name, "-d", self.dir], "opentracker", ctx.logs, stdin=False)
        deadline = time.perf_counter() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    break
            except OSError:
                if time.perf_counter() > deadline or not self.tracker.alive():
                    raise BenchError(f"opentracker did not start\n{self.tracker.tail()}")
                time.sleep(0.05)

    def seeders(self, n):
        """Starts n aria2c seeders (each checks the file with -V first); waits until the tracker lists them."""
        out = []
        for i in range(n):
            d = self.dir / f"seed{i}"
            d.mkdir(exist_ok=True)
            if not (d / self.ctx.file.name).exists():
                os.link(self.ctx.file, d / self.ctx.file.name)  # same inode: shares the page cache
            a = Aria(self.ctx, f"seed{i}-{time.monotonic_ns()}", ["-V", "--bt-hash-check-seed=true"])
            a.gid = a.add_torrent(self.torrent, d)
            out.append(a)
        deadline = time.perf_counter() + self.ctx.hash_timeout * n
        while scrape_complete(self.port, self.ih) < n:
            for a in out:
                st = a.status(a.gid)
                if st["status"] == "error":
                    raise BenchError(f"aria2c seeder failed: {st.get('errorMessage')}")
            if time.perf_counter() > deadline:
                raise BenchError(f"aria2c seeders not announced as complete after {self.ctx.hash_timeout * n:.0f} s")
            time.sleep(0.1)
        return out

    def stop(self):
        self.tracker.stop(signal.SIGTERM)


def bench_aria_download(ctx, world, label, n_seed, n_leech):
    seeders = world.seeders(n_seed)
    runs = DownloadRuns()
    try:
        for r in range(ctx.warm + ctx.runs):
            leechers = []
            root = ctx.tmp / "dl" / f"aria-{n_seed}x{n_leech}-r{r}"
            try:
                for i in range(n_leech):
                    leechers.append(Aria(ctx, f"leech{n_seed}x{n_leech}-r{r}-{i}", []))
                up0 = int(seeders[0].status(seeders[0].gid)["uploadLength"]) if n_seed == 1 else None
                meter = sockstat.UploadMeter(seeders[0].bt_port).start() if n_seed == 1 and n_leech == 1 else None
                cpu0 = {a.pid: cpu_by_thread(a.pid) for a in leechers + seeders}
                t_start = time.perf_counter()
                for i, a in enumerate(leechers):
                    d = root / f"l{i}"
                    d.mkdir(parents=True)
                    a.gid = a.add_torrent(world.torrent, d)
                    a.dest = d / ctx.file.name
                done = {}
                deadline = t_start + ctx.dl_timeout
                while len(done) < n_leech:
                    if time.perf_counter() > deadline:
                        raise BenchError(f"aria2c {label}: not done after {ctx.dl_timeout:.0f} s")
                    for i, a in enumerate(leechers):
                        if i in done:
                            continue
                        st = a.status(a.gid)
                        if st["status"] == "error":
                            raise BenchError(f"aria2c {label} leecher {i}: {st.get('errorMessage')}")
                        if int(st["totalLength"]) > 0 and st["completedLength"] == st["totalLength"]:
                            done[i] = time.perf_counter()
                    time.sleep(ctx.args.poll_ms / 1000)
                secs = max(done.values()) - t_start
                runs.durable.append(fsync_all([a.dest for a in leechers]) - t_start)
                if r == ctx.warm:
                    for role, a in [("leecher 1", leechers[0]), ("seeder 1", seeders[0])]:
                        ctx.res.detail(f"aria2c {label} {role} (run 1 after warm-up): "
                                       f"{fmt_cpu(cpu_diff(cpu_by_thread(a.pid), cpu0[a.pid]))} in {secs:.2f} s")
                if meter:
                    meter.stop()
                    if meter.t_first is not None:
                        runs.ttfb.append(meter.t_first - t_start)
                if up0 is not None:
                    runs.ups.append((int(seeders[0].status(seeders[0].gid)["uploadLength"]) - up0) / ctx.size)
                runs.end_run(ctx, r, "aria2c", label, secs, [a.pid for a in leechers],
                             [a.dest for a in leechers])
            finally:
                for a in leechers:
                    a.stop()
                shutil.rmtree(root, ignore_errors=True)
    finally:
        for a in seeders:
            a.stop()
    return runs.summary()


def bench_rqbit_download(ctx, world, label, n_seed, n_leech):
    """rqbit leechers (timed spawn -> exit with --exit-on-finish) against aria2c seeders."""
    seeders = world.seeders(n_seed)
    times, rsss = [], []
    extra = os.environ.get("BENCH_RQBIT_ARGS", "").split()
    try:
        for r in range(ctx.warm + ctx.runs):
            root = ctx.tmp / "dl" / f"rqbit-{n_seed}x{n_leech}-r{r}"
            procs = []
            try:
                t_start = time.perf_counter()
                for i in range(n_leech):
                    d = root / f"l{i}"
                    d.mkdir(parents=True)
                    # Global options go before the subcommand; a private HTTP API port keeps `download`
                    # from handing the torrent to some rqbit server already on the default 127.0.0.1:3030.
                    glob_opts = ["--disable-dht", "--disable-dht-persistence", "--disable-upnp-port-forward",
                                 "--http-api-listen-addr", f"127.0.0.1:{free_port()}", *extra]
                    procs.append((LineProc(["rqbit", *glob_opts, "download", "-o", d, "--exit-on-finish", world.torrent],
                                           f"rqbit-{n_seed}x{n_leech}-r{r}-{i}", ctx.logs, stdin=False,
                                           env={**os.environ, "RUST_LOG": "warn"}), d))
                peak = 0
                for p, d in procs:
                    while p.alive():
                        peak = max(peak, proc_status(p.pid, "VmHWM") or 0)
                        if time.perf_counter() - t_start > ctx.dl_timeout:
                            raise BenchError(f"rqbit {label}: not done after {ctx.dl_timeout:.0f} s")
                        time.sleep(ctx.args.poll_ms / 1000)
                    if p.p.returncode != 0:
                        raise BenchError(f"rqbit exited with {p.p.returncode}\n{p.tail()}")
                secs = time.perf_counter() - t_start
                times.append(secs)
                rsss.append(peak)
                for i, (p, d) in enumerate(procs):
                    check_download(ctx, d / ctx.file.name, full=(r == ctx.warm and i == 0))
                log(f"rqbit {label} {run_name(ctx, r)}: {fmt_rate(ctx.size, secs)}")
                if r < ctx.warm:
                    times.clear()
                    rsss.clear()
            finally:
                for p, _ in procs:
                    p.stop(signal.SIGKILL)
                shutil.rmtree(root, ignore_errors=True)
    finally:
        for a in seeders:
            a.stop()
    return {"secs": median(times), "rss": median(rsss)}


SCENARIOS = [("1->1", 1, 1, "<= 1.2 s (>= 900 MB/s at 1 GiB)"),
             ("4->1", 4, 1, "<= 1.0 s at 1 GiB"),
             ("1->4", 1, 4, "all done <= 2.5 s at 1 GiB")]


def bench_downloads(ctx):
    have_bt = all(ctx.tools[t] for t in ["aria2c", "opentracker", "mktorrent"])
    world = None
    if have_bt:
        try:
            world = BtWorld(ctx)
        except BenchError as e:
            ctx.res.note(f"opentracker/mktorrent setup FAILED: {e}")
    for label, ns, nl, target in SCENARIOS:
        if ctx.args.only and label not in ctx.args.only:
            continue
        meas = f"download {label}, {ctx.args.size_mib} MiB"
        base = {}
        for tool, fn, ok in [("aria2c", bench_aria_download, world is not None),
                             # rqbit only as a single leecher: several rqbit processes would share its default ports
                             ("rqbit", bench_rqbit_download, world is not None and ctx.tools["rqbit"] and nl == 1)]:
            if not ok:
                continue
            log(f"--- {tool} {label}")
            try:
                base[tool] = fn(ctx, world, label, ns, nl)
            except (BenchError, OSError) as e:
                ctx.res.note(f"{tool} {label} FAILED: {e}")
        ours = None
        if ctx.have_ss:
            log(f"--- swarmshare {label}")
            try:
                ours = bench_ss_download(ctx, label, ns, nl)
            except (BenchError, OSError) as e:
                ctx.res.note(f"swarmshare {label} FAILED: {e}")
        ours_s = fmt_rate(ctx.size, ours["secs"]) if ours else "n/a"
        tgt = target + ("; >= 2.5x rqbit" if label == "1->1" else "")
        if not base:
            ctx.res.add(meas, ours_s, "", "", "", tgt)
        for tool, b in base.items():
            ctx.res.add(meas, ours_s, f"{tool} leecher" if tool == "rqbit" else tool,
                        fmt_rate(ctx.size, b["secs"]), speed_ratio(ours["secs"], b["secs"]) if ours else "n/a",
                        ">= 2.5x rqbit" if tool == "rqbit" else tgt)
        durable = base.get("aria2c", {}).get("durable_secs")
        if durable is not None:
            ctx.res.add(meas, ours_s, "aria2c until its files are on disk (fsync)", fmt_rate(ctx.size, durable),
                        speed_ratio(ours["secs"], durable) if ours else "n/a", "")
        if nl == 4:
            ux = ours.get("upload_x") if ours else None
            ours_u = f"{ux:.2f}x" if ux is not None else "n/a"
            ab = base.get("aria2c", {}).get("upload_x")
            ctx.res.add(f"1->4 seeder upload / file size", ours_u, "aria2c" if ab is not None else "",
                        f"{ab:.2f}x" if ab is not None else "", "", "< 2x")
        if ns == 1 and nl == 1:
            ot = ours.get("ttfb") if ours else None
            at = base.get("aria2c", {}).get("ttfb")
            ctx.res.add("1->1 time from download command to the seeder's first payload bytes",
                        f"{ot * 1000:.0f} ms" if ot is not None else "n/a", "aria2c" if at is not None else "",
                        f"{at * 1000:.0f} ms" if at is not None else "", "", "first piece requested < 50 ms")
        rss_o = fmt_mib(ours["rss"]) if ours else "n/a"
        for tool, b in base.items():
            ctx.res.add(f"peak RSS of a downloading client ({label})", rss_o,
                        f"{tool} leecher", fmt_mib(b["rss"]), "", "< 32 MiB" if label == "1->1" else "")
        if not base:
            ctx.res.add(f"peak RSS of a downloading client ({label})", rss_o, "", "", "", "< 32 MiB")
    if world:
        world.stop()


# ---------------------------------------------------------------- tracker

def log_entries(path):
    """How many changes the log holds in its history: the number of its last entry
    (numbers run on across compactions, which drop the lines before a snapshot), or
    the base its version line names when no entry follows it yet."""
    try:
        with open(path, "rb") as f:
            head = f.readline()
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(len(head), size - (1 << 16)))
            tail = f.read()
    except FileNotFoundError:
        return 0
    lines = tail.split(b"\n")[:-1]  # the last is what follows the final newline
    if size - len(tail) > len(head):
        lines = lines[1:]  # the tail starts inside a line
    for line in reversed(lines):
        fields = line.split(b" ")
        if len(fields) > 2 and len(fields[0]) == 8 and fields[1].isdigit():
            return int(fields[1])
    m = re.search(rb" after (\d+) ", head)
    return int(m.group(1)) if m else 0


def seed_tracker(ctx, tr):
    """Logs in the bench user on `tr` and gives it 10 groups and 20 files in
    bench-g0 (what the read loads list); returns the session token."""
    token = loadgen.login(tr.addr, "benchuser", "benchpass")
    c = loadgen.Conn(tr.addr)
    for i in range(10):
        c.call(token, "create_group", f"bench-g{i}")
    for i in range(20):
        fake = hashlib.sha1(f"file{i}".encode()).hexdigest()
        ok, why, _ = c.call(token, "upload_file", "bench-g0", f"file {i}.bin", str(PIECE * 2), str(PIECE),
                            fake, fake + fake, "127.0.0.1:9")
        if not ok:
            ctx.res.note(f"tracker setup: upload_file refused: {why}")
            break
    c.close()
    return token


def bench_tracker(ctx):
    a = ctx.args
    tr = Tracker(ctx, ctx.tmp / "ss-tracker" / "data", name="loadtracker")
    tr.start()
    log_path = tr.data_dir / "sync_log.txt"
    try:
        token = seed_tracker(ctx, tr)
        secs, warmup = a.load_seconds, 1.0
        for op, label in [("list_groups", "tracker reads: list_groups"), ("list_files", "tracker reads: list_files")]:
            cpu0 = cpu_by_thread(tr.proc.pid)
            r = loadgen.run_load(tr.addr, op, [token], "bench-g0", a.conns, secs, warmup, a.load_procs)
            check_load(ctx, r, op)
            ctx.res.detail(f"tracker during {op} load: {fmt_cpu(cpu_diff(cpu_by_thread(tr.proc.pid), cpu0))} "
                           f"in {secs + warmup:.1f} s; load generator {r['gen_cpu_cores']:.2f} cores")
            ctx.res.add(f"{label}, {a.conns} connections", f"{r['rps']:,.0f} req/s, p50 {r['p50_ms']:.2f} ms, "
                        f"p99 {r['p99_ms']:.2f} ms", "", "", "", ">= 50,000 req/s, p99 < 5 ms")
        lines0 = log_entries(log_path)
        cpu0 = cpu_by_thread(tr.proc.pid)
        r = loadgen.run_load(tr.addr, "create_group", [token], None, a.conns, secs, warmup, a.load_procs)
        check_load(ctx, r, "create_group")
        ctx.res.detail(f"tracker during create_group load: {fmt_cpu(cpu_diff(cpu_by_thread(tr.proc.pid), cpu0))} "
                       f"in {secs + warmup:.1f} s; load generator {r['gen_cpu_cores']:.2f} cores")
        lines1 = log_entries(log_path)
        ctx.res.add(f"tracker durable mutations (create_group), {a.conns} connections",
                    f"{r['rps']:,.0f} /s, p50 {r['p50_ms']:.2f} ms, p99 {r['p99_ms']:.2f} ms",
                    "", "", "", ">= 10,000 /s")
        if lines1 == lines0:
            ctx.res.note(f"sync_log.txt did not grow during the mutation load ({log_path})")
        rss_load = tr.hwm()
        # Restart with the cache at this (shorter) length too, to show whether restart is flat in log length.
        tr.stop()
        n_short = log_entries(log_path)
        short = []
        for _ in range(ctx.runs):
            short.append(tr.start(timeout=600))
            tr.stop()
        tr.start(timeout=600)
        # Grow the log to the target length by driving more create_group mutations.
        target = a.log_lines
        t_fill = time.perf_counter()
        n = log_entries(log_path)
        while n < target:
            if time.perf_counter() - t_fill > a.fill_budget:
                ctx.res.note(f"log fill budget ({a.fill_budget:.0f} s) spent at {n:,} lines (target {target:,})")
                break
            rate = max(r["rps"], 100)
            chunk = min(30.0, max(2.0, (target - n) / rate * 1.05))
            loadgen.run_load(tr.addr, "create_group", [token], None, a.conns, chunk, 0.0, a.load_procs)
            n = log_entries(log_path)
            log(f"sync_log.txt: {n:,} lines")
        rss_load = max(rss_load or 0, tr.hwm() or 0)
        tr.stop()
        n = log_entries(log_path)
        warm(log_path)
        if n == 0:
            raise BenchError(f"no sync_log.txt lines at {log_path}")
        warmt = []
        for _ in range(ctx.runs):
            warmt.append(tr.start(timeout=600))
            tr.stop()
        if n_short < n:
            ctx.res.add(f"tracker restart, cache present, {n_short:,}-change log", f"{median(short) * 1000:,.0f} ms")
        ctx.res.add(f"tracker restart, cache present, {n:,}-change log", f"{median(warmt) * 1000:,.0f} ms",
                    "", "", "", "< 200 ms, flat in log length")
        cold, rss_cold = [], 0
        for _ in range(ctx.runs):
            dbs = glob.glob(str(tr.data_dir / "tracker1.db*"))
            if not dbs:
                ctx.res.note(f"no tracker1.db* in {tr.data_dir} to delete before the rebuild run")
            for p in dbs:
                os.unlink(p)
            cold.append(tr.start(timeout=1800))
            rss_cold = max(rss_cold, tr.hwm() or 0)
            tr.stop()
        ctx.res.add(f"tracker full rebuild (no cache), {n:,}-change log", f"{median(cold) * 1000:,.0f} ms")
        ctx.res.add("tracker peak RSS (under load / after rebuild)", f"{fmt_mib(rss_load)} / {fmt_mib(rss_cold)}")
    finally:
        tr.stop()
        shutil.rmtree(tr.data_dir, ignore_errors=True)


def http_get(addr, path, timeout=10):
    """One GET (the operator view closes after each response); returns (status, body bytes)."""
    host, port = addr.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=timeout) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n".encode())
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ")[1]) if head.count(b" ") >= 1 else 0
    return status, body


def _fetch_pages(addr, interval, stop, out):
    """Fetches /status and /metrics alternately until `stop`; `interval` s apart (0: back to back)."""
    n = bad = 0
    paths = ["/status", "/metrics"]
    while not stop.is_set():
        try:
            status, _ = http_get(addr, paths[n % 2])
            bad += status != 200
        except OSError:
            bad += 1
        n += 1
        if interval:
            stop.wait(interval)
    out.send((n, bad))


def bench_operator(ctx):
    """Reads/s under the 100-connection list_groups load, alternating: no page
    fetched; /status and /metrics fetched once a second each (a browser on the
    page plus a scraper is far less); fetched back to back, one at a time."""
    a = ctx.args
    http_addr = f"127.0.0.1:{free_port()}"
    tr = Tracker(ctx, ctx.tmp / "ss-operator" / "data", name="optracker")
    tr.start(more_args=["--http", http_addr])
    try:
        token = seed_tracker(ctx, tr)
        if http_get(http_addr, "/status")[0] != 200:
            raise BenchError(f"GET http://{http_addr}/status did not answer 200")
        mp = __import__("multiprocessing").get_context("fork")
        modes = [("no page", None), ("page + metrics each second", 0.5), ("pages back to back", 0.0)]
        rps = {m: [] for m, _ in modes}
        pages = {m: 0.0 for m, _ in modes}
        fetched = {m: 0 for m, _ in modes}
        reads = {m: 0 for m, _ in modes}
        cpu = {m: {} for m, _ in modes}
        secs, warmup = a.load_seconds, 1.0
        for _ in range(max(ctx.runs, 3)):
            for mode, interval in modes:
                cpu0 = cpu_by_thread(tr.proc.pid)
                fetcher = None
                if interval is not None:
                    stop = mp.Event()
                    rd, wr = mp.Pipe(duplex=False)
                    fetcher = mp.Process(target=_fetch_pages, args=(http_addr, interval, stop, wr), daemon=True)
                    fetcher.start()
                r = loadgen.run_load(tr.addr, "list_groups", [token], "bench-g0", a.conns, secs, warmup,
                                     a.load_procs)
                check_load(ctx, r, f"list_groups ({mode})")
                rps[mode].append(r["rps"])
                reads[mode] += r["n"]
                if fetcher:
                    stop.set()
                    n, bad = rd.recv() if rd.poll(30) else (0, 0)
                    fetcher.join(5)
                    pages[mode] += n / (secs + warmup)
                    fetched[mode] += n
                    if bad:
                        ctx.res.note(f"operator view ({mode}): {bad} of {n} fetches failed")
                for k, v in cpu_diff(cpu_by_thread(tr.proc.pid), cpu0).items():
                    cpu[mode][k] = cpu[mode].get(k, 0.0) + v
        # Modes alternate run by run, so other load on the machine falls on all of them
        # alike; the figure is all reads of a mode over all its runs (medians in the log).
        runs = max(ctx.runs, 3)
        total = {m: reads[m] / (runs * secs) for m, _ in modes}
        base = total["no page"]
        ctx.res.add(f"tracker reads (list_groups), {a.conns} connections, operator view on, no page fetched",
                    f"{base:,.0f} req/s (median run {median(rps['no page']):,.0f})")
        for mode, _ in modes[1:]:
            m = total[mode]
            cost = (base - m) / base * 100 if base else float("nan")
            shown = f"{cost:.1f}% cost" if cost >= 0 else f"no cost: {-cost:.1f}% more"
            ctx.res.add(f"... while {mode} ({pages[mode] / runs:,.1f} pages/s)",
                        f"{m:,.0f} req/s (median run {median(rps[mode]):,.0f}; {shown})",
                        "", "", "", "cost < 5% of reads/s")
        # The same cost from CPU time, which other load on the machine does not skew:
        # what one page costs the http thread, against what one read costs the loop.
        busy = modes[2][0]
        per_page = cpu[busy].get("http", 0.0) / max(fetched[busy], 1)
        per_read = cpu["no page"].get("tracker", 0.0) / max(reads["no page"], 1)
        ctx.res.add("operator view: CPU per page or scrape served (http thread)", f"{per_page * 1000:.2f} ms")
        ctx.res.add("tracker loop: CPU per read (list_groups)", f"{per_read * 1e6:.1f} us")
        share = 2 * per_page * 100  # one page and one scrape a second, in % of one core
        ctx.res.add("1 page + 1 scrape a second, if taken from the loop's own core",
                    f"{share:.2f}% of its reads/s", "", "", "", "cost < 5% of reads/s")
        for mode, _ in modes:
            ctx.res.detail(f"tracker during list_groups load, {mode}: {fmt_cpu(cpu[mode])}, "
                           f"{reads[mode]:,} reads, {fetched[mode]:,} pages")
    finally:
        tr.stop()


def check_load(ctx, r, op):
    log(f"{op}: {r['rps']:,.0f} req/s over {r['n']:,} requests; load generator used {r['gen_cpu_cores']:.2f} cores")
    if r["errors"]:
        ctx.res.note(f"{op}: {r['errors']} error replies, first: {r['first_err']}")
    if r["gen_cpu_cores"] > 0.9 * (ctx.args.load_procs or 1):
        ctx.res.note(f"{op}: the Python load generator used {r['gen_cpu_cores']:.2f} cores (near its limit), "
                     "so the tracker figure is a lower bound")


# ---------------------------------------------------------------- output

def report(ctx, info, started):
    a = ctx.args
    disk = f", disk {info['disk_mbs']:.0f} MB/s (512 MiB written + fsync in the temp dir)" if info.get("disk_mbs") else ""
    hdr = [f"Machine: {info['nproc']} cores, {info['cpu']}, SHA-NI: {info['sha_ni']}, {info['mem']} RAM, "
           f"Linux {info['kernel']}{disk}",
           f"Run: {info['date']}, file {a.size_mib} MiB (page cache warm), median of {ctx.runs} run(s) "
           f"(downloads after {ctx.warm} unreported warm-up run(s)), "
           f"{(time.time() - started) / 60:.1f} min; command: `bench/run.sh {' '.join(sys.argv[1:])}`",
           f"Load average (1/5/15 min) at start {info['load_start']}, at end {loadavg()}: other work on the "
           f"machine competes for its {info['nproc']} cores, so compare figures within one run",
           f"Baselines: {info['versions']}"]
    text = "\n".join("- " + h for h in hdr) + "\n\n" + ctx.res.table() + "\n"
    if ctx.res.details:
        text += "\nCPU seconds by thread name (threads of one name summed) during the timed part:\n"
        text += "\n".join(f"- {d}" for d in ctx.res.details) + "\n"
    if ctx.res.notes:
        text += "\nNotes:\n" + "\n".join("- " + n.rstrip().replace("\n", "\n  ") for n in ctx.res.notes) + "\n"
    return text


BEGIN, END = "<!-- bench/run.sh results: begin -->", "<!-- bench/run.sh results: end -->"


def write_md(text):
    md = ROOT / "BENCHMARKS.md"
    block = f"{BEGIN}\n{text}{END}"
    if md.exists():
        cur = md.read_text()
        if BEGIN in cur and END in cur:
            new = cur[:cur.index(BEGIN)] + block + cur[cur.index(END) + len(END):]
        else:
            new = cur.rstrip() + "\n\n## Latest results\n\n" + block + "\n"
    else:
        new = ("# swarmshare benchmarks\n\nProduced by `bench/run.sh --write`.\n\n"
               "## Latest results\n\n" + block + "\n")
    md.write_text(new)
    log(f"wrote {md}")


def main():
    ap = argparse.ArgumentParser(description="swarmshare benchmark harness")
    ap.add_argument("--size-mib", type=int, default=None, help="test file size (default 1024; 64 with --quick)")
    ap.add_argument("--runs", type=int, default=None, help="runs per figure, median reported (default 3; 1 with --quick)")
    ap.add_argument("--warmup-runs", type=int, default=None,
                    help="unreported warm-up runs before each download series (default 1; 0 with --quick)")
    ap.add_argument("--quick", action="store_true", help="smoke test: 64 MiB, 1 run, short tracker load, 50k-line log")
    ap.add_argument("--write", action="store_true", help="write the results into BENCHMARKS.md")
    ap.add_argument("--only", nargs="*", default=None,
                    help="subset of: hash 1to1 4to1 1to4 downloads tracker operator swarm (default all)")
    ap.add_argument("--swarm-limit", default="8M", help="--upload-limit of every client in the swarm part")
    ap.add_argument("--swarm-leechers", type=int, nargs="*", default=[8, 16],
                    help="swarm sizes (leechers; 0 or none: skip)")
    ap.add_argument("--scale-leechers", type=int, default=50, help="leechers of the scale run (0: skip)")
    ap.add_argument("--scale-mib", type=int, default=64, help="file size of the scale run")
    ap.add_argument("--scale-limit", default="2M", help="--upload-limit of every client in the scale run")
    ap.add_argument("--conns", type=int, default=100, help="tracker load connections")
    ap.add_argument("--load-seconds", type=float, default=None, help="seconds per tracker load phase (default 5)")
    ap.add_argument("--load-procs", type=int, default=1, help="load generator processes")
    ap.add_argument("--log-lines", type=int, default=None, help="sync_log.txt length for the restart test (default 1e6)")
    ap.add_argument("--fill-budget", type=float, default=900, help="max seconds spent growing the log")
    ap.add_argument("--poll-ms", type=float, default=10, help="completion polling interval")
    ap.add_argument("--tracker-arg", action="append", help="extra tracker argument, e.g. --tracker-arg=--fsync=always (repeatable)")
    ap.add_argument("--client-arg", action="append",
                    help="extra client argument, e.g. --client-arg=--log-level=info (repeatable; stderr goes to the temp dir's logs/)")
    ap.add_argument("--tmp-dir", help="parent of the temp dir (default $TMPDIR or /tmp)")
    ap.add_argument("--keep-tmp", action="store_true")
    a = ap.parse_args()
    a.size_mib = a.size_mib or (64 if a.quick else 1024)
    a.runs = a.runs or (1 if a.quick else 3)
    if a.warmup_runs is None:
        a.warmup_runs = 0 if a.quick else 1
    a.load_seconds = a.load_seconds or (2 if a.quick else 5)
    a.log_lines = a.log_lines or (50_000 if a.quick else 1_000_000)
    if a.only:
        exp = []
        for o in a.only:
            o = re.sub(r"(\d)to(\d)", r"\1->\2", o.replace("→", "->"))
            if o not in ("hash", "1->1", "4->1", "1->4", "downloads", "tracker", "operator", "swarm"):
                ap.error(f"--only: unknown part {o!r} (hash, 1to1, 4to1, 1to4, downloads, tracker, operator, swarm)")
            exp += ["1->1", "4->1", "1->4"] if o == "downloads" else [o]
        a.only = exp
    sel = (lambda k: not a.only or k in a.only)

    started = time.time()
    ctx = Ctx(a)
    try:
        info = machine_info()
        find_tools(ctx)
        log(f"temp dir {ctx.tmp}")
        if any(sel(s[0]) for s in SCENARIOS):
            info["disk_mbs"] = disk_write_speed(ctx.tmp)
            log(f"disk: {info['disk_mbs'] or 0:.0f} MB/s sequential write with fsync")
        make_file(ctx)
        if sel("hash"):
            base = bench_hash_baselines(ctx)
            t = None
            if ctx.have_ss:
                try:
                    t = bench_ss_hash(ctx, base)
                except (BenchError, OSError) as e:
                    ctx.res.note(f"swarmshare upload hashing FAILED: {e}")
            add_hash_rows(ctx, t, base)
        if any(sel(s[0]) for s in SCENARIOS):
            if ctx.file_sha1 is None:
                bench_hash_baselines(ctx)
            bench_downloads(ctx)
        if sel("tracker"):
            if ctx.have_ss:
                try:
                    bench_tracker(ctx)
                except (BenchError, OSError, RuntimeError) as e:
                    ctx.res.note(f"tracker benchmark FAILED: {e}")
        if sel("swarm"):
            if ctx.file_sha1 is None:
                bench_hash_baselines(ctx)
            swarm.bench_swarm(ctx, sys.modules[__name__])
        if sel("operator"):
            if ctx.have_ss:
                try:
                    bench_operator(ctx)
                except (BenchError, OSError, RuntimeError) as e:
                    ctx.res.note(f"operator view benchmark FAILED: {e}")
        text = report(ctx, info, started)
        print("\n" + text)
        if a.write:
            write_md(text)
    finally:
        ctx.cleanup()


if __name__ == "__main__":
    main()
