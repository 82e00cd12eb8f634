#!/usr/bin/env python3
"""Long-output-line benchmark for kua-deploy (see bench/README.md).

One `kua-deploy serve` and one busybox app built FROM scratch, against the real Docker engine and
Compose v2. Two deploys whose migration (policy `run`) prints the same number of lines, one of
them with a line of --bytes (default 300,000,000) without a newline in the middle, both failing
at the end. Prints, side by side from the same run, the server's idle RSS, its peak RSS during
the ordinary deploy and during the long-line deploy (VmHWM, reset before each deploy), how the
long line was stored, and the size of one log page through the API.

Prints figures; exits 0 unless something broke (1), or 130 on Ctrl-C. Python 3.11 stdlib only.
Everything it creates in Docker carries the label `kua-deploy.bench=1` (and a per-run label) and
is removed at the end, also on failure or Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

BENCH_LABEL = "kua-deploy.bench"
RUN_LABEL = "kua-deploy.bench.run"
BUSYBOX = "/bin/busybox"
TERMINAL = {"succeeded", "failed", "rolled_back", "interrupted", "cancelled"}
GIT_ID = ["-c", "user.name=Bench", "-c", "user.email=bench@example.invalid", "-c", "init.defaultBranch=main"]
# Loopback only, whatever proxy the environment names.
NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))
CHILD_ENV = {k: v for k, v in os.environ.items() if k not in ("KUA_ADMIN_TOKEN", "KUA_DEPLOY_URL")}


class BenchError(Exception):
    """Something broke: the benchmark cannot give a figure."""


def run(argv: list[str], cwd: Path | None = None, timeout: float = 600) -> str:
    p = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=CHILD_ENV)
    if p.returncode != 0:
        raise BenchError(f"{' '.join(argv)} failed ({p.returncode}):\n{p.stdout}{p.stderr}")
    return p.stdout.strip()


def git(cwd: Path, *args: str) -> None:
    run(["git", *GIT_ID, *args], cwd=cwd)


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (the peak) of a process, in KiB."""
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(rest.split()[0])
    return out


