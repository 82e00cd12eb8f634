#!/usr/bin/env python3
"""Deploy-overhead benchmark for kua-deploy (see bench/README.md).

Measures, against the real Docker engine and Compose v2, with a small busybox web app built
FROM scratch:

 1. deploy overhead: N redeploys through `kua-deploy serve` versus N redeploys with the raw
    commands a user would type (git pull; compose build; compose up --force-recreate; wait for
    healthy), alternating, each after a new commit; ratio of the medians (target <= 1.10);
 2. idle resident memory of the server after startup and after the deploys (target < 30 MiB);
 3. healthy -> succeeded latency: from the engine's `health_status: healthy` event of the new
    container to the deploy's `finished_at` (target < 0.5 s).

Prints figures; exits 0 unless something broke (1), or 130 on Ctrl-C. Python 3.11 stdlib only.
Everything it creates in Docker carries the label `kua-deploy.bench=1` (and a per-run label) and
is removed at the end, also on failure or Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from datetime import datetime, timezone
from pathlib import Path

BENCH_LABEL = "kua-deploy.bench"
RUN_LABEL = "kua-deploy.bench.run"
BUSYBOX = "/bin/busybox"
APP = "bench"
POLL_S = 0.05
TERMINAL = {"succeeded", "failed", "rolled_back", "interrupted", "cancelled"}
STEP_ORDER = ["git_pull", "migration_gate", "build", "migrate", "recreate", "verify", "rollback"]
TARGET_RATIO = 1.10
TARGET_RSS_MIB = 30.0
TARGET_LATENCY_S = 0.5
GIT_ID = ["-c", "user.name=Bench", "-c", "user.email=bench@example.invalid", "-c", "init.defaultBranch=main"]


class BenchError(Exception):
    """Something broke: the benchmark cannot give a figure."""


# ----------------------------------------------------------------------------------------------
# small helpers


def log(msg: str = "") -> None:
    print(msg, flush=True)


def run(argv: list[str], cwd: Path | None = None, timeout: float = 300, input: str | None = None) -> str:
    """Runs argv (never through a shell); its failure is a BenchError with what it printed."""
    try:
        p = subprocess.run(
            argv,
            cwd=cwd,
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=CHILD_ENV,
        )
    except FileNotFoundError as e:
        raise BenchError(f"cannot run {argv[0]}: {e}") from None
    except subprocess.TimeoutExpired:
        raise BenchError(f"{' '.join(argv)} timed out after {timeout}s") from None
    if p.returncode != 0:
        raise BenchError(f"{' '.join(argv)} failed ({p.returncode}):\n{p.stdout}{p.stderr}")
    return p.stdout.strip()


def run_quiet(argv: list[str]) -> bool:
    try:
        return subprocess.run(argv, capture_output=True, timeout=120, env=CHILD_ENV).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def git(cwd: Path, *args: str) -> str:
    return run(["git", *GIT_ID, *args], cwd=cwd)


_TS = re.compile(r"^(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)$")


def parse_ts(s: str) -> float:
    """RFC 3339 (any number of fraction digits: kua's micros, Docker's nanos) -> Unix seconds."""
    m = _TS.match(s.strip())
    if not m:
        raise BenchError(f"cannot parse the time {s!r}")
    y, mo, d, h, mi, se, frac, tz = m.groups()
    t = datetime(int(y), int(mo), int(d), int(h), int(mi), int(se), tzinfo=timezone.utc).timestamp()
    if frac:
        t += float("0." + frac)
    if tz != "Z":
        sign = 1 if tz[0] == "+" else -1
        t -= sign * (int(tz[1:3]) * 3600 + int(tz[4:6]) * 60)
    return t


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def fmt_s(x: float | None, width: int = 6) -> str:
    return f"{x:{width}.3f}" if x is not None else " " * (width - 1) + "-"


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of a process, in KiB."""
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(rest.split()[0])
    return out


# ----------------------------------------------------------------------------------------------
# the app under test


