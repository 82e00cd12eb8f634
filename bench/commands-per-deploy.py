#!/usr/bin/env python3
"""Commands per deploy for kua-deploy (see bench/README.md).

Counts the `docker` and `ssh` processes one deploy spawns, for two builds of kua-deploy side by
side in one run ("before" and "after": by default the commit this branch started from and this
checkout), each on an app on the local engine and on the same app reached over OpenSSH (a real
`sshd` on 127.0.0.1). Counting wrappers named `docker` and `ssh` come first on the server's PATH
(and, for the SSH host, first on the PATH sshd gives remote commands): each appends its argv to a
file and execs the real program.

Prints per build and host the median count per deploy over the rounds, the part of it spent in the
`verify` step, the ratio after/before, and which commands they were. Exits 0 unless something broke
(1), or 130 on Ctrl-C. Python 3.11 stdlib only. Reuses bench/deploy-overhead.py's app, server
driver and clean-up: everything it creates in Docker carries the label `kua-deploy.bench=1` (and a
per-run label) and is removed at the end, also on failure or Ctrl-C.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
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
REPO = Path(__file__).resolve().parent.parent


# ----------------------------------------------------------------------------------------------
# counting wrappers


def write_wrapper(path: Path, tag: str, real: str, count_file: Path, refuse_events: bool = False) -> None:
    """A `docker` or `ssh` that appends `<unix time>\t<tag>\t<argv>` to count_file, then execs the
    real program. With refuse_events, `docker events` fails as an engine without it would."""
    refuse = (
        'case "$1" in events) echo "Error response from daemon: events refused by the benchmark" >&2; exit 1;; esac\n'
        if refuse_events
        else ""
    )
    path.write_text(
        "#!/bin/sh\n"
        f"printf '%s\\t%s\\t%s\\n' \"$(date +%s.%N)\" '{tag}' \"$*\" >> '{count_file}'\n"
        f"{refuse}"
        f"exec '{real}' \"$@\"\n"
    )
    path.chmod(0o755)


def real_program(name: str) -> str:
    found = shutil.which(name)
    if not found:
        raise BenchError(f"{name} is not on PATH")
    return found


class Counting:
    """A wrapper dir for the server and one for remote commands, writing to one count file."""

    def __init__(self, root: Path, refuse_events: bool):
        self.file = root / "commands.tsv"
        self.local = root / "wrap-local"
        self.remote = root / "wrap-remote"
        for d in (self.local, self.remote):
            d.mkdir(parents=True)
        docker, ssh = real_program("docker"), real_program("ssh")
        write_wrapper(self.local / "docker", "docker", docker, self.file, refuse_events)
        write_wrapper(self.local / "ssh", "ssh", ssh, self.file)
        write_wrapper(self.remote / "docker", "docker@ssh", docker, self.file, refuse_events)
        self.file.write_text("")

    def reset(self) -> None:
        self.file.write_text("")

    def read(self) -> list[tuple[float, str, str]]:
        rows = []
        for line in self.file.read_text(errors="replace").splitlines():
            parts = line.split("\t", 2)
            if len(parts) == 3:
                rows.append((float(parts[0]), parts[1], parts[2]))
        return rows


# ----------------------------------------------------------------------------------------------
# an sshd on loopback, as tests/integration/support.rs SshServer starts one


class Sshd:
    """An sshd of its own (host key, client key, authorized_keys, known_hosts, log) on `address`
    (127.0.0.1 by default) and `port` (a free one by default); with `netns`, run inside that
    network namespace (`ip netns exec`), where `address` must be one of its own. With
    `empty_bashrc`, its sessions see an empty ~/.bashrc (a bind mount in a mount namespace of
    its own; nothing changes for the rest of the machine): bash sources that file for every
    command sshd runs, and one that does real work (`pyenv init` rehashes under a lock shared
    by every shell) would be measured instead of the commands."""

    def __init__(
        self,
        root: Path,
        remote_path_prefix: Path,
        address: str = "127.0.0.1",
        port: int | None = None,
        netns: str | None = None,
        extra_config: str = "",
        empty_bashrc: bool = False,
    ):
        self.dir = root
        root.mkdir(parents=True)
        p = lambda name: root / name  # noqa: E731
        for key in ("host_key", "id"):
            do.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(p(key))])
        shutil.copy(p("id.pub"), p("authorized_keys"))
        Path("/run/sshd").mkdir(parents=True, exist_ok=True)
        import socket

        if port is None:
            with socket.socket() as s:
                s.bind((address, 0))
                port = s.getsockname()[1]
        self.address, self.port = address, port
        p("sshd_config").write_text(
            f"Port {self.port}\nListenAddress {address}\nHostKey {p('host_key')}\n"
            f"AuthorizedKeysFile {p('authorized_keys')}\nStrictModes no\nPermitRootLogin prohibit-password\n"
            f"PasswordAuthentication no\nUsePAM no\nPidFile {p('sshd.pid')}\n"
            f"SetEnv PATH={remote_path_prefix}:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin\n{extra_config}"
        )
        host_pub = p("host_key.pub").read_text()
        p("known_hosts").write_text(f"[{address}]:{self.port} {host_pub}")
        self.identity, self.known_hosts = p("id"), p("known_hosts")
        sshd = shutil.which("sshd") or "/usr/sbin/sshd"
        inside = ["ip", "netns", "exec", netns] if netns else []  # it execs sshd: the pid is sshd's
        bashrc = Path.home() / ".bashrc"
        if empty_bashrc and bashrc.exists():
            p("empty").write_text("")
            mount = 'mount --bind "$0" "$1" && shift && exec "$@"'  # every step execs: the pid stays sshd's
            inside = ["unshare", "--mount", "--propagation", "private", "sh", "-c", mount, str(p("empty")), str(bashrc), *inside]
        self.proc = subprocess.Popen(
            [*inside, sshd, "-D", "-f", str(p("sshd_config")), "-E", str(p("sshd.log"))],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,  # it logs to sshd.log; its sessions must not hold the script's pipes
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection((address, self.port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise BenchError(f"sshd did not listen on {address}:{self.port}") from None
                time.sleep(0.05)

    def stop(self) -> None:
        """Stops the listener and the sessions it forked: a session whose client vanished without
        closing its connection would otherwise live on, reparented to init."""
        sessions = [pid for pid in _children(self.proc.pid) if pid != self.proc.pid]
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        for pid in sessions:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass


def stop_all(things, what: str) -> None:
    """Stops each of `things` (servers, sshds) at clean-up, going on past any failure."""
    for thing in things:
        try:
            thing.stop()
        except Exception as e:  # noqa: BLE001 - cleanup goes on regardless
            log(f"cleanup: stopping {what}: {e}")


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:  # the field after the state: ppid
                found.append(int(entry))
    return found


# ----------------------------------------------------------------------------------------------
# builds


def build(src: Path, label: str, target: Path, out: Path) -> Path:
    """cargo build (debug: what is counted does not depend on the profile) of the tree at src into
    target; the binary is copied out at once. The two trees build into target dirs of their own:
    Cargo names a package's binary alike whichever directory it was built from, so in a shared one
    a build of one tree can leave the other's binary in place and call it fresh."""
    log(f"building {label}: cargo build in {src} (target dir {target})")
    env = dict(os.environ, CARGO_TARGET_DIR=str(target))
    p = subprocess.run(["cargo", "build", "--quiet", "--bin", "kua-deploy"], cwd=src, env=env)
    if p.returncode != 0:
        raise BenchError(f"cargo build of {label} failed")
    shutil.copy2(target / "debug" / "kua-deploy", out)
    return out


