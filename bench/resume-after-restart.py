#!/usr/bin/env python3
"""Resume-after-restart benchmark for kua-deploy (see bench/README.md).

A deploy whose server is killed during `recreate` is resumed by the next server process: it waits
for the detached `compose up` the killed one started, verifies, and ends the deploy. This measures,
side by side in one run, against the real Docker engine and Compose v2, with a busybox web app
whose stop takes `--grace` seconds:

 - uninterrupted deploys: from the start of the `recreate` step to the deploy's end (`succeeded`),
   from the deploy object's timestamps;
 - interrupted deploys: the server is killed with SIGKILL `--kill-after` seconds into `recreate`
   and started again at once on the same state dir; from the restart (process start) to the
   resumed deploy's end, which must be `succeeded`;
 - for both, how long the app did not answer on its loopback port (a poller, every 25 ms);
 - the restart's own cost: process start -> "listening on" line -> /healthz answered.

Prints the rounds, the medians and the ratio interrupted/uninterrupted; exits 0 unless something
broke (1), or 130 on Ctrl-C. Python 3.11 stdlib only. Reuses bench/deploy-overhead.py's app,
server driver and clean-up: everything it creates in Docker carries the label `kua-deploy.bench=1`
(and a per-run label) and is removed at the end, also on failure or Ctrl-C.
"""

from __future__ import annotations

import argparse
import http.client
import importlib.util
import os
import secrets
import signal
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path


def _load_deploy_overhead():
    path = Path(__file__).resolve().parent / "deploy-overhead.py"
    spec = importlib.util.spec_from_file_location("deploy_overhead", path)
    module = importlib.util.module_from_spec(spec)
    sys.dont_write_bytecode = True  # no __pycache__ left in bench/
    sys.modules[spec.name] = module  # as `import` would: its classes name their module
    spec.loader.exec_module(module)
    return module


do = _load_deploy_overhead()
BenchError, log, median, parse_ts = do.BenchError, do.log, do.median, do.parse_ts
APP, POLL_S, TERMINAL = do.APP, do.POLL_S, do.TERMINAL


# ----------------------------------------------------------------------------------------------
# the app's availability, seen from the loopback port