def dockerfile(run_id: str) -> str:
    return (
        "FROM scratch\n"
        f"LABEL {BENCH_LABEL}=1 {RUN_LABEL}={run_id}\n"
        "COPY busybox /bin/busybox\n"
        "COPY index.html /www/index.html\n"
        'HEALTHCHECK --interval=1s --timeout=2s --retries=2 CMD ["/bin/busybox","wget","-q","-O","/dev/null","http://127.0.0.1/"]\n'
        'CMD ["/bin/busybox","httpd","-f","-p","80","-h","/www"]\n'
    )


def compose_file(run_id: str, stop_grace: str = "1s", host_port: int | None = None) -> str:
    """The app's Compose file; its port is published on 127.0.0.1, on `host_port` or a free one."""
    labels = f'["{BENCH_LABEL}=1", "{RUN_LABEL}={run_id}"]'
    return (
        "services:\n"
        "  web:\n"
        "    build: .\n"
        f'    ports: ["127.0.0.1:{host_port or ""}:80"]\n'
        f"    stop_grace_period: {stop_grace}\n"
        f"    labels: {labels}\n"
        "networks:\n"
        "  default:\n"
        f"    labels: {labels}\n"
    )


class World:
    """A bare remote, a work tree that pushes to it, and one checkout per side."""

    def __init__(self, root: Path, run_id: str, stop_grace: str = "1s", host_port: int | None = None):
        self.root = root
        self.run_id = run_id
        self.stop_grace = stop_grace
        self.host_port = host_port
        self.remote = root / "remote.git"
        self.work = root / "work"
        self.kua_checkout = root / "checkout-kua"
        self.raw_checkout = root / "checkout-raw"
        self.kua_project = f"kb{run_id}k"
        self.raw_project = f"kb{run_id}r"
        self.registry = root / "deploy-registry.json"
        self.state = root / "state"
        self.server_log = root / "server.log"
        self.pushes = 0

    def create(self) -> None:
        git(self.root, "init", "--quiet", "--bare", str(self.remote))
        git(self.root, "init", "--quiet", str(self.work))
        shutil.copy(BUSYBOX, self.work / "busybox")
        (self.work / "Dockerfile").write_text(dockerfile(self.run_id))
        (self.work / "docker-compose.yml").write_text(compose_file(self.run_id, self.stop_grace, self.host_port))
        (self.work / "index.html").write_text("v0\n")
        git(self.work, "add", "-A")
        git(self.work, "commit", "--quiet", "-m", "v0")
        git(self.work, "remote", "add", "origin", str(self.remote))
        git(self.work, "push", "--quiet", "origin", "HEAD:refs/heads/main")
        for c in (self.kua_checkout, self.raw_checkout):
            git(self.root, "clone", "--quiet", "--branch", "main", str(self.remote), str(c))
        registry = {
            "apps": {
                APP: {
                    "repo": str(self.kua_checkout),
                    "project": self.kua_project,
                    "services": ["web"],
                    "verify": {"timeout_s": 60, "stable_s": 0},
                }
            }
        }
        self.registry.write_text(json.dumps(registry, indent=2))

    def push(self, tag: str) -> str:
        """A new commit with a changed index.html (content never seen before, so no build cache hit)."""
        self.pushes += 1
        content = f"{tag} #{self.pushes} {secrets.token_hex(8)}\n"
        (self.work / "index.html").write_text(content)
        git(self.work, "commit", "--quiet", "-am", tag)
        git(self.work, "push", "--quiet", "origin", "HEAD:refs/heads/main")
        return content.strip()


# ----------------------------------------------------------------------------------------------
# Docker: container state, health events, cleanup


def web_container(project: str) -> dict | None:
    """Id, Image, status and health of the project's web container, by Compose v2's name."""
    fmt = "{{.Id}} {{.Image}} {{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}}"
    p = subprocess.run(
        ["docker", "inspect", "--type", "container", "--format", fmt, f"{project}-web-1"],
        capture_output=True,
        text=True,
        timeout=30,
        env=CHILD_ENV,
    )
    if p.returncode != 0:
        return None
    cid, image, status, health = p.stdout.split()
    return {"id": cid, "image": image, "status": status, "health": health}


def served_body(project: str, cwd: Path) -> str:
    """What the project's web container serves on its loopback port (a correctness check)."""
    addr = run(["docker", "compose", "-p", project, "port", "web", "80"], cwd=cwd)
    if not addr.startswith("127.0.0.1:"):
        raise BenchError(f"{project}'s web port is published on {addr}, not on 127.0.0.1")
    with NO_PROXY.open(f"http://{addr}/", timeout=10) as r:
        return r.read().decode().strip()