def before_binary(args: argparse.Namespace, root: Path) -> tuple[Path, str]:
    if args.before_bin:
        return Path(args.before_bin).resolve(), "--before-bin"
    ref = args.before or do.run(["git", "merge-base", "HEAD", "main"], cwd=REPO)
    commit = do.run(["git", "rev-parse", "--short", ref], cwd=REPO)
    src = root / "before-src"
    src.mkdir()
    archive = subprocess.run(["git", "archive", "--format=tar", ref], cwd=REPO, capture_output=True)
    if archive.returncode != 0:
        raise BenchError(f"git archive {ref} failed: {archive.stderr.decode(errors='replace')}")
    # -m: the files get the time of extraction, so Cargo never takes an older tree for one it built.
    subprocess.run(["tar", "-x", "-m", "-C", str(src)], input=archive.stdout, check=True)
    return build(src, f"before ({commit})", REPO / "target" / "bench-before", root / "kua-deploy-before"), commit


def after_binary(args: argparse.Namespace, root: Path) -> tuple[Path, str]:
    if args.after_bin:
        return Path(args.after_bin).resolve(), "--after-bin"
    commit = do.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO)
    dirty = do.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO)
    target = Path(os.environ.get("CARGO_TARGET_DIR") or REPO / "target")
    label = f"after ({commit}{'+changes' if dirty else ''})"
    return build(REPO, label, target, root / "kua-deploy-after"), commit + ("+" if dirty else "")


