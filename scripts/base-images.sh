#!/usr/bin/env bash
# Makes the base images the root Dockerfile names — debian:<release>-slim, rust:<version>-<release>,
# docker:<version>-cli, docker/compose-bin:v<version> — on a machine that cannot pull them, from its
# own packages and toolchain:
#   - debian: a minbase root made by mmdebstrap from this machine's configured package sources,
#     with ca-certificates and this machine's extra CAs (/usr/local/share/ca-certificates), so a
#     build behind a TLS-inspecting egress can fetch crates and packages;
#   - rust: that root with gcc and libc6-dev, and this machine's installed Rust toolchain copied in;
#   - docker: this machine's static docker CLI; compose-bin: its Compose v2 plugin binary.
# The versions are the Dockerfile's ARG defaults; a machine whose tools differ is refused (the
# names would lie). Idempotent: an image already there is left alone, whoever made it.
# Usage: scripts/base-images.sh            (prints what it made or found, and the time it took)
set -euo pipefail
cd "$(dirname "$0")/.."
started=$(date +%s)

arg() { sed -n "s/^ARG $1=//p" Dockerfile | head -1; }
RUST_VERSION=$(arg RUST_VERSION)
DEBIAN_RELEASE=$(arg DEBIAN_RELEASE)
DOCKER_VERSION=$(arg DOCKER_VERSION)
COMPOSE_VERSION=$(arg COMPOSE_VERSION)

have() { docker image inspect "$1" >/dev/null 2>&1; }
fail() { echo "base-images: $*" >&2; exit 1; }
# `docker build -q`, its output shown only when it fails (the legacy builder's notice is noise).
build() {
  local out
  out=$(docker build -q "$@" 2>&1) || { printf '%s\n' "$out" >&2; fail "docker build $* failed"; }
}

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

debian="debian:${DEBIAN_RELEASE}-slim"
if have "$debian"; then
  echo "$debian: already there"
else
  host_release=$(sed -n 's/^VERSION_CODENAME=//p' /etc/os-release)
  [ "$host_release" = "$DEBIAN_RELEASE" ] || fail "the Dockerfile asks for Debian $DEBIAN_RELEASE, this machine's package sources are ${host_release:-unknown}: change ARG DEBIAN_RELEASE"
  command -v mmdebstrap >/dev/null || {
    echo "installing mmdebstrap with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq mmdebstrap >/dev/null
  }
  # mmdebstrap reads one format from stdin: the deb822 files if there are any, else the one-line lists.
  sources=$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null | grep -v '^\s*#' || true)
  [ -n "$sources" ] || sources=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null | grep -v '^\s*#' || true)
  [ -n "$sources" ] || fail "no package sources configured in /etc/apt; cannot make $debian"
  echo "$debian: making a minbase root from this machine's package sources"
  hooks=()
  if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
    hooks+=(--customize-hook='copy-in /usr/local/share/ca-certificates /usr/local/share'
            --customize-hook='chroot "$1" update-ca-certificates >/dev/null 2>&1')
  fi
  # As Debian's slim images: no documentation, man pages or locales, now or in later installs.
  slim=(--dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright'
        --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/info/*'
        --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-include=/usr/share/locale/locale.alias')
  printf '%s\n' "$sources" | mmdebstrap --quiet --variant=minbase --include=ca-certificates "${slim[@]}" \
    "${hooks[@]}" --customize-hook='rm -rf "$1"/var/lib/apt/lists/*' \
    "$DEBIAN_RELEASE" "$tmp/debian.tar" -
  # No LABEL: every image built on a base would inherit it.
  docker import --change 'CMD ["bash"]' "$tmp/debian.tar" "$debian" >/dev/null
  rm -f "$tmp/debian.tar"
fi

rust="rust:${RUST_VERSION}-${DEBIAN_RELEASE}"
if have "$rust"; then
  echo "$rust: already there"
else
  command -v rustc >/dev/null || fail "no Rust toolchain here to copy into $rust"
  local_rust=$(rustc --version | awk '{print $2}')
  [ "$local_rust" = "$RUST_VERSION" ] || fail "the Dockerfile asks for Rust $RUST_VERSION, this machine has $local_rust: change ARG RUST_VERSION or install that toolchain"
  sysroot=$(rustc --print sysroot)
  echo "$rust: $debian with gcc, and the toolchain at $sysroot"
  mkdir -p "$tmp/rust"
  cat > "$tmp/rust/Dockerfile" <<DOCKERFILE
FROM $debian
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev && rm -rf /var/lib/apt/lists/*
COPY toolchain/ /usr/local/rust/
ENV PATH=/usr/local/rust/bin:/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    CARGO_HOME=/usr/local/cargo
RUN cargo --version && rustc --version
DOCKERFILE
  # The build context is a tar: the Dockerfile, and the toolchain without its documentation.
  tar -C "$tmp/rust" -cf "$tmp/rust.tar" Dockerfile
  tar -C "$sysroot" --exclude=./share/doc --transform 's,^\.,toolchain,' -rf "$tmp/rust.tar" .
  build -t "$rust" - < "$tmp/rust.tar"
  rm -f "$tmp/rust.tar"
fi

cli="docker:${DOCKER_VERSION}-cli"
if have "$cli"; then
  echo "$cli: already there"
else
  docker_bin=$(command -v docker)
  local_docker=$(docker version --format '{{.Client.Version}}')
  [ "$local_docker" = "$DOCKER_VERSION" ] || fail "the Dockerfile asks for the docker $DOCKER_VERSION CLI, this machine has $local_docker: change ARG DOCKER_VERSION"
  if ldd "$docker_bin" 2>&1 | grep -q '=>'; then
    fail "$docker_bin is not a static binary; it cannot be copied into an image"
  fi
  echo "$cli: this machine's $docker_bin"
  mkdir -p "$tmp/cli" && cp "$docker_bin" "$tmp/cli/docker"
  printf 'FROM scratch\nCOPY docker /usr/local/bin/docker\n' > "$tmp/cli/Dockerfile"
  build -t "$cli" "$tmp/cli"
fi

compose="docker/compose-bin:v${COMPOSE_VERSION}"
if have "$compose"; then
  echo "$compose: already there"
else
  plugin=$(docker info --format '{{range .ClientInfo.Plugins}}{{if eq .Name "compose"}}{{.Path}}{{end}}{{end}}')
  [ -n "$plugin" ] || fail "no Compose v2 plugin here (scripts/install-deps.sh installs one)"
  local_compose=$(docker compose version --short | sed 's/^v//')
  [ "$local_compose" = "$COMPOSE_VERSION" ] || fail "the Dockerfile asks for Compose $COMPOSE_VERSION, this machine has $local_compose: change ARG COMPOSE_VERSION"
  echo "$compose: this machine's $plugin"
  mkdir -p "$tmp/compose" && cp "$plugin" "$tmp/compose/docker-compose"
  printf 'FROM scratch\nCOPY docker-compose /docker-compose\n' > "$tmp/compose/Dockerfile"
  build -t "$compose" "$tmp/compose"
fi

echo "base images ready in $(( $(date +%s) - started ))s"