class HealthEvents:
    """`docker events` for health_status of one Compose project, in the background: the engine's
    time (timeNano) of each container's first `health_status: healthy`."""

    def __init__(self, project: str):
        self.project = project
        self.healthy: dict[str, float] = {}
        self.cond = threading.Condition()
        self.proc = subprocess.Popen(
            [
                "docker", "events", "--format", "{{json .}}",
                "--filter", "type=container",
                "--filter", "event=health_status",
                "--filter", f"label=com.docker.compose.project={project}",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=CHILD_ENV,
            start_new_session=True,  # Ctrl-C reaches only this script, which stops it itself
        )
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                ev = json.loads(line)
            except json.JSONDecodeError:
                continue
            status = (ev.get("status") or ev.get("Action") or "").strip()
            if status != "health_status: healthy":
                continue
            cid = ev.get("id") or ev.get("Actor", {}).get("ID", "")
            with self.cond:
                self.healthy.setdefault(cid, ev["timeNano"] / 1e9)
                self.cond.notify_all()

    def wait_healthy(self, cid: str, timeout: float) -> float | None:
        with self.cond:
            self.cond.wait_for(lambda: cid in self.healthy, timeout)
            return self.healthy.get(cid)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def remove_docker_objects(filters: list[str]) -> list[str]:
    """Removes containers, then images, then networks matching any of `filters`."""
    removed: list[str] = []

    def ids(argv: list[str]) -> list[str]:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=CHILD_ENV)
        return list(dict.fromkeys(p.stdout.split())) if p.returncode == 0 else []

    for kind, lister, remover in (
        ("container", ["docker", "ps", "-aq", "--no-trunc"], ["docker", "rm", "-f"]),
        ("image", ["docker", "images", "-aq", "--no-trunc"], ["docker", "rmi", "-f"]),
        ("network", ["docker", "network", "ls", "-q", "--no-trunc"], ["docker", "network", "rm"]),
    ):
        found: list[str] = []
        for f in filters:
            found += [i for i in ids([*lister, "--filter", f]) if i not in found]
        if found:
            run_quiet([*remover, *found])
            removed.append(f"{len(found)} {kind}(s)")
    return removed


# ----------------------------------------------------------------------------------------------
# kua-deploy serve and its API


class Server:
    def __init__(self, binary: Path, world: World, token: str):
        self.binary = binary
        self.world = world
        self.token = token
        self.log_path = world.server_log
        self.proc: subprocess.Popen | None = None
        self.url = ""
        # time.monotonic() when start() spawned the process, read its "listening on" line, and had
        # /healthz answered.
        self.spawned_at = self.listening_at = self.answering_at = 0.0

    def start(self) -> None:
        world = self.world
        self._log = open(world.server_log, "ab")  # a restarted server on the same world appends
        env = dict(CHILD_ENV, KUA_ADMIN_TOKEN=self.token, RUST_LOG=os.environ.get("RUST_LOG", "info"))
        self.spawned_at = time.monotonic()
        self.proc = subprocess.Popen(
            [
                str(self.binary), "serve",
                "--config", str(world.registry),
                "--state-dir", str(world.state),
                "--listen", "127.0.0.1:0",
            ],
            stdout=subprocess.PIPE,
            stderr=self._log,
            env=env,
            start_new_session=True,  # stopped with SIGTERM by this script, never by the terminal's Ctrl-C
        )
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], 30)
        line = self.proc.stdout.readline().decode(errors="replace") if ready else ""
        self.listening_at = time.monotonic()
        prefix = "kua-deploy listening on "
        if not line.startswith(prefix):
            raise BenchError(f"kua-deploy serve did not say where it listens (first line {line!r});\n{self.log_tail()}")
        self.url = line[len(prefix):].strip().rstrip("/")
        if not self.url.startswith("http://127.0.0.1:"):
            raise BenchError(f"kua-deploy listens on {self.url}, expected 127.0.0.1")
        # Keep its stdout drained so a chatty server can never block on a full pipe.
        threading.Thread(target=lambda: self.proc.stdout.read(), daemon=True).start()
        deadline = time.monotonic() + 15
        while True:
            try:
                self.call("GET", "/healthz", auth=False)
                self.answering_at = time.monotonic()
                break
            except (BenchError, OSError):
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise BenchError(f"kua-deploy serve did not answer /healthz;\n{self.log_tail()}") from None
                time.sleep(0.05)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def call(self, method: str, path: str, body: dict | None = None, auth: bool = True) -> tuple[int, dict]:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if auth:
            req.add_header("Authorization", f"Bearer {self.token}")
        try:
            with NO_PROXY.open(req, timeout=30) as r:
                return r.status, json.loads(r.read() or b"null")
        except urllib.error.HTTPError as e:
            text = e.read().decode(errors="replace")
            try:
                return e.code, json.loads(text)
            except json.JSONDecodeError:
                raise BenchError(f"{method} {path}: HTTP {e.code}: {text}") from None

    def log_tail(self, n: int = 40) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no server log)"
        return "server log (last lines):\n" + "\n".join(lines[-n:])

    def deploy_log(self, deploy_id: str) -> str:
        try:
            _, page = self.call("GET", f"/api/v1/deploys/{deploy_id}/logs")
            return "\n".join(f"  {l['ts']} [{l['stream']}] {l['line']}" for l in page.get("lines", [])[-60:])
        except (BenchError, OSError) as e:
            return f"(cannot read the deploy's log: {e})"

    def stop(self) -> float | None:
        """SIGTERM; returns how long it took to exit."""
        if self.proc is None:
            return None
        if self.proc.poll() is not None:
            self._log.close()
            return None
        started = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            log("kua-deploy serve did not exit within 20 s of SIGTERM; killing it")
            self.proc.kill()
            self.proc.wait()
        self._log.close()
        return time.monotonic() - started