# ----------------------------------------------------------------------------------------------
# one side: a build on one host kind


class CountedServer(do.Server):
    """deploy-overhead's server, started with the counting wrappers first on its PATH."""

    def __init__(self, binary: Path, world, token: str, path_prefix: Path):
        super().__init__(binary, world, token)
        self.path_prefix = path_prefix

    def start(self) -> None:
        saved = do.CHILD_ENV  # Server.start reads the module's environment for its child
        do.CHILD_ENV = dict(saved, PATH=f"{self.path_prefix}:{saved.get('PATH', '')}")
        try:
            super().start()
        finally:
            do.CHILD_ENV = saved


def deploy(server, world, expect: str, reason: str) -> dict:
    code, body = server.call("POST", f"/api/v1/apps/{APP}/deploy", {"reason": reason})
    if code != 202:
        raise BenchError(f"POST deploy answered {code}: {body}")
    deploy_id = body["deploy_id"]
    deadline = time.monotonic() + 180
    while True:
        code, d = server.call("GET", f"/api/v1/deploys/{deploy_id}")
        if code != 200:
            raise BenchError(f"GET deploy {deploy_id} answered {code}: {d}")
        if d["phase"] in TERMINAL or d["phase"] == "awaiting_approval":
            break
        if time.monotonic() > deadline:
            raise BenchError(f"deploy {deploy_id} still {d['phase']} after 180 s;\n{server.log_tail()}")
        time.sleep(POLL_S)
    if d["phase"] != "succeeded":
        raise BenchError(
            f"deploy {deploy_id} ended {d['phase']}: {d.get('error')}\n"
            f"deploy log:\n{server.deploy_log(deploy_id)}\n{server.log_tail()}"
        )
    served = do.served_body(world.kua_project, world.kua_checkout)
    if served != expect:
        raise BenchError(f"after deploy {deploy_id} the app serves {served!r}, expected {expect!r}")
    return d


def timed_rounds(binary: Path, world, state: dict, label: str, rounds: int, measure) -> list:
    """A server on `world`: one warm-up deploy, then `rounds` deploys of a new commit each.
    `measure(deploy)` gives what one round measured and a line to log. Stops the server."""
    server = do.Server(binary, world, "bench-" + secrets.token_hex(24))
    state["server"] = server
    server.start()
    deploy(server, world, "v0", "bench warm-up")
    measured = []
    for i in range(1, rounds + 1):
        content = world.push(f"{label} round {i}")
        m, line = measure(deploy(server, world, content, f"bench {label} round {i}"))
        measured.append(m)
        log(f"  {label:<8} round {i}: {line}")
    server.stop()
    state["server"] = None
    return measured


def kind_of(tag: str, argv: str) -> str:
    """A command's kind for the breakdown: `docker container inspect`, `ssh: docker compose up`, ..."""
    words = argv.replace("'", "").split()
    prefix = ""
    if tag == "ssh":  # [options] -- user@host [cd DIR &&] exec [env K=V ...] program args
        prefix = "ssh: "
        words = words[words.index("exec") + 1 :] if "exec" in words else words[-1:]
        if words[:1] == ["env"]:
            words = words[1:]
        while words and "=" in words[0]:
            words = words[1:]
    else:
        words = ["docker", *words]
    if not words:
        return prefix + "?"
    program, rest = words[0], [w for w in words[1:] if not w.startswith("-")]
    if program == "docker" and rest[:1] == ["compose"]:
        sub = next((w for w in rest[1:] if w in ("config", "build", "up", "run", "down", "ps", "images", "version")), "")
        return f"{prefix}docker compose {sub}".rstrip()
    if program == "docker" and rest[:1] in (["container"], ["image"]):
        return f"{prefix}docker {' '.join(rest[:2])}"
    return f"{prefix}{program} {rest[0] if rest else ''}".rstrip()


