#!/usr/bin/env python3
"""Secrets-step benchmark for kua-deploy (see bench/README.md).

What the `secrets` step adds to a deploy when the vault is a trivial command (a shell script that
prints one `DB_PASSWORD=...` line), for an app on the local engine and for one on an SSH host (a
real sshd on loopback), side by side in one run: per host, `--rounds` deploys of new commits of
deploy-overhead.py's busybox app, whose Compose file takes `${DB_PASSWORD}`; for each, the
`secrets` step's own duration (its started/finished times: the vault command, then Compose
re-reading the configuration with the values) and the whole deploy's. Prints the medians and the
step's share of the deploy, local and SSH.

Exits 0 unless something broke (1), or 130 on Ctrl-C. Python 3.11 stdlib only; reuses
deploy-overhead.py (app, server, clean-up) and commands-per-deploy.py (the sshd). Everything it
creates in Docker carries the run's labels and is removed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import secrets
import sys
import tempfile
from pathlib import Path


sys.dont_write_bytecode = True  # before the sibling import: no __pycache__ in bench/
import siblings  # noqa: E402

cpd = siblings.load("commands_per_deploy", "commands-per-deploy.py")
do = cpd.do
BenchError, log, median, parse_ts, APP = do.BenchError, do.log, do.median, do.parse_ts, do.APP
REPO = Path(__file__).resolve().parent.parent


def side(args, root: Path, run_id: str, state: dict, host: str, binary: Path) -> dict:
    world = do.World(root / host, run_id + host[0])
    world.root.mkdir(parents=True)
    state["projects"].append(world.kua_project)
    world.create()
    # The app takes DB_PASSWORD from its environment; the vault stand-in gives it.
    compose = world.work / "docker-compose.yml"
    compose.write_text(compose.read_text().replace("    build: .\n", "    build: .\n    environment:\n      DB_PASSWORD: ${DB_PASSWORD}\n", 1))
    do.git(world.work, "commit", "--quiet", "-am", "DB_PASSWORD from the vault")
    do.git(world.work, "push", "--quiet", "origin", "HEAD:refs/heads/main")
    vault = world.root / "kua-vault"
    vault.write_text(f"#!/bin/sh\necho DB_PASSWORD=bench-{secrets.token_hex(12)}\n")
    vault.chmod(0o700)
    registry = json.loads(world.registry.read_text())
    app = registry["apps"][APP]
    app["secrets"] = {"command": [str(vault), "export", "{app}"]}
    if host == "ssh":
        sshd = cpd.Sshd(root / "sshd", Path("/nonexistent"))
        state["sshd"].append(sshd)
        registry["hosts"] = {"loop": {"ssh": f"{pwd.getpwuid(os.getuid()).pw_name}@127.0.0.1:{sshd.port}",
                                      "identity_file": str(sshd.identity), "known_hosts_file": str(sshd.known_hosts)}}
        app["host"] = "loop"
    world.registry.write_text(json.dumps(registry, indent=2))

    def measure(d: dict):
        step = next(s for s in d["steps"] if s["name"] == "secrets")
        took = parse_ts(step["finished_at"]) - parse_ts(step["started_at"])
        total = parse_ts(d["finished_at"]) - parse_ts(d["started_at"])
        return (took, total), f"secrets step {took:.3f} s of a {total:.2f} s deploy"

    step_s, total_s = zip(*cpd.timed_rounds(binary, world, state, host, args.rounds, measure))
    return {"step": median(step_s), "total": median(total_s)}


def bench(args, root: Path, run_id: str, state: dict) -> None:
    state["projects"], state["sshd"] = [], []
    binary = REPO / "target/release/kua-deploy"
    if not args.no_build:
        do.run(["cargo", "build", "--release", "--quiet", "--bin", "kua-deploy"], cwd=REPO, timeout=1800)
    results = {host: side(args, root, run_id, state, host, binary) for host in ("local", "ssh")}
    log("")
    log(f"{'host':<6} {'secrets step (median)':>22} {'deploy (median)':>16} {'share':>6}")
    for host, r in results.items():
        log(f"{host:<6} {r['step']:>20.3f} s {r['total']:>14.2f} s {r['step'] / r['total']:>6.1%}")
    log(f"ssh/local secrets step: {results['ssh']['step'] / results['local']['step']:.1f}x")


def main() -> int:
    ap = argparse.ArgumentParser(description="kua-deploy: what the secrets step adds, local and over SSH")
    ap.add_argument("--rounds", type=int, default=5, help="timed deploys per host (default 5)")
    ap.add_argument("--no-build", action="store_true", help="use the existing target/release/kua-deploy")
    args = ap.parse_args()
    run_id = secrets.token_hex(3)
    root = Path(tempfile.mkdtemp(prefix=f"kua-bench-{run_id}-"))
    return do.run_and_clean_up(bench, cpd.cleanup, args, root, run_id, {})


if __name__ == "__main__":
    sys.exit(main())