# ----------------------------------------------------------------------------------------------
# one deploy per side


def step_durations(d: dict) -> dict[str, float]:
    out = {}
    for s in d.get("steps", []):
        if s.get("started_at") and s.get("finished_at"):
            out[s["name"]] = parse_ts(s["finished_at"]) - parse_ts(s["started_at"])
    return out


def kua_deploy(server: Server, world: World, events: HealthEvents, expect: str, reason: str) -> dict:
    """POST deploy, poll GET every 50 ms until a terminal phase; the timing is the client's."""
    wall0 = time.time()
    t0 = time.monotonic()
    code, body = server.call("POST", f"/api/v1/apps/{APP}/deploy", {"reason": reason})
    if code != 202:
        raise BenchError(f"POST deploy answered {code}: {body}")
    deploy_id = body["deploy_id"]
    deadline = t0 + 120
    while True:
        code, d = server.call("GET", f"/api/v1/deploys/{deploy_id}")
        if code != 200:
            raise BenchError(f"GET deploy {deploy_id} answered {code}: {d}")
        if d["phase"] in TERMINAL or d["phase"] == "awaiting_approval":
            break
        if time.monotonic() > deadline:
            raise BenchError(f"deploy {deploy_id} still {d['phase']} after 120 s;\n{server.log_tail()}")
        time.sleep(POLL_S)
    total = time.monotonic() - t0
    wall_end = time.time()
    if d["phase"] != "succeeded":
        raise BenchError(
            f"kua-deploy deploy {deploy_id} ended {d['phase']}: {d.get('error')}\n"
            f"deploy log:\n{server.deploy_log(deploy_id)}\n{server.log_tail()}"
        )
    services = (d.get("verify") or {}).get("services") or []
    if len(services) != 1 or not services[0].get("container_id"):
        raise BenchError(f"deploy {deploy_id} verified {services!r}, expected one web container")
    cid = services[0]["container_id"]
    body_now = served_body(world.kua_project, world.kua_checkout)
    if body_now != expect:
        raise BenchError(f"after kua deploy {deploy_id} the app serves {body_now!r}, expected {expect!r}")

    steps = step_durations(d)
    created, started, finished = (parse_ts(d[k]) for k in ("created_at", "started_at", "finished_at"))
    verify = next(s for s in d["steps"] if s["name"] == "verify")
    healthy_at = events.wait_healthy(cid, timeout=5)
    return {
        "id": deploy_id,
        "deploy": d,
        "total": total,
        "server": finished - created,
        "steps": steps,
        "queue": started - created,  # created -> the worker starts it
        "post": created - wall0,  # request sent -> deploy recorded
        "seen": wall_end - finished,  # finished_at -> the client's poll saw it
        "healthy_to_verified": parse_ts(verify["finished_at"]) - healthy_at if healthy_at else None,
        "healthy_to_succeeded": finished - healthy_at if healthy_at else None,
        "verified_to_succeeded": finished - parse_ts(verify["finished_at"]),
    }