def side(args, root: Path, run_id: str, state: dict, name: str, binary: Path, host: str) -> dict:
    """Deploys `args.rounds` new commits of the app (after one untimed warm-up) with `binary`, the
    app on `host` ("local" or "ssh"), counting the processes of each deploy."""
    counting = Counting(root / f"count-{name}-{host}", refuse_events=args.refuse_events and name == "after")
    world = do.World(root / f"{name}-{host}", run_id + ("b" if name == "before" else "a") + host[0])
    world.root.mkdir(parents=True)
    state["projects"].append(world.kua_project)
    world.create()
    registry = json.loads(world.registry.read_text())
    app = registry["apps"][APP]
    app["verify"] = {"timeout_s": 60, "stable_s": args.stable}
    sshd = None
    if host == "ssh":
        sshd = Sshd(root / f"sshd-{name}", counting.remote)
        state["sshd"].append(sshd)
        user = pwd.getpwuid(os.getuid()).pw_name
        registry["hosts"] = {
            "loop": {
                "ssh": f"{user}@127.0.0.1:{sshd.port}",
                "identity_file": str(sshd.identity),
                "known_hosts_file": str(sshd.known_hosts),
            }
        }
        app["host"] = "loop"
    world.registry.write_text(json.dumps(registry, indent=2))
    server = CountedServer(binary, world, "bench-" + secrets.token_hex(24), counting.local)
    state["server"] = server
    server.start()
    v0 = (world.work / "index.html").read_text().strip()
    deploy(server, world, v0, "bench warm-up")
    rounds = []
    for i in range(1, args.rounds + 1):
        content = world.push(f"{name} {host} round {i}")
        time.sleep(args.pause)
        counting.reset()
        d = deploy(server, world, content, f"bench {name} {host} round {i}")
        time.sleep(0.5)  # a command that was killed as the deploy ended has logged itself long before
        rows = counting.read()
        verify = next(s for s in d["steps"] if s["name"] == "verify")
        v0t, v1t = parse_ts(verify["started_at"]), parse_ts(verify["finished_at"])
        tags = Counter(tag for _, tag, _ in rows)
        in_verify = Counter(tag for t, tag, _ in rows if v0t <= t <= v1t)
        kinds = Counter(kind_of(tag, argv) for _, tag, argv in rows if tag in ("docker", "ssh"))
        _, page = server.call("GET", f"/api/v1/deploys/{d['deploy_id']}/logs")
        text = "\n".join(line.get("line", "") for line in page.get("lines", []))
        fell_back = "cannot follow the engine's events" in text
        if args.refuse_events and name == "after" and not fell_back:
            raise BenchError(f"docker events was refused, but deploy {d['deploy_id']}'s log does not say verify fell back")
        rounds.append(
            {
                "tags": tags,
                "in_verify": in_verify,
                "kinds": kinds,
                "verify_s": v1t - v0t,
                "fell_back": fell_back,
            }
        )
        shown = ", ".join(f"{tags[t]} {t}" for t in ("docker", "ssh", "docker@ssh") if tags[t])
        log(
            f"  {name:<6} {host:<5} round {i}: {shown}; in verify ({v1t - v0t:.2f} s): "
            + ", ".join(f"{in_verify[t]} {t}" for t in ("docker", "ssh") if tags[t])
            + ("  [verify fell back to polling]" if fell_back else "")
        )
    server.stop()
    state["server"] = None
    if sshd is not None:
        sshd.stop()
    return {"rounds": rounds}


# ----------------------------------------------------------------------------------------------
# the benchmark


def med_count(res: dict, key: str, tag: str) -> float:
    return median([r[key][tag] for r in res["rounds"]])


