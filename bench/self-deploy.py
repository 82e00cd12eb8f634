#!/usr/bin/env python3
"""Self-deploy benchmark for kua-deploy (see bench/README.md).

kua-deploy as the fleet runs it: the shipped Dockerfile and docker-compose.yml, built from a copy
of this repository on the base images `scripts/base-images.sh` makes, started with
`docker compose up -d`, then released `--rounds` times with `release-app kua-deploy` (each round a
new final stage: a LABEL, so the build stage comes from cache, as in a release that changed only
the runtime image). Measured, side by side in one run:

 - the image's size;
 - each self-deploy's wall time (release-app start to exit; it rides through the restart), and
   the deployer's downtime: the total time `/healthz` on the published loopback port did not
   answer 200 (a poller, every 50 ms), with the medians;
 - scripts/base-images.sh warm (images there), and cold with `--cold` (the four base images
   removed first: the next image build then compiles everything again).

Prints the figures; exits 0 unless something broke (1), or 130 on Ctrl-C. Python 3.11 stdlib
only. Everything it creates carries the label `kua-deploy.bench=1` and is removed at the end.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LABEL = "kua-deploy.bench=1"
TOKEN = "bench-admin-token-0123456789abcdef"
USER = "10001:10001"
BASES = ["debian:bookworm-slim", "rust:1.95.0-bookworm", "docker:28.2.2-cli", "docker/compose-bin:v2.22.0"]


def run(argv: list[str], cwd: Path | None = None, timeout: float = 1800) -> str:
    p = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    if p.returncode != 0:
        raise RuntimeError(f"{argv} failed ({p.returncode}): {p.stdout}{p.stderr}")
    return p.stdout.strip()


def git(cwd: Path, *args: str) -> str:
    # The repos belong to kua-deploy's user; a local push's receive-pack reads only the global
    # config for `safe.directory`, so this git gets one that trusts every directory.
    config = Path(tempfile.gettempdir()) / "kua-bench-safe-directory.gitconfig"
    config.write_text("[safe]\n\tdirectory = *\n")
    p = subprocess.run(["git", "-c", "user.name=Bench", "-c", "user.email=b@example.invalid",
                        "-c", "init.defaultBranch=main", *args], cwd=cwd, capture_output=True, text=True,
                       env={**os.environ, "GIT_CONFIG_GLOBAL": str(config)})
    if p.returncode != 0:
        raise RuntimeError(f"git {args} failed: {p.stderr}")
    return p.stdout.strip()


def healthz(port: int) -> bool:
    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
        c.request("GET", "/healthz")
        ok = c.getresponse().status == 200
        c.close()
        return ok
    except OSError:
        return False


class Downtime(threading.Thread):
    """Sums the time /healthz did not answer 200, polled every 50 ms."""

    def __init__(self, port: int):
        super().__init__(daemon=True)
        self.port, self.down, self.stop = port, 0.0, threading.Event()

    def run(self) -> None:
        last = time.monotonic()
        while not self.stop.is_set():
            ok = healthz(self.port)
            now = time.monotonic()
            if not ok:
                self.down += now - last
            last = now
            time.sleep(0.05)


def timed(argv: list[str], cwd: Path | None = None) -> float:
    t = time.monotonic()
    run(argv, cwd)
    return time.monotonic() - t


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--cold", action="store_true", help="remove the base images first and time their making")
    ap.add_argument("--release-app", default=str(REPO / "target/release/release-app"))
    args = ap.parse_args()
    if not Path(args.release_app).exists():
        run(["cargo", "build", "--release", "--bin", "release-app"], REPO)
    if args.cold:
        subprocess.run(["docker", "rmi", *BASES], capture_output=True)
        print(f"base-images.sh cold: {timed([str(REPO / 'scripts/base-images.sh')]):.1f}s", flush=True)
    print(f"base-images.sh warm: {timed([str(REPO / 'scripts/base-images.sh')]):.2f}s", flush=True)

    project = f"kbench{uuid.uuid4().hex[:8]}"
    nets = [f"{project}-services", f"{project}-proxy"]
    tmp = Path(tempfile.mkdtemp(prefix="kua-bench-self-"))
    apps, checkout = tmp / "apps", tmp / "apps" / "kua-deploy"
    work, remote = apps / "work", apps / "kua-deploy.git"
    try:
        for n in nets:
            run(["docker", "network", "create", "--label", LABEL, n])
        files = run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], REPO).split("\0")
        for f in filter(None, files):
            if (REPO / f).is_file():
                (work / f).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(REPO / f, work / f)
        port = int(run(["python3", "-c", "import socket;s=socket.socket();s.bind(('127.0.0.1',0));print(s.getsockname()[1])"]))
        (work / "docker-compose.override.yml").write_text(
            f'services:\n  kua-deploy:\n    build:\n      labels: ["{LABEL}"]\n    labels: ["{LABEL}"]\n'
            f'    ports: ["127.0.0.1:{port}:8790"]\n    healthcheck:\n      interval: 1s\n')
        git(tmp, "init", "-q", "--bare", str(remote))
        git(work, "init", "-q")
        git(work, "add", "-A")
        git(work, "commit", "-qm", "v1")
        git(work, "remote", "add", "origin", str(remote))
        git(work, "push", "-q", "origin", "HEAD:refs/heads/main")
        git(tmp, "clone", "-q", "--branch", "main", str(remote), str(checkout))
        gid = run(["stat", "-c", "%g", "/var/run/docker.sock"])
        (checkout / ".env").write_text(f"KUA_APPS_DIR={apps}\nDOCKER_GID={gid}\nKUA_SERVICES_NETWORK={nets[0]}\n"
                                       f"KUA_PROXY_NETWORK={nets[1]}\n")
        (checkout / "admin-token").write_text(TOKEN + "\n")
        (checkout / "deploy-registry.json").write_text(json.dumps({"self": "kua-deploy", "apps": {"kua-deploy": {
            "repo": str(checkout), "project": project, "services": ["kua-deploy"],
            "verify": {"timeout_s": 90, "stable_s": 2}}}}))
        run(["chown", "-R", USER, str(apps)])
        first = timed(["docker", "compose", "-p", project, "up", "-d", "--build", "--quiet-pull"], checkout)
        print(f"first image build and start: {first:.1f}s", flush=True)
        deadline = time.monotonic() + 120
        while not healthz(port):
            if time.monotonic() > deadline:
                raise RuntimeError("kua-deploy did not answer /healthz")
            time.sleep(0.2)
        cid = run(["docker", "ps", "-q", "--filter", f"label=com.docker.compose.project={project}"]).split()[0]
        image = run(["docker", "inspect", "-f", "{{.Image}}", cid])
        size = int(run(["docker", "image", "inspect", "-f", "{{.Size}}", image]))
        print(f"image size: {size / 1e6:.1f} MB", flush=True)

        walls, downs = [], []
        for r in range(args.rounds):
            df = work / "Dockerfile"
            df.write_text(df.read_text() + f"LABEL org.opencontainers.image.version=bench-{r}\n")
            git(work, "commit", "-qam", f"bench {r}")
            git(work, "push", "-q", "origin", "HEAD:refs/heads/main")
            poller = Downtime(port)
            poller.start()
            t = time.monotonic()
            p = subprocess.run([args.release_app, "kua-deploy", "--url", f"http://127.0.0.1:{port}", "--timeout", "5m"],
                               capture_output=True, text=True, env={**os.environ, "KUA_ADMIN_TOKEN": TOKEN})
            wall = time.monotonic() - t
            time.sleep(1)
            poller.stop.set()
            poller.join()
            if p.returncode != 0:
                raise RuntimeError(f"round {r}: release-app exited {p.returncode}: {p.stdout}{p.stderr}")
            walls.append(wall)
            downs.append(poller.down)
            print(f"round {r + 1}: self-deploy {wall:.1f}s, /healthz unanswered {poller.down:.2f}s", flush=True)
        print(f"median self-deploy {statistics.median(walls):.1f}s; median downtime {statistics.median(downs):.2f}s "
              f"(ratio downtime/self-deploy {statistics.median(downs) / statistics.median(walls):.2f})")
        return 0
    except KeyboardInterrupt:
        return 130
    except Exception as e:  # noqa: BLE001 - a benchmark reports and cleans up
        print(f"self-deploy bench failed: {e}", file=sys.stderr)
        return 1
    finally:
        subprocess.run(["docker", "compose", "-p", project, "down", "--volumes", "--rmi", "all", "--timeout", "2"],
                       cwd=checkout if checkout.exists() else None, capture_output=True)
        old = subprocess.run(["docker", "images", "-q", "--filter", f"label={LABEL}", "--filter",
                              f"label=com.docker.compose.project={project}"], capture_output=True, text=True)
        if old.stdout.split():
            subprocess.run(["docker", "rmi", "-f", *old.stdout.split()], capture_output=True)
        for n in nets:
            subprocess.run(["docker", "network", "rm", n], capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
