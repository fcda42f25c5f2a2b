"""Per-process upload accounting from the kernel's TCP socket statistics.

/proc/<pid>/io `wchar` does not see send(2) (which Rust's TcpStream::write uses), so
the bytes a seeder uploads are taken from tcp_info.tcpi_bytes_acked of every TCP
socket whose local port is the seeder's listening port (peers connect to it), read
through NETLINK_SOCK_DIAG (what `ss -ti` uses) and sampled on a thread. A socket's
figure is the largest value seen; sockets keep tcp_info until TIME_WAIT, and the
final sample runs before the processes are stopped, so little goes unseen (the
result is a lower bound).
"""

import os
import socket
import struct
import threading
import time

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300
NLMSG_DONE, NLMSG_ERROR = 3, 2
INET_DIAG_INFO = 2
TCP_LISTEN = 10
BYTES_ACKED_OFF = 120  # offset of tcpi_bytes_acked (u64) in struct tcp_info


INET_DIAG_REQ_BYTECODE = 1
BC_S_GE, BC_S_LE = 2, 3
TCP_TIME_WAIT = 6


def _sport_filter(port):
    """Kernel-side filter `sport == port` (inet_diag bytecode: S_GE then S_LE)."""
    ops = struct.pack("=BBH", BC_S_GE, 8, 16 + 4) + struct.pack("=BBH", 0, 0, port)
    ops += struct.pack("=BBH", BC_S_LE, 8, 8 + 4) + struct.pack("=BBH", 0, 0, port)
    return struct.pack("=HH", 4 + len(ops), INET_DIAG_REQ_BYTECODE) + ops


def _dump_tcp4(sport=None, states=0xFFFFFFFF & ~(1 << TCP_TIME_WAIT)):
    """Yields (state, sport, dport, dst_ip_bytes, inode, cookie, bytes_acked|None) for IPv4 TCP sockets
    (TIME_WAIT excluded: they carry no tcp_info), optionally only those with local port `sport`."""
    s = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_SOCK_DIAG)
    try:
        req = struct.pack("=BBBBI", socket.AF_INET, socket.IPPROTO_TCP, 1 << (INET_DIAG_INFO - 1), 0, states)
        req += b"\0" * 48  # inet_diag_sockid: unused for a dump
        if sport is not None:
            req += _sport_filter(sport)
        hdr = struct.pack("=IHHII", 16 + len(req), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_DUMP, 1, 0)
        s.send(hdr + req)
        while True:
            data = s.recv(1 << 20)
            off = 0
            while off + 16 <= len(data):
                ln, typ, _flags, _seq, _pid = struct.unpack_from("=IHHII", data, off)
                if ln < 16:
                    return
                if typ == NLMSG_DONE:
                    return
                if typ == NLMSG_ERROR:
                    raise OSError("sock_diag dump failed")
                msg = data[off + 16: off + ln]
                state = msg[1]
                sport, dport = struct.unpack_from(">HH", msg, 4)
                dst = msg[24:28]
                cookie = msg[44:52]
                inode = struct.unpack_from("=I", msg, 68)[0]
                acked = None
                a = 72
                while a + 4 <= len(msg):
                    alen, atype = struct.unpack_from("=HH", msg, a)
                    if alen < 4:
                        break
                    if atype == INET_DIAG_INFO and alen - 4 >= BYTES_ACKED_OFF + 8:
                        acked = struct.unpack_from("=Q", msg, a + 4 + BYTES_ACKED_OFF)[0]
                    a += (alen + 3) & ~3
                yield state, sport, dport, dst, inode, cookie, acked
                off += (ln + 3) & ~3
    finally:
        s.close()


def listen_ports(pid):
    """TCP ports process `pid` listens on (IPv4)."""
    inodes = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if link.startswith("socket:["):
                inodes.add(int(link[8:-1]))
    except OSError:
        return []
    return sorted({sp for st, sp, _dp, _d, ino, _c, _a in _dump_tcp4(states=1 << TCP_LISTEN)
                   if st == TCP_LISTEN and ino in inodes})


class UploadMeter:
    """Sums bytes acked on connections from local port `port` while running."""

    def __init__(self, port, interval=0.01):
        self.port = port
        self.interval = interval
        self.best = {}
        self._stop = threading.Event()
        self._th = threading.Thread(target=self._run, daemon=True)

    def sample(self):
        for st, sp, dp, dst, _ino, cookie, acked in _dump_tcp4(self.port):
            if sp == self.port and st != TCP_LISTEN and acked is not None:
                k = (dp, dst, cookie)
                if acked > self.best.get(k, 0):
                    self.best[k] = acked

    def _run(self):
        fast_until = time.perf_counter() + self.fast_secs
        while not self._stop.is_set():
            try:
                self.sample()
            except OSError:
                pass
            now = time.perf_counter()
            total = self.total()
            if self.t_first is None and total > 0:
                self.t_first = now  # first payload acked (resolution: the sampling interval)
            for b in self.marks:
                if b not in self.crossed and total >= b:
                    self.crossed[b] = now
            time.sleep(self.fast_interval if now < fast_until else self.interval)

    def total(self):
        return sum(v - self.base.get(k, 0) for k, v in self.best.items())

    def start(self, fast_secs=0.3, fast_interval=0.001, marks=()):
        """Starts sampling: every `fast_interval` for the first `fast_secs` (to time the
        first bytes precisely), then every `interval`. `marks`: byte counts whose
        first crossing time is kept in `crossed` {bytes: perf_counter time}."""
        self.marks = sorted(marks)
        self.crossed = {}
        self.sample()
        self.base = dict(self.best)  # bytes acked before the measurement started
        self.t_first = None
        self.fast_secs, self.fast_interval = fast_secs, fast_interval
        self._th.start()
        return self

    def stop(self):
        self._stop.set()
        self._th.join(2)
        self.sample()
        return self.total()