def bench(args: argparse.Namespace, root: Path, run_id: str, state: dict) -> None:
    do.preflight()
    for tool in ("ssh", "ssh-keygen"):
        real_program(tool)
    before_bin, before_name = before_binary(args, root)
    after_bin, after_name = after_binary(args, root)
    log(f"run {run_id}: before = {before_name} ({before_bin}), after = {after_name} ({after_bin}); files in {root}")
    log(f"app: deploy-overhead.py's busybox httpd, HEALTHCHECK every 1 s, verify stable_s {args.stable}")
    if args.refuse_events:
        log("the after build's `docker events` is refused: its verify must fall back to polling")
    state["projects"], state["sshd"] = [], []
    results: dict[tuple[str, str], dict] = {}
    log(f"\n== {args.rounds} deploys per build and host, each of a new commit replacing a running container ==")
    for host in ("local", "ssh"):
        for name, binary in (("before", before_bin), ("after", after_bin)):
            results[(name, host)] = side(args, root, run_id, state, name, binary, host)

    log(f"\n== processes per deploy: median over {args.rounds} rounds (before {before_name}, after {after_name}) ==")
    log(f"  {'host':<6} {'program':<34} {'before':>8} {'after':>8} {'after/before':>13}")
    for host, tags in (("local", ("docker",)), ("ssh", ("ssh", "docker@ssh"))):
        b, a = results[("before", host)], results[("after", host)]
        for tag in tags:
            what = {"docker": "docker", "ssh": "ssh (local side)", "docker@ssh": "docker (run by sshd)"}[tag]
            for key, label in (("tags", what), ("in_verify", "  of which in verify")):
                bv, av = med_count(b, key, tag), med_count(a, key, tag)
                ratio = f"{av / bv:13.3f}" if bv else f"{'-':>13}"
                log(f"  {host:<6} {label:<34} {bv:8.0f} {av:8.0f} {ratio}")
        bvs = median([r["verify_s"] for r in b["rounds"]])
        avs = median([r["verify_s"] for r in a["rounds"]])
        log(f"  {host:<6} {'verify step (s)':<34} {bvs:8.2f} {avs:8.2f} {avs / bvs:13.3f}")

    log("\n== which commands (all rounds together) ==")
    for host in ("local", "ssh"):
        b, a = results[("before", host)], results[("after", host)]
        bk = sum((r["kinds"] for r in b["rounds"]), Counter())
        ak = sum((r["kinds"] for r in a["rounds"]), Counter())
        for kind in sorted(set(bk) | set(ak), key=lambda k: (-(bk[k] + ak[k]), k)):
            log(f"  {host:<6} {kind:<46} {bk[kind]:6d} {ak[kind]:6d}")
    fell = sum(r["fell_back"] for res in results.values() for r in res["rounds"])
    if fell and not args.refuse_events:
        log(f"\n  note: in {fell} deploy(s) verify fell back to polling (see the deploy's log)")


def cleanup(root: Path, run_id: str, state: dict, suffixes=("bl", "al", "bs", "as")) -> None:
    """Stops the servers (`server`, `servers`) and sshds of `state`, removes the Docker objects
    labelled with the run id plus one of `suffixes` or of its `projects`, and the temp dir."""
    servers = [s for s in (state.get("server"), *state.get("servers", [])) if s is not None]
    stop_all(servers, "a server")
    state["server"] = None
    stop_all(state.get("sshd", []), "sshd")
    filters = [f"label={do.RUN_LABEL}={run_id}{suffix}" for suffix in suffixes]
    filters += [f"label=com.docker.compose.project={p}" for p in state.get("projects", [])]
    removed = do.remove_docker_objects(filters)
    shutil.rmtree(root, ignore_errors=True)
    log(f"cleanup: removed {', '.join(removed) if removed else 'no Docker objects'} and {root}")


def main() -> int:
    ap = argparse.ArgumentParser(description="kua-deploy: docker and ssh processes per deploy, before/after")
    ap.add_argument("--rounds", type=int, default=3, help="counted deploys per build and host (default 3)")
    ap.add_argument("--stable", type=int, default=5, help="the app's verify stable_s (default 5, the registry default)")
    ap.add_argument("--before", metavar="REF", help="git ref of the before build (default: merge-base of HEAD and main)")
    ap.add_argument("--before-bin", metavar="PATH", help="a built before binary instead of building --before")
    ap.add_argument("--after-bin", metavar="PATH", help="a built after binary instead of building this checkout")
    ap.add_argument("--refuse-events", action="store_true", help="make `docker events` fail for the after build")
    ap.add_argument("--pause", type=float, default=0.3, help="seconds of rest before each deploy (default 0.3)")
    args = ap.parse_args()
    if args.rounds < 1 or args.stable < 0:
        ap.error("--rounds must be at least 1 and --stable at least 0")

    run_id = secrets.token_hex(3)
    root = Path(tempfile.mkdtemp(prefix=f"kua-bench-{run_id}-"))
    state: dict = {}

    return do.run_and_clean_up(bench, cleanup, args, root, run_id, state)


if __name__ == "__main__":
    sys.exit(main())
