#!/usr/bin/env python3
"""The same redeploy over SSH and on the local engine (see bench/README.md).

One build of kua-deploy (this checkout, or --bin), two servers: one with the app on the local
engine, one with the same app on a host reached over OpenSSH (a real `sshd` on 127.0.0.1).
Redeploys a new commit on each, alternating, `--rounds` times after one untimed warm-up each, and
prints the median deploy time (first step's start to last step's end) on each side, their ratio
(target <= 1.10) and the connections per deploy (`Accepted publickey` lines sshd logged, target 1
per host while the master lives). Exits 0 unless something broke (1), or 130 on Ctrl-C. Python
3.11 stdlib only; reuses bench/commands-per-deploy.py's sshd and deploy-overhead.py's app, driver
and clean-up (everything made in Docker carries the label `kua-deploy.bench=1`).
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import secrets
import sys
from pathlib import Path


sys.dont_write_bytecode = True  # before the sibling import: no __pycache__ in bench/
import siblings  # noqa: E402

cpd = siblings.load("commands_per_deploy", "commands-per-deploy.py")
do = cpd.do
log, median, parse_ts = do.log, do.median, do.parse_ts


def world_for(root: Path, run_id: str, host: str, state: dict):
    world = do.World(root / host, run_id + host[0])
    world.root.mkdir(parents=True)
    state["projects"].append(world.kua_project)
    world.create()
    registry = json.loads(world.registry.read_text())
    registry["apps"][do.APP]["verify"] = {"timeout_s": 60, "stable_s": 5}
    sshd = None
    if host == "ssh":
        plain = root / "plain-path"
        plain.mkdir(exist_ok=True)
        sshd = cpd.Sshd(root / "sshd", plain, empty_bashrc=True)  # see bench/README.md, fleet.py
        state["sshd"].append(sshd)
        user = pwd.getpwuid(os.getuid()).pw_name
        registry["hosts"] = {
            "loop": {
                "ssh": f"{user}@127.0.0.1:{sshd.port}",
                "identity_file": str(sshd.identity),
                "known_hosts_file": str(sshd.known_hosts),
            }
        }
        registry["apps"][do.APP]["host"] = "loop"
    world.registry.write_text(json.dumps(registry, indent=2))
    return world, sshd


def connections(sshd) -> int:
    return (sshd.dir / "sshd.log").read_text(errors="replace").count("Accepted publickey")


def bench(args: argparse.Namespace, root: Path, run_id: str, state: dict) -> None:
    do.preflight()
    binary = Path(args.bin) if args.bin else cpd.after_binary(args, root)[0]
    state["projects"], state["sshd"], state["servers"] = [], [], []
    sides = {}
    for host in ("local", "ssh"):
        world, sshd = world_for(root, run_id, host, state)
        server = do.Server(binary, world, "bench-" + secrets.token_hex(24))
        state["servers"].append(server)
        server.start()
        v0 = (world.work / "index.html").read_text().strip()
        cpd.deploy(server, world, v0, "bench warm-up")
        sides[host] = {"world": world, "sshd": sshd, "server": server, "times": [], "conns": []}
    log(f"== {args.rounds} redeploys per side, alternating ==")
    for i in range(1, args.rounds + 1):
        order = ("local", "ssh") if i % 2 else ("ssh", "local")
        for host in order:
            s = sides[host]
            before = connections(s["sshd"]) if s["sshd"] else 0
            content = s["world"].push(f"{host} round {i}")
            d = cpd.deploy(s["server"], s["world"], content, f"bench {host} round {i}")
            ran = [st for st in d["steps"] if st.get("started_at") and st.get("finished_at")]
            took = max(parse_ts(st["finished_at"]) for st in ran) - min(parse_ts(st["started_at"]) for st in ran)
            s["times"].append(took)
            if s["sshd"]:
                s["conns"].append(connections(s["sshd"]) - before)
            log(f"  round {i} {host:<5} {took:6.2f} s" + (f", {s['conns'][-1]} connection(s)" if s["sshd"] else ""))
    ml, ms = median(sides["local"]["times"]), median(sides["ssh"]["times"])
    log("\n== result ==")
    log(f"  median redeploy: local {ml:.2f} s, ssh {ms:.2f} s, ssh/local {ms / ml:.3f} (target <= 1.10)")
    conns = sides["ssh"]["conns"]
    log(f"  ssh connections per redeploy: {conns} (plus {connections(sides['ssh']['sshd']) - sum(conns)} for the warm-up)")


def cleanup(root: Path, run_id: str, state: dict) -> None:
    cpd.cleanup(root, run_id, state, suffixes=("l", "s"))


def main() -> int:
    ap = argparse.ArgumentParser(description="kua-deploy: the same redeploy over SSH and locally")
    ap.add_argument("--rounds", type=int, default=5, help="timed redeploys per side (default 5)")
    ap.add_argument("--bin", metavar="PATH", help="a built kua-deploy instead of building this checkout")
    ap.add_argument("--after-bin", metavar="PATH", help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.after_bin = args.bin
    if args.rounds < 1:
        ap.error("--rounds must be at least 1")
    return do.run_in_temp_dir(bench, cleanup, args)


if __name__ == "__main__":
    sys.exit(main())