def reset_peak(pid: int) -> bool:
    """Resets VmHWM to the current RSS (Linux >= 4.0, same user or root)."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def mib(kib: int) -> str:
    return f"{kib / 1024:7.1f} MiB"


def script(long_bytes: int, lines: int) -> str:
    """The migration: `lines` lines, the long line (if any) in their middle, then a failure."""
    half = lines // 2
    awk = "/bin/busybox awk 'BEGIN {{ for (i = {a}; i <= {b}; i++) print \"line \" i }}'"
    long = f"/bin/busybox head -c {long_bytes} /dev/zero | /bin/busybox tr '\\0' x; echo ' end'; " if long_bytes else ""
    return f"{awk.format(a=1, b=half)}; {long}{awk.format(a=half + 1, b=lines)}; echo 'migration failed' >&2; exit 1"


class Bench:
    """Two apps in one registry, each with its own checkout and Compose project: `plain`, whose
    migration prints ordinary lines, and `long`, whose migration prints the same with the long
    line among them."""

    def __init__(self, binary: Path, root: Path, run_id: str):
        self.binary, self.root, self.run_id = binary, root, run_id
        self.projects = {"plain": f"kl{run_id}p", "long": f"kl{run_id}l"}
        self.token = secrets.token_hex(16)
        self.proc: subprocess.Popen | None = None
        self.url = ""

    def create(self, migrations: dict[str, str]) -> None:
        remote, work = self.root / "remote.git", self.root / "work"
        git(self.root, "init", "--quiet", "--bare", str(remote))
        git(self.root, "init", "--quiet", str(work))
        shutil.copy(BUSYBOX, work / "busybox")
        labels = f'["{BENCH_LABEL}=1", "{RUN_LABEL}={self.run_id}"]'
        (work / "Dockerfile").write_text(
            f"FROM scratch\nLABEL {BENCH_LABEL}=1 {RUN_LABEL}={self.run_id}\nCOPY busybox /bin/busybox\n"
            'CMD ["/bin/busybox","sleep","3600"]\n'
        )
        (work / "docker-compose.yml").write_text(
            f"services:\n  web:\n    build: .\n    stop_grace_period: 1s\n    labels: {labels}\n"
            f"networks:\n  default:\n    labels: {labels}\n"
        )
        (work / "migrations").mkdir()
        (work / "migrations" / "0001.sql").write_text("select 1;\n")
        git(work, "add", "-A")
        git(work, "commit", "--quiet", "-m", "v1")
        git(work, "remote", "add", "origin", str(remote))
        git(work, "push", "--quiet", "origin", "HEAD:refs/heads/main")
        apps = {}
        for name, migration in migrations.items():
            checkout = self.root / f"checkout-{name}"
            git(self.root, "clone", "--quiet", "--branch", "main", str(remote), str(checkout))
            apps[name] = {
                "repo": str(checkout),
                "project": self.projects[name],
                "services": ["web"],
                "migrations": {
                    "paths": ["migrations/"],
                    "policy": "run",
                    "service": "web",
                    "command": ["/bin/busybox", "sh", "-c", migration],
                },
            }
        (self.root / "deploy-registry.json").write_text(json.dumps({"apps": apps}, indent=2))

    def start(self) -> None:
        env = dict(CHILD_ENV, KUA_ADMIN_TOKEN=self.token)
        self.proc = subprocess.Popen(
            [str(self.binary), "serve", "--config", str(self.root / "deploy-registry.json"),
             "--state-dir", str(self.root / "state"), "--listen", "127.0.0.1:0"],
            stdout=subprocess.PIPE, stderr=open(self.root / "server.log", "w"), text=True, env=env,
            start_new_session=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        if not line.startswith("kua-deploy listening on "):
            raise BenchError(f"unexpected first line {line!r}; see {self.root / 'server.log'}")
        self.url = line.removeprefix("kua-deploy listening on ")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def call(self, method: str, path: str) -> tuple[dict, int]:
        req = urllib.request.Request(f"{self.url}{path}", method=method, headers={"Authorization": f"Bearer {self.token}"})
        if method == "POST":
            req.data = b"{}"
            req.add_header("Content-Type", "application/json")
        with NO_PROXY.open(req, timeout=60) as r:
            body = r.read()
            return json.loads(body), len(body)

    def deploy(self, app: str) -> tuple[dict, float]:
        started = time.monotonic()
        acc, _ = self.call("POST", f"/api/v1/apps/{app}/deploy")
        while True:
            d, _ = self.call("GET", f"/api/v1/deploys/{acc['deploy_id']}")
            if d["phase"] in TERMINAL:
                return d, time.monotonic() - started
            if time.monotonic() - started > 600:
                raise BenchError(f"deploy {acc['deploy_id']} did not end in 10 minutes")
            time.sleep(0.1)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bin", type=Path, help="the kua-deploy binary (default: target/release/kua-deploy, built first)")
    ap.add_argument("--no-build", action="store_true", help="use the existing release binary")
    ap.add_argument("--bytes", type=int, default=300_000_000, help="length of the long line")
    ap.add_argument("--lines", type=int, default=2_000, help="ordinary lines around it")
    args = ap.parse_args()
    repo = Path(__file__).resolve().parent.parent
    binary = args.bin or Path(os.environ.get("CARGO_TARGET_DIR", repo / "target")) / "release" / "kua-deploy"
    if not args.bin and not args.no_build:
        print("building the release binary …", flush=True)
        subprocess.run(["cargo", "build", "--release", "--quiet", "--bin", "kua-deploy"], cwd=repo, check=True)
    run_id = secrets.token_hex(4)
    root = Path(tempfile.mkdtemp(prefix="kua-bench-"))
    bench = Bench(binary, root, run_id)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(130))
    try:
        bench.create({"plain": script(0, args.lines), "long": script(args.bytes, args.lines)})
        bench.start()
        pid = bench.proc.pid  # type: ignore[union-attr]
        bench.call("GET", "/api/v1/apps")
        time.sleep(0.5)
        idle = memory_kib(pid)["VmRSS"]
        can_reset = reset_peak(pid)
        ordinary, t_ordinary = bench.deploy("plain")
        peak_ordinary = memory_kib(pid)["VmHWM"]
        between = memory_kib(pid)["VmRSS"]
        reset_peak(pid)
        long, t_long = bench.deploy("long")
        peak_long = memory_kib(pid)["VmHWM"]
        after = memory_kib(pid)["VmRSS"]

        page, page_bytes = bench.call("GET", f"/api/v1/deploys/{long['deploy_id']}/logs")
        pages = page
        while True:
            cut = next((l["line"] for l in pages["lines"] if l["line"].startswith("xxxx")), None)
            if cut is not None or not pages["more"]:
                break
            pages, _ = bench.call("GET", f"/api/v1/deploys/{long['deploy_id']}/logs?after={pages['next_after']}")
        if cut is None:
            raise BenchError("the long line is not in the log")
        print()
        print(f"long line: {args.bytes:,} bytes without a newline, among {args.lines:,} ordinary lines; "
              f"both deploys end {ordinary['phase']}/{long['phase']} (the migration fails on purpose)")
        print(f"{'':34}{'RSS':>11}")
        print(f"{'idle (after start)':34}{mib(idle)}")
        print(f"{'peak, ordinary deploy':34}{mib(peak_ordinary)}   ({t_ordinary:.1f} s)")
        print(f"{'between the deploys':34}{mib(between)}")
        print(f"{'peak, deploy with the long line':34}{mib(peak_long)}   ({t_long:.1f} s)")
        print(f"{'after it':34}{mib(after)}")
        print(f"peak with the long line / idle: {peak_long / idle:.2f}x; "
              f"/ peak of the ordinary deploy: {peak_long / peak_ordinary:.2f}x")
        if not can_reset:
            print("(VmHWM could not be reset: each peak also covers the server's start)")
        print(f"stored as: {cut[:12]}…{cut[-60:]!r} ({len(cut):,} chars)")
        print(f"first log page: {len(page['lines']):,} lines, {page_bytes:,} bytes, more={page['more']}")
        return 0
    except BenchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        bench.stop()
        for kind, lister, remover in (
            ("ps", ["docker", "ps", "-aq"], ["docker", "rm", "-f"]),
            ("images", ["docker", "images", "-aq"], ["docker", "rmi", "-f"]),
            ("network", ["docker", "network", "ls", "-q"], ["docker", "network", "rm"]),
        ):
            ids: list[str] = []
            filters = [f"label={RUN_LABEL}={run_id}"]
            filters += [f"label=com.docker.compose.project={p}" for p in bench.projects.values()]
            for f in filters:
                p = subprocess.run([*lister, "--filter", f], capture_output=True, text=True, env=CHILD_ENV)
                ids += [i for i in p.stdout.split() if i not in ids]
            if ids:
                subprocess.run([*remover, *ids], capture_output=True, env=CHILD_ENV)
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
