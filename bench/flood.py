#!/usr/bin/env python3
"""Connection-flood benchmark for kua-deploy (see bench/README.md).

Starts `kua-deploy serve` (release build) under an open-file limit of 1024 (soft and hard, as
`ulimit -n 1024` would), then measures `/healthz` latency (each probe on a new connection) and
the server's resident memory in three phases, side by side in one run:

  before  the idle server;
  during  a bounded flood: 1,000 idle connections and 100 slow-loris ones (a request head
          dribbled a header line every half second, never ended), topped up as the server closes
          them, for --flood seconds;
  after   once the flood's sockets are closed and the server has settled.

Prints p50/p99/max latency and RSS for each phase and the during/before ratios, plus what the
server did with the flood (connections it closed, how long the slow heads lived, its peak of open
descriptors against its connection cap). Exits 0 unless something broke (1), or 130 on Ctrl-C.
Python 3.11 standard library only. Everything goes to 127.0.0.1; nothing is left behind.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import re
import resource
import selectors
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

OPEN_FILES = 1024
TOKEN = "bench-admin-token-0123456789abcdef"
PROBE_REQUEST = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"


class BenchError(Exception):
    """Something broke: the benchmark cannot give a figure."""


def log(msg: str = "") -> None:
    print(msg, flush=True)


def find_binary(args: argparse.Namespace, repo: Path) -> Path:
    if args.bin:
        b = Path(args.bin).resolve()
        if not os.access(b, os.X_OK):
            raise BenchError(f"--bin {b} is not an executable file")
        return b
    target = Path(os.environ.get("CARGO_TARGET_DIR", repo / "target"))
    b = target / "release" / "kua-deploy"
    if args.no_build and b.exists():
        return b
    log("building the release binary: cargo build --release")
    p = subprocess.run(["cargo", "build", "--release", "--bin", "kua-deploy"], cwd=repo)
    if p.returncode != 0 or not b.exists():
        raise BenchError("cargo build --release failed; fix the build or pass --bin PATH")
    return b


def limit_open_files() -> None:
    """In the server's process before exec: what `ulimit -n 1024` does."""
    resource.setrlimit(resource.RLIMIT_NOFILE, (OPEN_FILES, OPEN_FILES))


class Server:
    def __init__(self, binary: Path, root: Path):
        # The registry must name an app; it is never deployed, its checkout need not exist yet.
        registry = root / "registry.json"
        registry.write_text('{"apps": {"idle": {"repo": "%s", "services": ["web"]}}}\n' % (root / "idle-app"))
        self.log_path = root / "server.log"
        env = dict(os.environ, KUA_ADMIN_TOKEN=TOKEN, RUST_LOG="info")
        with open(self.log_path, "wb") as err:
            self.proc = subprocess.Popen(
                [str(binary), "serve", "--config", str(registry), "--state-dir", str(root / "state"),
                 "--listen", "127.0.0.1:0"],
                stdout=subprocess.PIPE,
                stderr=err,
                env=env,
                preexec_fn=limit_open_files,
                start_new_session=True,  # a Ctrl-C reaches the script, which stops the server itself
            )
        line = self.proc.stdout.readline().decode().strip()
        m = re.fullmatch(r"kua-deploy listening on http://127\.0\.0\.1:(\d+)", line)
        if not m:
            raise BenchError(f"unexpected first line {line!r}; server log:\n{self.log()}")
        self.addr = ("127.0.0.1", int(m.group(1)))

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def usage(self) -> tuple[int, int]:
        """(VmRSS KiB, open descriptors)."""
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        rss = int(re.search(r"^VmRSS:\s+(\d+) kB", status, re.M).group(1))
        return rss, len(os.listdir(f"/proc/{self.proc.pid}/fd"))

    def cap(self) -> str:
        m = re.search(r"max_connections=(\d+)", re.sub(r"\x1b\[[0-9;]*m", "", self.log()))
        return m.group(1) if m else "?"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def probe(addr: tuple[str, int]) -> float:
    """One /healthz on a new connection; seconds until the whole 200 answer."""
    started = time.monotonic()
    with socket.create_connection(addr, timeout=10) as s:
        s.sendall(PROBE_REQUEST)
        answer = b""
        while chunk := s.recv(4096):
            answer += chunk
    if not answer.startswith(b"HTTP/1.1 200"):
        raise BenchError(f"/healthz answered {answer[:200]!r}")
    return time.monotonic() - started