def free_loopback_port() -> int:
    """A port free on 127.0.0.1 now, to publish the app on a fixed port across recreates (the
    default `127.0.0.1::80` gives every new container a new port, which a poller cannot follow)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Prober:
    """GET / on 127.0.0.1:port every `interval` s in the background; records each outage as the
    start of the last probe answered before it to the start of the first one answered after it
    (wall-clock seconds), so it overstates an outage by at most one interval plus one timeout.
    A probe without a 200 within `timeout` s is a failure: while a container is replaced, a
    connection can hang for a second (a SYN retransmit), and a long timeout would count that
    second as down even though a connection made a little later gets through at once."""

    def __init__(self, port: int, interval: float, timeout: float):
        self.port = port
        self.interval = interval
        self.timeout = timeout
        self.outages: list[tuple[float, float]] = []
        self.probes = 0
        self.failures = 0
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _ok(self) -> bool:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
        try:
            conn.request("GET", "/")
            r = conn.getresponse()
            r.read()
            return r.status == 200
        except (OSError, http.client.HTTPException):
            return False
        finally:
            conn.close()

    def _run(self) -> None:
        last_ok: float | None = None
        down = False
        while not self.stopping.is_set():
            t = time.time()
            ok = self._ok()
            with self.lock:
                self.probes += 1
                if ok:
                    if down and last_ok is not None:
                        self.outages.append((last_ok, t))
                    down = False
                    last_ok = t
                else:
                    self.failures += 1
                    down = True
            self.stopping.wait(self.interval)

    def unavailable(self, start: float, end: float) -> tuple[float, int]:
        """Total outage time overlapping [start, end], and how many outages."""
        with self.lock:
            hits = [(max(a, start), min(b, end)) for a, b in self.outages if b > start and a < end]
        return sum(b - a for a, b in hits), len(hits)

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(5)


# ----------------------------------------------------------------------------------------------
# one deploy of each kind


def get_deploy(server, deploy_id: str) -> dict:
    code, d = server.call("GET", f"/api/v1/deploys/{deploy_id}")
    if code != 200:
        raise BenchError(f"GET deploy {deploy_id} answered {code}: {d}")
    return d


def post_deploy(server, reason: str) -> str:
    code, body = server.call("POST", f"/api/v1/apps/{APP}/deploy", {"reason": reason})
    if code != 202:
        raise BenchError(f"POST deploy answered {code}: {body}")
    return body["deploy_id"]


def step(d: dict, name: str) -> dict:
    return next((s for s in d.get("steps", []) if s["name"] == name), {})


def wait_end(server, deploy_id: str, limit: float = 120) -> dict:
    deadline = time.monotonic() + limit
    while True:
        d = get_deploy(server, deploy_id)
        if d["phase"] in TERMINAL or d["phase"] == "awaiting_approval":
            return d
        if time.monotonic() > deadline:
            raise BenchError(f"deploy {deploy_id} still {d['phase']} after {limit:.0f} s;\n{server.log_tail()}")
        time.sleep(POLL_S)


def check_succeeded(server, world, d: dict, expect: str) -> None:
    if d["phase"] != "succeeded":
        raise BenchError(
            f"deploy {d['deploy_id']} ended {d['phase']}: {d.get('error')}\n"
            f"deploy log:\n{server.deploy_log(d['deploy_id'])}\n{server.log_tail()}"
        )
    body = do.served_body(world.kua_project, world.kua_checkout)
    if body != expect:
        raise BenchError(f"after deploy {d['deploy_id']} the app serves {body!r}, expected {expect!r}")


def uninterrupted(server, world, prober: Prober | None, expect: str, reason: str) -> dict:
    t0 = time.time()
    deploy_id = post_deploy(server, reason)
    d = wait_end(server, deploy_id)
    t1 = time.time()
    check_succeeded(server, world, d, expect)
    rec = step(d, "recreate")
    rec_start, end = parse_ts(rec["started_at"]), parse_ts(d["finished_at"])
    down, outages = prober.unavailable(t0, t1) if prober else (None, 0)
    return {
        "id": deploy_id,
        "deploy": d,
        "recreate_to_end": end - rec_start,
        "recreate": parse_ts(rec["finished_at"]) - rec_start,
        "verify": do.step_durations(d).get("verify"),
        "down": down,
        "outages": outages,
    }


def interrupted(state: dict, world, prober: Prober | None, expect: str, reason: str, kill_after: float) -> dict:
    """Deploy; SIGKILL the server `kill_after` s into recreate; start a new one on the same state
    dir at once; follow the resumed deploy to its end on the new server."""
    server = state["server"]
    t0 = time.time()
    deploy_id = post_deploy(server, reason)
    deadline = time.monotonic() + 120
    while True:
        d = get_deploy(server, deploy_id)
        rec = step(d, "recreate")
        if rec.get("started_at"):
            break
        if d["phase"] in TERMINAL or d["phase"] == "awaiting_approval":
            raise BenchError(f"deploy {deploy_id} ended {d['phase']} before its recreate: {d.get('error')}")
        if time.monotonic() > deadline:
            raise BenchError(f"deploy {deploy_id} did not reach recreate within 120 s")
        time.sleep(POLL_S)
    # Taken before the kill: the resumed process starts the recreate step again, with a new started_at.
    rec_start = parse_ts(rec["started_at"])
    time.sleep(max(0.0, rec_start + kill_after - time.time()))
    killed_at = time.time()
    server.proc.send_signal(signal.SIGKILL)
    server.proc.wait()
    server.stop()  # closes its log file; the process is gone already
    restart_wall = time.time()
    new = do.Server(server.binary, world, server.token)
    state["server"] = new
    new.start()
    d = wait_end(new, deploy_id)
    t1 = time.time()
    check_succeeded(new, world, d, expect)
    _, page = new.call("GET", f"/api/v1/deploys/{deploy_id}/logs")
    text = "\n".join(line.get("line", "") for line in page.get("lines", []))
    if "waiting for the recreate started before the restart" in text:
        how = "waited for the detached compose up"
    elif "recreating again" in text:
        how = "redid the recreate"
    else:
        how = "?"
    if "kua-deploy restarted: resuming this deploy" not in text:
        raise BenchError(f"deploy {deploy_id} ended succeeded, but its log does not say it was resumed:\n{text}")
    end = parse_ts(d["finished_at"])
    down, outages = prober.unavailable(t0, t1) if prober else (None, 0)
    leftover = (world.state / "runs" / f"{deploy_id}.log").exists()
    return {
        "id": deploy_id,
        "deploy": d,
        "killed_after": killed_at - rec_start,
        "restart_to_end": end - restart_wall,
        "recreate_to_end": end - rec_start,
        "to_listening": new.listening_at - new.spawned_at,
        "to_healthz": new.answering_at - new.spawned_at,
        "how": how,
        "runs_log_left": leftover,
        "restamped": parse_ts(step(d, "recreate")["started_at"]) - rec_start,
        "down": down,
        "outages": outages,
    }


# ----------------------------------------------------------------------------------------------
# the benchmark


def fmt_down(r: dict) -> str:
    if r["down"] is None:
        return "-"
    return f"{r['down']:.3f} s ({r['outages']} outage{'s' if r['outages'] != 1 else ''})"


def bench(args: argparse.Namespace, root: Path, run_id: str, state: dict) -> None:
    repo = Path(__file__).resolve().parent.parent
    binary = do.find_binary(args, repo)
    do.preflight()
    port = free_loopback_port()
    world = do.World(root, run_id, stop_grace=f"{args.grace:g}s", host_port=port)
    state["projects"] = [world.kua_project]
    world.create()
    log(
        f"run {run_id}: project {world.kua_project}, app on 127.0.0.1:{port}, stop_grace_period {args.grace:g}s,"
        f" files in {root}"
    )
    server = do.Server(binary, world, "bench-" + secrets.token_hex(24))
    state["server"] = server
    server.start()
    log(f"kua-deploy serve (pid {server.pid}) at {server.url}")

    log("warm-up: first deploy (untimed)")
    v0 = (world.work / "index.html").read_text().strip()
    uninterrupted(server, world, None, v0, "bench warm-up")
    prober = None if args.no_probe else Prober(port, args.probe_interval, args.probe_timeout)
    state["prober"] = prober

    plain: list[dict] = []
    resumed: list[dict] = []
    log(f"\n== {args.rounds} rounds, alternating: uninterrupted deploy / server killed {args.kill_after:g} s into recreate ==")
    log("  uninterrupted: recreate start -> succeeded [recreate, verify]; app unavailable")
    log("  interrupted:   restart -> succeeded (recreate start -> succeeded) [kill offset; restart -> listening,"
        " -> /healthz]; how the resume went; app unavailable")
    for i in range(1, args.rounds + 1):
        time.sleep(args.pause)
        content = world.push(f"round {i} uninterrupted")
        u = uninterrupted(state["server"], world, prober, content, f"bench round {i}")
        plain.append(u)
        log(
            f"  round {i:>2} uninterrupted {u['recreate_to_end']:6.3f} s  [{u['recreate']:.3f}, {u['verify']:.3f}]"
            f"  unavailable {fmt_down(u)}"
        )
        time.sleep(args.pause)
        content = world.push(f"round {i} interrupted")
        r = interrupted(state, world, prober, content, f"bench round {i} (killed)", args.kill_after)
        resumed.append(r)
        log(
            f"  round {i:>2} interrupted   {r['restart_to_end']:6.3f} s  ({r['recreate_to_end']:.3f})"
            f"  [killed at {r['killed_after']:.3f} s; {r['to_listening']:.3f}, {r['to_healthz']:.3f}]"
            f"  {r['how']}; unavailable {fmt_down(r)}"
        )

    if prober:
        prober.stop()
    shutdown_s = state["server"].stop()
    summary(args, plain, resumed, prober, shutdown_s)


def summary(args, plain: list[dict], resumed: list[dict], prober: Prober | None, shutdown_s: float | None) -> None:
    u = median([r["recreate_to_end"] for r in plain])
    i_restart = median([r["restart_to_end"] for r in resumed])
    i_rec = median([r["recreate_to_end"] for r in resumed])
    log("\n== summary (medians over the rounds) ==")
    log(f"  uninterrupted: recreate start -> succeeded                 {u:6.3f} s")
    log(f"  interrupted:   restart (process start) -> succeeded        {i_restart:6.3f} s")
    log(f"  interrupted:   recreate start -> succeeded (kill included) {i_rec:6.3f} s")
    log(f"  ratio interrupted(restart -> end) / uninterrupted(recreate -> end)  = {i_restart / u:.3f}")
    log(f"  ratio interrupted(recreate -> end) / uninterrupted(recreate -> end) = {i_rec / u:.3f}"
        f"  (what the kill adds to the deploy: {i_rec - u:+.3f} s)")
    log(
        f"  restart -> 'listening on' {median([r['to_listening'] for r in resumed]):.3f} s,"
        f" -> /healthz answered {median([r['to_healthz'] for r in resumed]):.3f} s"
        f" (max {max(r['to_healthz'] for r in resumed):.3f} s)"
    )
    hows = sorted({r["how"] for r in resumed})
    counts = [f"{sum(r['how'] == h for r in resumed)} {h}" for h in hows]
    log(f"  resumed deploys: {', '.join(counts)}")
    if prober:
        du, di = median([r["down"] for r in plain]), median([r["down"] for r in resumed])
        log(
            f"  app unavailable on 127.0.0.1 (median): uninterrupted {du:.3f} s, interrupted {di:.3f} s"
            f"  (max {max(r['down'] for r in plain):.3f} / {max(r['down'] for r in resumed):.3f} s;"
            f" probe every {args.probe_interval * 1000:.0f} ms, timeout {args.probe_timeout * 1000:.0f} ms;"
            f" {prober.probes} probes, {prober.failures} failed)"
        )
    left = sum(r["runs_log_left"] for r in resumed)
    if left:
        log(f"  note: {left} resumed deploy(s) left their <state-dir>/runs/<deploy>.log behind")
    restamped = [r["restamped"] for r in resumed if r["restamped"] > 0.001]
    if restamped:
        log(
            f"  note: in {len(restamped)} resumed deploy(s) the recreate step's started_at is the resumed process's"
            f" ({median(restamped):.3f} s after the recreate began, median); the figures above use the first one"
        )
    if shutdown_s is not None:
        log(f"  (SIGTERM -> exit of the last server {shutdown_s:.2f} s)")


def wait_for_orphan_recreates(projects: list[str], limit: float) -> None:
    """A run stopped while a killed server's detached `compose up` still runs must let it finish,
    or it would create a container after the clean-up removed everything."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        busy = False
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"compose" in argv and b"up" in argv and any(p.encode() in argv for p in projects):
                busy = True
                break
        if not busy:
            return
        time.sleep(0.2)