def raw_deploy(world: World, events: HealthEvents, expect: str, first: bool = False) -> dict:
    """What a user types, timed phase by phase; then docker inspect every 50 ms until the new
    container (new id, new image) runs and is healthy."""
    cwd, project = world.raw_checkout, world.raw_project
    old = web_container(project)
    if old is None and not first:
        raise BenchError(f"the raw side's container {project}-web-1 is missing before the round")
    t0 = time.monotonic()
    run(["git", "pull", "--quiet", "--ff-only"], cwd=cwd)
    t1 = time.monotonic()
    run(["docker", "compose", "-p", project, "build", "web"], cwd=cwd, timeout=600)
    t2 = time.monotonic()
    run(["docker", "compose", "-p", project, "up", "-d", "--force-recreate", "web"], cwd=cwd)
    t3 = time.monotonic()
    deadline = t3 + 60
    while True:
        c = web_container(project)
        if (
            c is not None
            and (old is None or (c["id"] != old["id"] and c["image"] != old["image"]))
            and c["status"] == "running"
            and c["health"] == "healthy"
        ):
            break
        if time.monotonic() > deadline:
            raise BenchError(f"the raw side's new container was not healthy within 60 s: {c}")
        time.sleep(POLL_S)
    t4 = time.monotonic()
    wall_end = time.time()
    # Untimed checks: it really runs the image just built, and serves the new content.
    built = run(["docker", "image", "inspect", "--format", "{{.Id}}", f"{project}-web"])
    if c["image"] != built:
        raise BenchError(f"the raw side runs {c['image']}, but compose built {built}")
    body_now = served_body(project, cwd)
    if body_now != expect:
        raise BenchError(f"after the raw deploy the app serves {body_now!r}, expected {expect!r}")
    healthy_at = events.wait_healthy(c["id"], timeout=5)
    return {
        "total": t4 - t0,
        "pull": t1 - t0,
        "build": t2 - t1,
        "up": t3 - t2,
        "wait": t4 - t3,
        "seen": wall_end - healthy_at if healthy_at else None,
    }


# ----------------------------------------------------------------------------------------------
# the benchmark


def find_binary(args: argparse.Namespace, repo: Path) -> Path:
    if args.bin:
        b = Path(args.bin).resolve()
        if not os.access(b, os.X_OK):
            raise BenchError(f"--bin {b} is not an executable file")
        return b
    b = repo / "target" / "release" / "kua-deploy"
    if args.no_build and b.exists():
        return b
    log("building the release binary: cargo build --release")
    p = subprocess.run(["cargo", "build", "--release"], cwd=repo)
    if p.returncode != 0 or not b.exists():
        raise BenchError("cargo build --release failed; fix the build or pass --bin PATH")
    return b


def preflight() -> None:
    run(["docker", "version", "--format", "{{.Server.Version}}"])
    v = run(["docker", "compose", "version", "--short"])
    if not v.lstrip("v").startswith("2"):
        raise BenchError(f"docker compose is not v2 ({v})")
    run(["git", "--version"])
    if not Path(BUSYBOX).exists():
        raise BenchError(f"{BUSYBOX} is missing (apt-get install busybox-static)")
    stale = run(["docker", "ps", "-aq", "--filter", f"label={BENCH_LABEL}=1"])
    if stale:
        log(
            f"note: {len(stale.split())} container(s) labelled {BENCH_LABEL}=1 are left from an earlier run that was"
            " killed; see bench/README.md to remove them"
        )


