# kua-deploy's image: a Rust builder stage, then a slim Debian runtime with kua-deploy, the docker
# CLI, the Compose v2 plugin, git, an OpenSSH client and CA certificates.
#
# With registry access: `docker build -t kua-deploy .` (or `docker compose build`). Without one,
# `scripts/base-images.sh` first makes the four base images below, under these very names, from
# the machine's own packages and toolchain. The self-deploy rebuilds this file from kua-deploy's
# own checkout, so it builds from source.

ARG RUST_VERSION=1.95.0
ARG DEBIAN_RELEASE=bookworm
ARG DOCKER_VERSION=28.2.2
ARG COMPOSE_VERSION=2.22.0

FROM docker:${DOCKER_VERSION}-cli AS docker-cli
FROM docker/compose-bin:v${COMPOSE_VERSION} AS compose

FROM rust:${RUST_VERSION}-${DEBIAN_RELEASE} AS build
WORKDIR /src
# The dependencies first, with empty targets: a change to kua-deploy's own code rebuilds only it.
COPY Cargo.toml Cargo.lock ./
# Every target the manifest names needs a file to parse: each `path`, and each bench's default one.
RUN mkdir -p src benches && touch src/lib.rs \
    && for p in $(sed -n 's/^path = "\(.*\)"$/\1/p' Cargo.toml); do mkdir -p "$(dirname "$p")" && echo 'fn main() {}' > "$p"; done \
    && for b in $(awk '/^\[\[bench\]\]/ {bench = 1} bench && /^name = / {gsub(/"/, "", $3); print $3; bench = 0}' Cargo.toml); do \
         echo 'fn main() {}' > "benches/$b.rs"; done \
    && cargo build --release --locked --bins \
    && rm -rf src
COPY src ./src
# COPY keeps the files' times, which may be older than the empty targets built above.
RUN touch src/main.rs src/lib.rs src/bin/release-app.rs \
    && cargo build --release --locked --bins \
    && strip target/release/kua-deploy target/release/release-app

FROM debian:${DEBIAN_RELEASE}-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates git openssh-client \
    && rm -rf /var/lib/apt/lists/*
COPY --from=docker-cli /usr/local/bin/docker /usr/local/bin/docker
COPY --from=compose /docker-compose /usr/local/lib/docker/cli-plugins/docker-compose
COPY --from=build /src/target/release/kua-deploy /src/target/release/release-app /usr/local/bin/
# Non-root: the engine socket is reached through its group, added at run time (`group_add` in
# docker-compose.yml); the checkouts must be writable by this user (or set `user:` to their owner).
RUN groupadd --gid 10001 kua && useradd --uid 10001 --gid kua --create-home --home-dir /home/kua kua \
    && mkdir -p /var/lib/kua-deploy /app && chown kua:kua /var/lib/kua-deploy
# /usr/local/bin/kua-vault: the vault client, mounted at run time (see docker-compose.yml).
# The state dir: mount a volume there (docker-compose.yml does), not an anonymous VOLUME that every
# transient or one-off container of the image would leave behind.
ENV KUA_LISTEN=0.0.0.0:8790 \
    KUA_STATE_DIR=/var/lib/kua-deploy \
    KUA_CONFIG=/app/deploy-registry.json
EXPOSE 8790
USER kua
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 CMD ["kua-deploy", "health"]
ENTRYPOINT ["kua-deploy"]
CMD ["serve"]