class Sampler(threading.Thread):
    """Probes /healthz every `every` seconds and reads the server's RSS, until stopped."""

    def __init__(self, server: Server, every: float):
        super().__init__(daemon=True)
        self.server, self.every = server, every
        self.latencies: list[float] = []
        self.rss: list[int] = []
        self.fds: list[int] = []
        self.errors: list[str] = []
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            try:
                self.latencies.append(probe(self.server.addr))
            except (OSError, BenchError) as e:
                self.errors.append(str(e))
            rss, fds = self.server.usage()
            self.rss.append(rss)
            self.fds.append(fds)
            self.done.wait(self.every)


def sample(server: Server, seconds: float, every: float) -> Sampler:
    s = Sampler(server, every)
    s.start()
    time.sleep(seconds)
    s.done.set()
    s.join()
    return s


class Flood:
    """Idle and slow-loris connections, kept at their counts as the server closes them."""

    def __init__(self, addr: tuple[str, int], idle: int, slow: int):
        self.addr, self.want_idle, self.want_slow = addr, idle, slow
        self.sel = selectors.DefaultSelector()  # epoll: select(2) stops at descriptor 1024
        self.open: dict[socket.socket, tuple[str, float]] = {}
        self.opened = {"idle": 0, "slow": 0}
        self.closed_by_server = {"idle": 0, "slow": 0}
        self.lifetimes = {"idle": [], "slow": []}
        self.refused = 0
        self.dribbled = 0

    def count(self, kind: str) -> int:
        return sum(1 for k, _ in self.open.values() if k == kind)

    def top_up(self) -> None:
        for kind, want in (("idle", self.want_idle), ("slow", self.want_slow)):
            for _ in range(want - self.count(kind)):
                try:
                    s = socket.create_connection(self.addr, timeout=2)
                    if kind == "slow":
                        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
                except OSError:
                    self.refused += 1
                    continue
                s.setblocking(False)
                self.open[s] = (kind, time.monotonic())
                self.opened[kind] += 1
                self.sel.register(s, selectors.EVENT_READ)

    def drop(self, s: socket.socket, by_server: bool) -> None:
        kind, opened = self.open.pop(s)
        if by_server:
            self.closed_by_server[kind] += 1
            self.lifetimes[kind].append(time.monotonic() - opened)
        self.sel.unregister(s)
        s.close()

    def dribble(self) -> None:
        self.dribbled += 1
        line = f"X-Slow-{self.dribbled}: 1\r\n".encode()
        for s, (kind, _) in list(self.open.items()):
            if kind == "slow":
                try:
                    s.send(line)
                except OSError:
                    self.drop(s, by_server=True)

    def run(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        next_top_up = next_dribble = 0.0
        while (now := time.monotonic()) < end:
            if now >= next_top_up:
                self.top_up()
                next_top_up = now + 0.25
            if now >= next_dribble:
                self.dribble()
                next_dribble = now + 0.5
            for key, _ in self.sel.select(timeout=0.05):
                s = key.fileobj
                try:
                    data = s.recv(4096)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                if not data:
                    self.drop(s, by_server=True)

    def close(self) -> None:
        for s in list(self.open):
            self.drop(s, by_server=False)
        self.sel.close()


def run_flood(addr: tuple[str, int], idle: int, slow: int, seconds: float, out) -> None:
    """The flood process: floods, closes its sockets, sends back what it saw."""
    flood = Flood(addr, idle, slow)
    try:
        flood.run(seconds)
    finally:
        flood.close()
        out.send({k: getattr(flood, k) for k in ("opened", "closed_by_server", "lifetimes", "refused")})


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(p / 100 * len(xs)) - 1))]