def print_summary(kua: list[dict], raw: list[dict], rss: dict, shutdown_s: float | None) -> None:
    kt = [r["total"] for r in kua]
    rt = [r["total"] for r in raw]
    ratio = median(kt) / median(rt)

    log("\n== where the time goes (medians, seconds) ==")
    rows = [
        ("source", "git_pull + migration_gate", med_steps(kua, "git_pull", "migration_gate"), "git pull", med(raw, "pull")),
        ("build", "build", med_steps(kua, "build"), "compose build", med(raw, "build")),
        ("recreate", "recreate", med_steps(kua, "recreate"), "compose up", med(raw, "up")),
        ("until healthy", "verify", med_steps(kua, "verify"), "inspect loop", med(raw, "wait")),
    ]
    log(f"  {'phase':<14} {'kua-deploy step':<26} {'kua':>6}   {'raw command':<14} {'raw':>6}   {'kua-raw':>7}")
    for name, kname, kv, rname, rv in rows:
        log(f"  {name:<14} {kname:<26} {kv:6.3f}   {rname:<14} {rv:6.3f}   {kv - rv:+7.3f}")
    other = [r["total"] - sum(r["steps"].values()) for r in kua]
    log(f"  {'outside steps':<14} {'queue, API, between steps':<26} {median(other):6.3f}   {'':<14} {0:6.3f}   {median(other):+7.3f}")
    log(f"  {'total':<14} {'(client-side)':<26} {median(kt):6.3f}   {'':<14} {median(rt):6.3f}   {median(kt) - median(rt):+7.3f}")
    log(
        f"  kua outside steps, medians: POST->created {med(kua, 'post'):.3f}, created->started {med(kua, 'queue'):.3f},"
        f" verify done->finished_at {med(kua, 'verified_to_succeeded'):.3f}, finished_at->client saw it {med(kua, 'seen'):.3f}"
    )

    lat = [r["healthy_to_succeeded"] for r in kua if r["healthy_to_succeeded"] is not None]
    raw_seen = [r["seen"] for r in raw if r["seen"] is not None]
    log("\n== summary ==")
    log(f"  {'figure':<46} {'measured':<32} {'target':<18} verdict")

    def verdict(ok: bool) -> str:
        return "met" if ok else "NOT MET"

    log(
        f"  {'1. deploy overhead median(kua)/median(raw)':<46} "
        f"{f'{ratio:.3f} ({median(kt):.3f} s / {median(rt):.3f} s)':<32} {'<= 1.10 (10%)':<18} {verdict(ratio <= TARGET_RATIO)}"
    )
    r0, r1 = rss["startup"]["VmRSS"] / 1024, rss["idle"]["VmRSS"] / 1024
    log(
        f"  {'2. idle RSS of serve: startup / after deploys':<46} "
        f"{f'{r0:.1f} MiB / {r1:.1f} MiB':<32} {'< 30 MiB':<18} {verdict(max(r0, r1) < TARGET_RSS_MIB)}"
    )
    if lat:
        log(
            f"  {'3. healthy -> succeeded: median / max':<46} "
            f"{f'{median(lat):.3f} s / {max(lat):.3f} s ({len(lat)} rounds)':<32} {'< 0.5 s':<18} {verdict(max(lat) < TARGET_LATENCY_S)}"
        )
    else:
        log(f"  {'3. healthy -> succeeded':<46} {'no health event matched':<32} {'< 0.5 s':<18} -")
    extra = f"peak RSS (VmHWM) {rss['idle']['VmHWM'] / 1024:.1f} MiB"
    if raw_seen:
        extra += f"; raw loop saw healthy {median(raw_seen):.3f} s after the event (median)"
    if shutdown_s is not None:
        extra += f"; SIGTERM -> exit {shutdown_s:.2f} s"
    log(f"  ({extra})")


def save_deploy(server: Server, k: dict, path: Path) -> None:
    """The deploy object and its log (each line time-stamped), for looking into where time went."""
    _, page = server.call("GET", f"/api/v1/deploys/{k['id']}/logs")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"deploy": k["deploy"], "logs": page.get("lines", [])}, indent=2))


def med(rows: list[dict], key: str) -> float:
    return median([r[key] for r in rows if r.get(key) is not None])


def med_steps(rows: list[dict], *names: str) -> float:
    return median([sum(r["steps"].get(n, 0.0) for n in names) for r in rows])


