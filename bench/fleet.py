#!/usr/bin/env python3
"""A fleet run: every app of N hosts × M apps redeployed at once, over SSH and on the local engine
(see bench/README.md).

N simulated servers, each its own `sshd` (own port, host key, client key, known_hosts, log), each
in a network namespace of its own reached through a veth pair (10.77.X.4i+1 <-> 10.77.X.4i+2/30;
distinct loopback addresses 127.0.1.i+1 where namespaces cannot be made), its sessions seeing an
empty ~/.bashrc (see bench/README.md). M apps per host, each with its own bare remote, checkout
and Compose project, all on this machine's one Docker engine.

 1. (untimed) a `kua-deploy serve` with every app on the local engine: the first deploy of all,
    --first-parallel at a time.
 2. a second server with every app on its SSH host, started cold; a new commit for every app,
    then all N×M redeploys triggered at once through the admin API:
    total time (first POST to the last deploy's `finished_at`), every deploy's phase, SSH
    connections per host (`Accepted publickey` in each sshd's log), latency of `GET /api/v1/apps`
    and `/healthz` polled every 50 ms meanwhile (in a process of its own), the server's peak RSS.
 3. the first server again, every app on the local engine (the same checkouts and Compose
    projects): a new commit for every app, the same N×M redeploys at once, the same measures.

Prints them side by side with the ratios ssh/local. Exits 0 when every deploy succeeded, 1 if one
did not or something broke, 130 on Ctrl-C. Python 3.11 stdlib only; reuses deploy-overhead.py's
server driver and clean-up and commands-per-deploy.py's sshd. Everything made in Docker carries
the label `kua-deploy.bench.run=<run id>`; it, the namespaces, the sshds and the servers are
removed at the end, also on failure or Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import pwd
import secrets
import shutil
import sys
import time
import types
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.dont_write_bytecode = True  # before the sibling import: no __pycache__ in bench/
import siblings  # noqa: E402

cpd = siblings.load("commands_per_deploy", "commands-per-deploy.py")
do = cpd.do
BenchError, log, median, parse_ts = do.BenchError, do.log, do.median, do.parse_ts

REPO = Path(__file__).resolve().parent.parent
PROBE_EVERY_S = 0.05
PROBE_MAX = 40_000  # samples per endpoint: 33 minutes at 50 ms
API_TARGET_MS = 50.0
SSH_PORT_BASE = 2200


# ----------------------------------------------------------------------------------------------
# the hosts: a namespace (or a loopback address) and an sshd each


def free_subnet() -> int:
    """The first 10.77.X.0/24 (X from 100) that no address or route of this machine touches."""
    used = do.run(["ip", "-4", "-o", "addr"]) + "\n" + do.run(["ip", "-4", "route"])
    for x in range(100, 250):
        if f"10.77.{x}." not in used:
            return x
    raise BenchError("no free 10.77.X.0/24 for the hosts' namespaces")


def make_netns(run_id: str, i: int, subnet: int, state: dict) -> tuple[str, str]:
    """Namespace kfb<run>h<i> with a veth pair to this one; returns (namespace, its address)."""
    ns, outer, inner = f"kfb{run_id}h{i}", f"kf{run_id}{i:02d}o", f"kf{run_id}{i:02d}i"
    state["netns"].append((ns, outer))  # before making them: a half-made pair is removed too
    ours, theirs = f"10.77.{subnet}.{4 * i + 1}", f"10.77.{subnet}.{4 * i + 2}"
    for argv in (
        ["ip", "netns", "add", ns],
        ["ip", "link", "add", outer, "type", "veth", "peer", "name", inner],
        ["ip", "link", "set", inner, "netns", ns],
        ["ip", "addr", "add", f"{ours}/30", "dev", outer],
        ["ip", "link", "set", outer, "up"],
        ["ip", "-n", ns, "addr", "add", f"{theirs}/30", "dev", inner],
        ["ip", "-n", ns, "link", "set", inner, "up"],
        ["ip", "-n", ns, "link", "set", "lo", "up"],
    ):
        do.run(argv)
    return ns, theirs


def remove_netns(ns: str, outer: str) -> None:
    do.run_quiet(["ip", "netns", "del", ns])  # takes the pair with it
    do.run_quiet(["ip", "link", "del", outer])  # in case the pair was made before the namespace failed


class Host:
    def __init__(self, i: int, sshd, netns: str | None):
        self.name = f"h{i:02d}"
        self.sshd, self.netns = sshd, netns
        self.apps: list[App] = []

    def registry_entry(self) -> dict:
        user = pwd.getpwuid(os.getuid()).pw_name
        return {
            "ssh": f"{user}@{self.sshd.address}:{self.sshd.port}",
            "identity_file": str(self.sshd.identity),
            "known_hosts_file": str(self.sshd.known_hosts),
        }

    def accepted(self) -> int:
        return (self.sshd.dir / "sshd.log").read_text(errors="replace").count("Accepted publickey")


def make_hosts(args, root: Path, run_id: str, state: dict) -> tuple[list[Host], str]:
    """N hosts, each in its own namespace, or all on loopback addresses if namespaces fail."""
    plain = root / "plain-path"
    plain.mkdir()
    hosts: list[Host] = []
    mode = "netns"
    subnet = free_subnet()
    for i in range(args.hosts):
        netns = None
        if mode == "netns":
            try:
                netns, address = make_netns(run_id, i, subnet, state)
            except BenchError as e:
                if i > 0:
                    raise
                log(f"note: cannot make a network namespace ({e.args[0].splitlines()[-1]}); using loopback addresses")
                mode = "loopback"
        if mode == "loopback":
            address = f"127.0.1.{i + 1}"
        sshd = cpd.Sshd(
            root / "hosts" / f"h{i:02d}",
            plain,
            address=address,
            port=SSH_PORT_BASE + i,
            netns=netns,
            extra_config=f"MaxSessions {args.max_sessions}\n" if args.max_sessions else "",
            empty_bashrc=not args.keep_bashrc,
        )
        state["sshd"].append(sshd)
        hosts.append(Host(i, sshd, netns))
    return hosts, mode


# ----------------------------------------------------------------------------------------------
# the apps: FROM a shared busybox base, one Compose project each, all on one shared network


def make_base(root: Path, run_id: str) -> str:
    ctx = root / "base"
    ctx.mkdir()
    shutil.copy(do.BUSYBOX, ctx / "busybox")
    (ctx / "Dockerfile").write_text(
        f"FROM scratch\nLABEL {do.BENCH_LABEL}=1 {do.RUN_LABEL}={run_id}\nCOPY busybox /bin/busybox\n"
    )
    tag = f"kfb{run_id}-base:1"
    do.run(["docker", "build", "-q", "-t", tag, str(ctx)], timeout=300)
    return tag


class App:
    def __init__(self, root: Path, run_id: str, host: Host, j: int):
        self.host = host
        self.name = f"{host.name}a{j:02d}"
        self.project = f"kf{run_id}{self.name}"
        d = root / "apps" / self.name
        self.dir, self.remote, self.work, self.checkout = d, d / "remote.git", d / "work", d / "checkout"
        self.pushes = 0

    def create(self, base: str, network: str, run_id: str, health_interval: float) -> str:
        self.dir.mkdir(parents=True)
        do.git(self.dir, "init", "--quiet", "--bare", str(self.remote))
        do.git(self.dir, "init", "--quiet", str(self.work))
        health = (
            f'HEALTHCHECK --interval={health_interval:g}s --timeout=2s --retries=2 CMD ["/bin/busybox","wget","-q","-O","/dev/null","http://127.0.0.1/"]\n'
            if health_interval
            else ""
        )
        (self.work / "Dockerfile").write_text(
            f"FROM {base}\nCOPY index.html /www/index.html\n{health}"
            'CMD ["/bin/busybox","httpd","-f","-p","80","-h","/www"]\n'
        )
        labels = f'["{do.BENCH_LABEL}=1", "{do.RUN_LABEL}={run_id}"]'
        (self.work / "compose.yaml").write_text(
            "services:\n  web:\n    build: .\n    stop_grace_period: 1s\n"
            f"    labels: {labels}\n"
            f"networks:\n  default:\n    name: {network}\n    external: true\n"
        )
        sha = self.push("v0")
        do.git(self.dir, "clone", "--quiet", "--branch", "main", str(self.remote), str(self.checkout))
        return sha

    def push(self, tag: str) -> str:
        """A new commit (a changed index.html: content the build cache has never seen)."""
        self.pushes += 1
        (self.work / "index.html").write_text(f"{self.name} {tag} #{self.pushes} {secrets.token_hex(8)}\n")
        do.git(self.work, "add", "-A")
        do.git(self.work, "commit", "--quiet", "-m", tag)
        if self.pushes == 1:
            do.git(self.work, "remote", "add", "origin", str(self.remote))
        do.git(self.work, "push", "--quiet", "origin", "HEAD:refs/heads/main")
        return do.git(self.work, "rev-parse", "HEAD")

    def registry_entry(self, over_ssh: bool) -> dict:
        entry = {
            "repo": str(self.checkout),
            "project": self.project,
            "services": ["web"],
            "verify": {"timeout_s": 900, "stable_s": 1},
        }
        if over_ssh:
            entry["host"] = self.host.name
        return entry


def in_parallel(fn, items, workers: int) -> list:
    with ThreadPoolExecutor(workers) as ex:
        return list(ex.map(fn, items))


# ----------------------------------------------------------------------------------------------
# the API prober, in a process of its own (the script's own threads never hold it up)


def probe_loop(host: str, port: int, token: str, stop, out) -> None:
    import http.client

    samples: dict[str, list[tuple[float, bool]]] = {"/api/v1/apps": [], "/healthz": []}
    tick = time.monotonic()
    while not stop.is_set() and len(samples["/healthz"]) < PROBE_MAX:
        for path in samples:
            headers = {"Authorization": f"Bearer {token}"} if path.startswith("/api") else {}
            t = time.monotonic()
            try:
                c = http.client.HTTPConnection(host, port, timeout=10)  # a new connection each time
                c.request("GET", path, headers=headers)
                r = c.getresponse()
                r.read()
                ok = r.status == 200
                c.close()
            except OSError:
                ok = False
            samples[path].append((time.monotonic() - t, ok))
        tick += PROBE_EVERY_S
        now = time.monotonic()
        if tick > now:
            time.sleep(tick - now)
        else:
            tick = now  # behind: the next probe at once, not a burst to catch up
    out.put(samples)


class Prober:
    def __init__(self, server):
        host, port = server.url.removeprefix("http://").rsplit(":", 1)
        ctx = multiprocessing.get_context("fork")
        self.stop_evt, self.out = ctx.Event(), ctx.Queue()
        self.proc = ctx.Process(target=probe_loop, args=(host, int(port), server.token, self.stop_evt, self.out))
        self.proc.start()

    def finish(self) -> dict:
        self.stop_evt.set()
        samples = self.out.get(timeout=60)  # before join: a full pipe would block the child's exit
        self.proc.join(10)
        return samples

    def kill(self) -> None:
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join()


def percentile(xs: list[float], p: float) -> float:
    if not xs:
        return float("nan")
    s = sorted(xs)
    return s[max(0, math.ceil(p / 100 * len(s)) - 1)]


# ----------------------------------------------------------------------------------------------
# a wave: every app deployed at once


def start_server(binary: Path, root: Path, name: str, registry: dict, state: dict):
    d = root / name
    d.mkdir()
    world = types.SimpleNamespace(registry=d / "registry.json", state=d / "state", server_log=d / "server.log")
    world.registry.write_text(json.dumps(registry, indent=2))
    server = do.Server(binary, world, "bench-" + secrets.token_hex(24))
    state["servers"].append(server)
    server.start()
    return server


def reset_peak(pid: int) -> None:
    with open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current RSS


def first_deploys(server, apps: list[App], expect: dict[str, str], parallel: int) -> None:
    """Deploys every app, `parallel` at a time, each tried twice: this only has to leave a running
    container to replace, and all at once a slow engine can fail some (a build's deadline)."""

    def deploy(app: App) -> str | None:
        for attempt in (1, 2):
            code, body = server.call("POST", f"/api/v1/apps/{app.name}/deploy", {"reason": "fleet bench first deploy"})
            if code != 202:
                raise BenchError(f"POST deploy of {app.name} answered {code}: {body}")
            while True:
                time.sleep(0.5)
                code, d = server.call("GET", f"/api/v1/deploys/{body['deploy_id']}")
                if code == 200 and d["phase"] in do.TERMINAL:
                    break
            if d["phase"] == "succeeded" and d.get("commit") == expect[app.name]:
                return None
            log(f"  first deploy of {app.name}, attempt {attempt}: {d['phase']}: {d.get('error')}")
        return app.name

    failed = [n for n in in_parallel(deploy, apps, parallel) if n]
    if failed:
        raise BenchError(f"{len(failed)} first deploy(s) failed twice ({', '.join(failed[:5])}); nothing to redeploy")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of the process itself (not of the commands it runs)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wave(server, apps: list[App], expect: dict[str, str], hosts: list[Host], timeout: float, state: dict) -> dict:
    """POSTs a deploy of every app at once (32 senders), waits until all ended; the measures."""
    time.sleep(1)
    reset_peak(server.pid)
    rss_before = do.proc_status(server.pid)["VmRSS"]
    cpu_before = cpu_seconds(server.pid)
    accepted_before = {h.name: h.accepted() for h in hosts}
    prober = Prober(server)
    state["prober"] = prober
    time.sleep(0.5)  # a few probes before the burst

    def post(app: App) -> str:
        code, body = server.call("POST", f"/api/v1/apps/{app.name}/deploy", {"reason": "fleet bench"})
        if code != 202:
            raise BenchError(f"POST deploy of {app.name} answered {code}: {body}")
        return body["deploy_id"]

    t0 = time.time()
    ids = dict(zip((a.name for a in apps), in_parallel(post, apps, 32)))
    posted = time.time() - t0
    deadline = time.monotonic() + timeout
    while True:
        code, body = server.call("GET", "/api/v1/apps")
        if code != 200:
            raise BenchError(f"GET /api/v1/apps answered {code}: {body}")
        last = {a["app"]: (a.get("last_deploy_id"), a.get("last_phase")) for a in body["apps"]}
        running = [n for n, i in ids.items() if last.get(n, (None, None))[0] != i or last[n][1] not in do.TERMINAL]
        if not running:
            break
        if time.monotonic() > deadline:
            prober.finish()
            raise BenchError(f"{len(running)} deploy(s) still running after {timeout:.0f} s (e.g. {running[:5]})")
        time.sleep(0.5)
    seen = time.time() - t0
    samples = prober.finish()
    state["prober"] = None
    status = do.proc_status(server.pid)
    load = os.getloadavg()
    cpu = cpu_seconds(server.pid) - cpu_before
    time.sleep(0.5)  # sshd has logged every login long before
    conns = {h.name: h.accepted() - accepted_before[h.name] for h in hosts}

    def fetch(name: str) -> dict:
        code, d = server.call("GET", f"/api/v1/deploys/{ids[name]}")
        if code != 200:
            raise BenchError(f"GET deploy {ids[name]} answered {code}: {d}")
        return d

    deploys = dict(zip(ids, in_parallel(fetch, list(ids), 8)))
    failures = []
    for name, d in deploys.items():
        if d["phase"] != "succeeded":
            failures.append(f"{name} ({d['deploy_id']}): {d['phase']}: {d.get('error')}")
        elif d.get("commit") != expect[name]:
            failures.append(f"{name} ({d['deploy_id']}): deployed {d.get('commit')}, expected {expect[name]}")
    ended = [parse_ts(d["finished_at"]) for d in deploys.values() if d.get("finished_at")]
    steps: dict[str, list[float]] = {}
    for d in deploys.values():
        for s in d.get("steps", []):
            if s.get("started_at") and s.get("finished_at"):
                steps.setdefault(s["name"], []).append(parse_ts(s["finished_at"]) - parse_ts(s["started_at"]))
    return {
        "total": max(ended) - t0 if ended else float("nan"),
        "posted": posted,
        "seen": seen,
        "deploys": deploys,
        "failures": failures,
        "durations": [parse_ts(d["finished_at"]) - parse_ts(d["created_at"]) for d in deploys.values() if d.get("finished_at")],
        "queued": [parse_ts(d["started_at"]) - parse_ts(d["created_at"]) for d in deploys.values() if d.get("started_at")],
        "steps": steps,
        "conns": conns,
        "api": samples,
        "rss_before": rss_before,
        "hwm": status["VmHWM"],
        "load": load,
        "cpu": cpu,
    }


def report_wave(label: str, w: dict, over_ssh: bool = True) -> None:
    n, bad = len(w["deploys"]), len(w["failures"])
    log(
        f"  {label}: {n - bad}/{n} succeeded; all POSTed in {w['posted']:.2f} s; last deploy ended "
        f"{w['total']:.1f} s after the first POST (client saw it at {w['seen']:.1f} s); load average at the end "
        + " ".join(f"{x:.1f}" for x in w["load"])
    )
    for f in w["failures"][:10]:
        log(f"    FAILED {f}")
    if bad > 10:
        log(f"    ... and {bad - 10} more")
    d = w["durations"]
    log(f"    per deploy (created -> finished): median {median(d):.1f} s, max {max(d):.1f} s; waiting to start: max {max(w['queued']):.2f} s")
    order = [s for s in do.STEP_ORDER if s in w["steps"]] + sorted(set(w["steps"]) - set(do.STEP_ORDER))
    log("    steps, median / max (s): " + ", ".join(f"{s} {median(w['steps'][s]):.1f}/{max(w['steps'][s]):.1f}" for s in order))
    for path, xs in w["api"].items():
        lat = [t * 1000 for t, _ in xs]
        errors = sum(1 for _, ok in xs if not ok)
        log(
            f"    GET {path:<13} {len(xs)} probes, {errors} failed: p50 {percentile(lat, 50):.1f} ms,"
            f" p99 {percentile(lat, 99):.1f} ms, max {max(lat):.1f} ms"
        )
    log(
        f"    server RSS before {w['rss_before'] / 1024:.1f} MiB, peak during {w['hwm'] / 1024:.1f} MiB (VmHWM);"
        f" server CPU time {w['cpu']:.1f} s"
    )
    if over_ssh:
        log("    ssh connections per host (Accepted publickey): " + " ".join(f"{h}={c}" for h, c in w["conns"].items()))


def side_by_side(ssh: dict, local: dict, n_hosts: int) -> None:
    def api(w: dict, path: str, p: float) -> float:
        return percentile([t * 1000 for t, _ in w["api"][path]], p)

    def conns(w: dict) -> str:
        c = list(w["conns"].values())
        return f"{median(c):g} ({min(c)}-{max(c)})"

    rows = [
        ("deploys succeeded", f"{len(ssh['deploys']) - len(ssh['failures'])}/{len(ssh['deploys'])}",
         f"{len(local['deploys']) - len(local['failures'])}/{len(local['deploys'])}", None),
        ("total time, first POST -> last end (s)", f"{ssh['total']:.1f}", f"{local['total']:.1f}", ssh["total"] / local["total"]),
        ("per deploy, median (s)", f"{median(ssh['durations']):.1f}", f"{median(local['durations']):.1f}",
         median(ssh["durations"]) / median(local["durations"])),
        ("ssh connections per host, median (min-max)", conns(ssh), "0", None),
    ]
    for path in ("/api/v1/apps", "/healthz"):
        for p in (50, 99):
            a, b = api(ssh, path, p), api(local, path, p)
            rows.append((f"GET {path} p{p} (ms)", f"{a:.1f}", f"{b:.1f}", a / b))
    rows.append(("server peak RSS, VmHWM (MiB)", f"{ssh['hwm'] / 1024:.1f}", f"{local['hwm'] / 1024:.1f}", ssh["hwm"] / local["hwm"]))
    rows.append(("server CPU time during the wave (s)", f"{ssh['cpu']:.1f}", f"{local['cpu']:.1f}", ssh["cpu"] / max(local["cpu"], 0.01)))
    log(f"\n== {n_hosts} hosts x {len(ssh['deploys']) // n_hosts} apps: every app redeployed at once ==")
    log(f"  {'':<44} {'ssh':>14} {'local':>10} {'ssh/local':>10}")
    for name, a, b, r in rows:
        log(f"  {name:<44} {a:>14} {b:>10} {f'{r:.2f}' if r is not None else '-':>10}")
    worst = max(api(ssh, "/api/v1/apps", 99), api(local, "/api/v1/apps", 99))
    log(f"  API p99 target < {API_TARGET_MS:.0f} ms: {'met' if worst < API_TARGET_MS else 'NOT MET'} (worst {worst:.1f} ms)")


# ----------------------------------------------------------------------------------------------
# the benchmark


def bench(args: argparse.Namespace, root: Path, run_id: str, state: dict) -> None:
    do.preflight()
    for tool in ("ssh", "ssh-keygen", "ip"):
        cpd.real_program(tool)
    binary = do.find_binary(args, REPO)
    extra = json.loads(args.registry_extra) if args.registry_extra else {}
    if not isinstance(extra, dict):
        raise BenchError("--registry-extra must be a JSON object of top-level registry keys")
    state.update(netns=[], sshd=[], servers=[], prober=None, keep=args.keep)
    log(f"run {run_id}: {args.hosts} hosts x {args.apps} apps, {binary}; files in {root}")

    t = time.monotonic()
    hosts, mode = make_hosts(args, root, run_id, state)
    where = (
        f"each in its own network namespace (veth pair, {hosts[0].sshd.address} ... {hosts[-1].sshd.address})"
        if mode == "netns"
        else f"on loopback addresses {hosts[0].sshd.address} ... {hosts[-1].sshd.address} (no namespaces)"
    )
    log(f"hosts: {len(hosts)} sshds, {where}, ports {SSH_PORT_BASE}..{SSH_PORT_BASE + len(hosts) - 1}")
    base = make_base(root, run_id)
    network = f"kfb{run_id}net"
    do.run(["docker", "network", "create", "--label", f"{do.BENCH_LABEL}=1", "--label", f"{do.RUN_LABEL}={run_id}", network])
    apps = []
    for h in hosts:
        h.apps = [App(root, run_id, h, j) for j in range(args.apps)]
        apps += h.apps
    expect = dict(zip((a.name for a in apps), in_parallel(lambda a: a.create(base, network, run_id, args.health_interval), apps, 4)))
    log(f"apps: {len(apps)} (FROM {base}, one network {network}, stop_grace_period 1s, "
        + (f"HEALTHCHECK every {args.health_interval:g} s" if args.health_interval else "no healthcheck") + "); set up in "
        f"{time.monotonic() - t:.1f} s")

    registry_ssh = {
        **extra,
        "hosts": {h.name: h.registry_entry() for h in hosts},
        "apps": {a.name: a.registry_entry(True) for a in apps},
    }
    registry_local = {**extra, "apps": {a.name: a.registry_entry(False) for a in apps}}

    # Phase 1 runs on the local engine: it only has to leave a container to replace, and there it
    # takes a fraction of the time. So the SSH server starts cold in phase 2: its masters (and
    # the connections counted) are made by the redeploys themselves.
    log(f"\n== phase 1 (untimed): first deploy of every app, on the local engine, {args.first_parallel} at a time ==")
    t = time.monotonic()
    local_server = start_server(binary, root, "server-local", registry_local, state)
    first_deploys(local_server, apps, expect, args.first_parallel)
    local_server.stop()
    log(f"  {len(apps)} first deploys succeeded in {time.monotonic() - t:.0f} s")

    log("\n== phase 2: a new commit for every app, all redeployed at once over SSH (a second server) ==")
    expect = dict(zip(expect, in_parallel(lambda a: a.push("ssh"), apps, 4)))
    server = start_server(binary, root, "server-ssh", registry_ssh, state)
    ssh = wave(server, apps, expect, hosts, args.timeout, state)
    report_wave("over ssh", ssh)
    server.stop()

    log("\n== phase 3: a new commit for every app, all redeployed at once on the local engine (the first server again) ==")
    expect = dict(zip(expect, in_parallel(lambda a: a.push("local"), apps, 4)))
    local_server.start()
    local = wave(local_server, apps, expect, hosts, args.timeout, state)
    report_wave("local", local, over_ssh=False)
    local_server.stop()

    side_by_side(ssh, local, len(hosts))
    log(f"  hosts: {where}; machine: {os.cpu_count()} cores, shared with other work")
    if ssh["failures"] or local["failures"]:
        raise BenchError(f"{len(ssh['failures'])} deploy(s) over ssh and {len(local['failures'])} local ones did not succeed")


def keep_logs(root: Path, keep: Path) -> None:
    """The servers' logs and state (every deploy's log is in kua.db) and the sshds' logs."""
    keep.mkdir(parents=True, exist_ok=True)
    for server in root.glob("server-*"):
        shutil.copytree(server, keep / server.name, dirs_exist_ok=True)
    for host in root.glob("hosts/h*"):
        shutil.copy(host / "sshd.log", keep / f"sshd-{host.name}.log")
    log(f"kept the servers' logs and state and the sshds' logs in {keep}")


def cleanup(root: Path, run_id: str, state: dict) -> None:
    if state.get("prober") is not None:
        state["prober"].kill()
    cpd.stop_all(state.get("servers", []), "a server")
    cpd.stop_all(state.get("sshd", []), "sshd")
    for ns, outer in state.get("netns", []):
        remove_netns(ns, outer)
    removed = do.remove_docker_objects([f"label={do.RUN_LABEL}={run_id}"])
    again = do.remove_docker_objects([f"label={do.RUN_LABEL}={run_id}"])  # the base once its children are gone
    removed += [f"then {r}" for r in again]
    if state.get("keep"):
        keep_logs(root, Path(state["keep"]))
    shutil.rmtree(root, ignore_errors=True)
    log(
        f"cleanup: removed {', '.join(removed) if removed else 'no Docker objects'}, "
        f"{len(state.get('sshd', []))} sshd(s), {len(state.get('netns', []))} namespace(s) and {root}"
    )


def main() -> int:
    ap = argparse.ArgumentParser(description="kua-deploy: N hosts x M apps redeployed at once, over SSH and locally")
    ap.add_argument("--hosts", type=int, default=20, help="simulated servers, each its own sshd (default 20, at most 60)")
    ap.add_argument("--apps", type=int, default=10, help="apps per host (default 10)")
    ap.add_argument("--registry-extra", metavar="JSON", help="top-level registry keys merged into both registries, e.g. limits")
    ap.add_argument("--health-interval", type=float, default=0, metavar="S",
                    help="give the apps a HEALTHCHECK every S seconds (default: none; verify then holds stable_s 1)")
    ap.add_argument("--max-sessions", type=int, metavar="N", help="sshd's MaxSessions (default: sshd's own, 10)")
    ap.add_argument("--first-parallel", type=int, default=20, metavar="N",
                    help="first deploys (phase 1, untimed) run N at a time (default 20)")
    ap.add_argument("--keep", metavar="DIR", help="copy the servers' logs and state dirs and the sshds' logs to DIR")
    ap.add_argument("--keep-bashrc", action="store_true",
                    help="the sshds' sessions source this machine's ~/.bashrc (default: an empty one, see bench/README.md)")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds a wave may take (default 1800)")
    ap.add_argument("--bin", help="kua-deploy binary (default target/release/kua-deploy, built with cargo)")
    ap.add_argument("--no-build", action="store_true", help="do not run cargo build when the default binary exists")
    args = ap.parse_args()
    if not 1 <= args.hosts <= 60 or not 1 <= args.apps <= 99:
        ap.error("--hosts must be 1..60 and --apps 1..99")
    return do.run_in_temp_dir(bench, cleanup, args, 2)


if __name__ == "__main__":
    sys.exit(main())