def bench(args: argparse.Namespace, root: Path) -> None:
    repo = Path(__file__).resolve().parent.parent
    binary = find_binary(args, repo)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = args.idle + args.slow + 256
    if hard != resource.RLIM_INFINITY and hard < need:
        raise BenchError(f"this script holds {need} sockets; raise its open-file hard limit (ulimit -Hn)")
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    server = Server(binary, root)
    try:
        for _ in range(20):  # warm-up
            probe(server.addr)
        log(f"server {binary} (pid {server.proc.pid}) on {server.addr[0]}:{server.addr[1]}, "
            f"open-file limit {OPEN_FILES}, connection cap {server.cap()}")
        before = sample(server, args.phase, args.every)

        # The flood runs in a process of its own, so that it never holds this one's interpreter
        # while a probe is being timed.
        results, sender = multiprocessing.Pipe(duplex=False)
        flooder = multiprocessing.Process(
            target=run_flood, args=(server.addr, args.idle, args.slow, args.flood, sender), daemon=True
        )
        during = Sampler(server, args.every)
        t0 = time.monotonic()
        flooder.start()
        during.start()
        try:
            if not results.poll(args.flood + 60):
                raise BenchError("the flood process gave no result")
            flood = results.recv()
        finally:
            during.done.set()
            during.join()
            flooder.join(5)
            if flooder.is_alive():
                flooder.kill()
        flood_s = time.monotonic() - t0
        time.sleep(args.settle)
        after = sample(server, args.phase, args.every)
        if server.proc.poll() is not None:
            raise BenchError(f"the server exited during the run; its log:\n{server.log()}")

        log(f"\nflood: {flood_s:.1f}s of {args.idle} idle + {args.slow} slow-loris connections, topped up every 0.25s")
        log(f"  opened {flood['opened']['idle']} idle, {flood['opened']['slow']} slow; refused {flood['refused']}")
        closed = flood["closed_by_server"]
        log(f"  closed by the server: {closed['idle']} idle, {closed['slow']} slow")
        for kind in ("idle", "slow"):
            lt = flood["lifetimes"][kind]
            if lt:
                log(f"  {kind} connection lifetime: median {statistics.median(lt):.2f}s, max {max(lt):.2f}s")
        log(f"  server descriptors: peak {max(during.fds)} (cap {server.cap()} connections, limit {OPEN_FILES})")

        log("\n/healthz on a new connection, and server RSS:")
        log(f"  {'phase':<8} {'probes':>6} {'errors':>6} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} "
            f"{'RSS MiB':>8} {'peak MiB':>9}")
        rows = {"before": before, "during": during, "after": after}
        for name, s in rows.items():
            if not s.latencies:
                raise BenchError(f"no /healthz answer {name} the flood: {s.errors[:3]}")
            lat = [x * 1000 for x in s.latencies]
            log(f"  {name:<8} {len(lat):>6} {len(s.errors):>6} {pct(lat, 50):>8.2f} {pct(lat, 99):>8.2f} "
                f"{max(lat):>8.2f} {statistics.median(s.rss) / 1024:>8.1f} {max(s.rss) / 1024:>9.1f}")
        b, d, a = before, during, after
        lat = lambda s, p: pct(s.latencies, p)  # noqa: E731
        log("\nratios during/before:")
        log(f"  /healthz p50 {lat(d, 50) / lat(b, 50):.2f}x, p99 {lat(d, 99) / lat(b, 99):.2f}x")
        log(f"  RSS peak {max(d.rss) / max(b.rss):.2f}x (+{(max(d.rss) - max(b.rss)) / 1024:.1f} MiB); "
            f"after/before {statistics.median(a.rss) / statistics.median(b.rss):.2f}x")
        for name, s in rows.items():
            for e in s.errors[:3]:
                log(f"  {name} probe error: {e}")
    finally:
        server.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description="kua-deploy under a connection flood: /healthz latency and RSS")
    ap.add_argument("--bin", help="kua-deploy binary (default target/release/kua-deploy, built with cargo)")
    ap.add_argument("--no-build", action="store_true", help="do not run cargo build when the default binary exists")
    ap.add_argument("--idle", type=int, default=1000, help="idle connections held (default 1000)")
    ap.add_argument("--slow", type=int, default=100, help="slow-loris connections held (default 100)")
    ap.add_argument("--flood", type=float, default=12.0, help="seconds of flood (default 12)")
    ap.add_argument("--phase", type=float, default=4.0, help="seconds measured before and after (default 4)")
    ap.add_argument("--settle", type=float, default=1.0, help="seconds between the flood's end and 'after' (default 1)")
    ap.add_argument("--every", type=float, default=0.02, help="seconds between /healthz probes (default 0.02)")
    args = ap.parse_args()
    if args.flood <= 0 or args.phase <= 0 or args.flood > 120:
        ap.error("--flood must be in (0, 120] and --phase above 0")

    root = Path(tempfile.mkdtemp(prefix="kua-bench-flood-"))
    def on_term(signum, frame):  # SIGTERM: unwind like Ctrl-C, so the server is stopped
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    try:
        bench(args, root)
        return 0
    except KeyboardInterrupt:
        log("\ninterrupted")
        return 130
    except BenchError as e:
        log(f"\nbenchmark failed: {e}")
        return 1
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