def bench(args: argparse.Namespace, root: Path, run_id: str, cleanup_state: dict) -> None:
    repo = Path(__file__).resolve().parent.parent
    binary = find_binary(args, repo)
    preflight()
    world = World(root, run_id)
    cleanup_state["projects"] = [world.kua_project, world.raw_project]
    world.create()
    log(f"run {run_id}: kua project {world.kua_project}, raw project {world.raw_project}, files in {root}")

    kua_events = HealthEvents(world.kua_project)
    raw_events = HealthEvents(world.raw_project)
    cleanup_state["events"] = [kua_events, raw_events]
    server = Server(binary, world, "bench-" + secrets.token_hex(24))
    cleanup_state["server"] = server
    server.start()
    time.sleep(0.5)
    rss = {"startup": proc_status(server.pid)}
    log(f"kua-deploy serve (pid {server.pid}) at {server.url}; RSS after startup {rss['startup']['VmRSS'] / 1024:.1f} MiB")

    # Warm-up (untimed): each side brings v0 up once, so every timed round replaces a running container.
    log("warm-up: first deploy of each side (untimed)")
    v0 = (world.work / "index.html").read_text().strip()
    w = kua_deploy(server, world, kua_events, v0, "bench warm-up")
    if w["healthy_to_succeeded"] is None:
        raise BenchError("no `health_status: healthy` event arrived from `docker events` for the warm-up deploy")
    raw_deploy(world, raw_events, v0, first=True)
    for i in range(args.warmup - 1):
        raw_deploy(world, raw_events, world.push(f"warm-up raw {i}"))
        kua_deploy(server, world, kua_events, world.push(f"warm-up kua {i}"), "bench warm-up")

    kua: list[dict] = []
    raw: list[dict] = []
    log(f"\n== {args.rounds} rounds, alternating kua-deploy / raw commands, a new commit before each deploy ==")
    log("  kua-deploy: client total [steps: git_pull gate build recreate verify | outside steps]; healthy->succeeded")
    log("  raw:        total [git pull, compose build, compose up, inspect loop]")
    for i in range(1, args.rounds + 1):
        time.sleep(args.pause)
        content = world.push(f"round {i} kua")
        k = kua_deploy(server, world, kua_events, content, f"bench round {i}")
        kua.append(k)
        if args.deploy_logs:
            save_deploy(server, k, Path(args.deploy_logs) / f"round-{i:02d}-{k['id']}.json")
        s = k["steps"]
        out = k["total"] - sum(s.values())
        log(
            f"  round {i:>2} kua {k['total']:6.3f} s  [{s.get('git_pull', 0):.3f} {s.get('migration_gate', 0):.3f} "
            f"{s.get('build', 0):.3f} {s.get('recreate', 0):.3f} {s.get('verify', 0):.3f} | {out:.3f}]"
            f"  healthy->succeeded {fmt_s(k['healthy_to_succeeded'], 5)} s"
            f" (->verified {fmt_s(k['healthy_to_verified'], 5)}, verified->succeeded {k['verified_to_succeeded']:.3f})"
        )
        time.sleep(args.pause)
        content = world.push(f"round {i} raw")
        r = raw_deploy(world, raw_events, content)
        raw.append(r)
        log(
            f"  round {i:>2} raw {r['total']:6.3f} s  [{r['pull']:.3f} {r['build']:.3f} {r['up']:.3f} {r['wait']:.3f}]"
        )

    kt, rt = [r["total"] for r in kua], [r["total"] for r in raw]
    log(f"\n  kua-deploy: median {median(kt):.3f} s  (min {min(kt):.3f}, max {max(kt):.3f}; server-side median {med(kua, 'server'):.3f})")
    log(f"  raw:        median {median(rt):.3f} s  (min {min(rt):.3f}, max {max(rt):.3f})")
    log(f"  ratio median(kua)/median(raw) = {median(kt) / median(rt):.3f}   target: within 10% (ratio <= 1.10)")
    diffs = [a - b for a, b in zip(kt, rt)]
    log(
        f"  (noise check: per-round kua-raw median {median(diffs):+.3f} s, range {min(diffs):+.3f}..{max(diffs):+.3f};"
        f" min(kua)/min(raw) = {min(kt) / min(rt):.3f})"
    )
    lat = [r["healthy_to_succeeded"] for r in kua if r["healthy_to_succeeded"] is not None]
    if lat:
        log(f"  healthy -> succeeded: median {median(lat):.3f} s, max {max(lat):.3f} s   target: < 0.5 s")
    missing = len(kua) - len(lat)
    if missing:
        log(f"  ({missing} round(s) had no matching health event)")

    time.sleep(args.idle)
    rss["idle"] = proc_status(server.pid)
    log(f"  RSS of serve after the deploys, idle {args.idle:.0f} s: {rss['idle']['VmRSS'] / 1024:.1f} MiB   target: < 30 MiB")
    if args.server_log:
        shutil.copy(world.server_log, args.server_log)
    shutdown_s = server.stop()
    print_summary(kua, raw, rss, shutdown_s)