def cleanup(root: Path, run_id: str, state: dict) -> None:
    prober = state.get("prober")
    if prober is not None:
        prober.stop()
    wait_for_orphan_recreates(state.get("projects", []), limit=30)
    do.cleanup(root, run_id, state)


def main() -> int:
    ap = argparse.ArgumentParser(description="kua-deploy: time from a restart to the resumed deploy's end")
    ap.add_argument("--rounds", type=int, default=5, help="deploys of each kind (default 5)")
    ap.add_argument("--grace", type=float, default=3.0, help="the app's stop_grace_period in seconds (default 3)")
    ap.add_argument("--kill-after", type=float, default=1.0, help="seconds into recreate to kill the server (default 1)")
    ap.add_argument("--bin", help="kua-deploy binary (default target/release/kua-deploy, built with cargo)")
    ap.add_argument("--no-build", action="store_true", help="do not run cargo build when the default binary exists")
    ap.add_argument("--pause", type=float, default=0.3, help="seconds of rest before each deploy (default 0.3)")
    ap.add_argument("--probe-interval", type=float, default=0.025, help="seconds between loopback probes (default 0.025)")
    ap.add_argument("--probe-timeout", type=float, default=0.2, help="seconds a probe may take (default 0.2)")
    ap.add_argument("--no-probe", action="store_true", help="do not poll the app's port")
    args = ap.parse_args()
    if args.rounds < 1:
        ap.error("--rounds must be at least 1")
    if not 0 < args.kill_after < args.grace:
        ap.error("--kill-after must be between 0 and --grace, so that the kill lands while compose up runs")

    run_id = secrets.token_hex(4)
    root = Path(tempfile.mkdtemp(prefix=f"kua-bench-{run_id}-"))
    state: dict = {}

    return do.run_and_clean_up(bench, cleanup, args, root, run_id, state)


if __name__ == "__main__":
    sys.exit(main())
