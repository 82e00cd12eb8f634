#!/usr/bin/env python3
"""Notification overhead benchmark for kua-deploy (see bench/README.md).

What telling people costs a deploy: the same app deployed `--rounds` times with nobody to tell,
and `--rounds` times with a forge status API and a webhook target that accept the connection and
never answer (the worst target there is: every attempt runs into its 10 s timeout). For each
deploy, its duration (started_at → finished_at) and the gap between its verify step's end and its
recorded end. Prints the medians side by side; notifications are sent off the deploy's path, so
both should match within noise.

Exits 0 unless something broke (1), or 130 on Ctrl-C. Python 3.11 stdlib only; reuses
deploy-overhead.py (app, server, clean-up) and commands-per-deploy.py (deploy). Everything it
creates in Docker carries the run's labels and is removed at the end.
"""

from __future__ import annotations

import argparse
import json
import secrets
import socket
import sys
import tempfile
import threading
from pathlib import Path


sys.dont_write_bytecode = True  # before the sibling import: no __pycache__ in bench/
import siblings  # noqa: E402

cpd = siblings.load("commands_per_deploy", "commands-per-deploy.py")
do = cpd.do
log, median, parse_ts, APP = do.log, do.median, do.parse_ts, do.APP
REPO = Path(__file__).resolve().parent.parent


def hanging_listener() -> int:
    """A loopback port that accepts every connection, reads it, and never answers."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    held = []

    def serve():
        while True:
            conn, _ = sock.accept()
            held.append(conn)

    threading.Thread(target=serve, daemon=True).start()
    return sock.getsockname()[1]


def side(args, root: Path, run_id: str, state: dict, name: str, binary: Path) -> dict:
    world = do.World(root / name, run_id + name[0])
    world.root.mkdir(parents=True)
    state["projects"].append(world.kua_project)
    world.create()
    registry = json.loads(world.registry.read_text())
    if name == "hanging":
        port = hanging_listener()
        token = root / "forge-token"
        token.write_text("bench-forge-token\n")
        registry["status"] = {"kind": "forgejo", "api": f"http://127.0.0.1:{port}/api/v1",
                              "token_file": str(token), "repository": "kua/bench"}
        registry["notify"] = [{"kind": "webhook", "url": f"http://127.0.0.1:{port}/hook?token=t",
                               "events": ["succeeded", "failed", "rolled_back"]}]
    world.registry.write_text(json.dumps(registry, indent=2))

    def measure(d: dict):
        verify = next(s for s in d["steps"] if s["name"] == "verify")
        total = parse_ts(d["finished_at"]) - parse_ts(d["started_at"])
        gap = parse_ts(d["finished_at"]) - parse_ts(verify["finished_at"])
        return (total, gap), f"deploy {total:.2f} s, end recorded {gap * 1000:.1f} ms after verify"

    total_s, gap_s = zip(*cpd.timed_rounds(binary, world, state, name, args.rounds, measure))
    return {"total": median(total_s), "gap": median(gap_s)}


def bench(args, root: Path, run_id: str, state: dict) -> None:
    state["projects"], state["sshd"] = [], []
    binary = Path(args.binary) if args.binary else REPO / "target/release/kua-deploy"
    if not args.binary:
        do.run(["cargo", "build", "--release", "--quiet", "--bin", "kua-deploy"], cwd=REPO, timeout=1800)
    results = {name: side(args, root, run_id, state, name, binary) for name in ("none", "hanging")}
    log("")
    log(f"{'targets':<8} {'deploy (median)':>16} {'verify end -> end (median)':>27}")
    for name, r in results.items():
        log(f"{name:<8} {r['total']:>14.2f} s {r['gap'] * 1000:>24.1f} ms")
    log(f"hanging/none deploy time: {results['hanging']['total'] / results['none']['total']:.3f}x")


def main() -> int:
    ap = argparse.ArgumentParser(description="kua-deploy: what notifications add to a deploy")
    ap.add_argument("--rounds", type=int, default=5, help="timed deploys per side (default 5)")
    ap.add_argument("--binary", help="use this kua-deploy binary instead of building target/release/kua-deploy")
    args = ap.parse_args()
    run_id = secrets.token_hex(3)
    root = Path(tempfile.mkdtemp(prefix=f"kua-bench-{run_id}-"))
    return do.run_and_clean_up(bench, cpd.cleanup, args, root, run_id, {})


if __name__ == "__main__":
    sys.exit(main())