def cleanup(root: Path, run_id: str, state: dict) -> None:
    server = state.get("server")
    if server is not None:
        try:
            server.stop()
        except Exception as e:  # noqa: BLE001 - cleanup goes on regardless
            log(f"cleanup: stopping the server: {e}")
    for ev in state.get("events", []):
        try:
            ev.stop()
        except Exception as e:  # noqa: BLE001
            log(f"cleanup: stopping docker events: {e}")
    filters = [f"label={RUN_LABEL}={run_id}"]
    filters += [f"label=com.docker.compose.project={p}" for p in state.get("projects", [])]
    removed = remove_docker_objects(filters)
    shutil.rmtree(root, ignore_errors=True)
    log(f"cleanup: removed {', '.join(removed) if removed else 'no Docker objects'} and {root}")


def run_and_clean_up(bench_fn, cleanup_fn, args, root: Path, run_id: str, state: dict) -> int:
    """Runs `bench_fn`, then `cleanup_fn` whatever happens (Ctrl-C, SIGTERM, a failure): 0, 130
    on interruption, 1 on a `BenchError`. Shared by the other benchmarks in this folder."""

    def on_term(signum, frame):  # SIGTERM: unwind like Ctrl-C, so cleanup runs
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started with SIGINT ignored
    try:
        bench_fn(args, root, run_id, state)
        return 0
    except KeyboardInterrupt:
        log("\ninterrupted")
        return 130
    except BenchError as e:
        log(f"\nbenchmark failed: {e}")
        return 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the cleanup short
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        cleanup_fn(root, run_id, state)


def run_in_temp_dir(bench_fn, cleanup_fn, args, id_bytes: int = 3) -> int:
    """`run_and_clean_up` with a fresh run id and a temp dir named after it."""
    run_id = secrets.token_hex(id_bytes)
    root = Path(tempfile.mkdtemp(prefix=f"kua-bench-{run_id}-"))
    return run_and_clean_up(bench_fn, cleanup_fn, args, root, run_id, {})


def main() -> int:
    ap = argparse.ArgumentParser(description="kua-deploy deploy overhead, idle memory and healthy->succeeded latency")
    ap.add_argument("--rounds", type=int, default=7, help="timed deploys per side (default 7)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed deploys per side first (default 1)")
    ap.add_argument("--bin", help="kua-deploy binary (default target/release/kua-deploy, built with cargo)")
    ap.add_argument("--no-build", action="store_true", help="do not run cargo build when the default binary exists")
    ap.add_argument("--pause", type=float, default=0.3, help="seconds of rest before each deploy (default 0.3)")
    ap.add_argument("--idle", type=float, default=2.0, help="idle seconds before the second RSS reading (default 2)")
    ap.add_argument("--server-log", help="copy the server's log (RUST_LOG=info) to this file")
    ap.add_argument("--deploy-logs", metavar="DIR", help="save each timed kua deploy (object and log) as JSON in DIR")
    args = ap.parse_args()
    if args.rounds < 1 or args.warmup < 1:
        ap.error("--rounds and --warmup must be at least 1")

    run_id = secrets.token_hex(4)
    root = Path(tempfile.mkdtemp(prefix=f"kua-bench-{run_id}-"))
    state: dict = {}

    return run_and_clean_up(bench, cleanup, args, root, run_id, state)


CHILD_ENV = dict(os.environ, GIT_TERMINAL_PROMPT="0", LC_ALL="C")
NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))

if __name__ == "__main__":
    sys.exit(main())
