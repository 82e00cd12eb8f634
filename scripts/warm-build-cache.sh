#!/usr/bin/env bash
# Builds the shipped image once with Compose (BuildKit, the builder deploys use), so that the
# engine's build cache holds its dependency and compile layers: a later build of the same sources
# — the self-deploy test's, a release of kua-deploy itself — takes seconds. Needs the base images
# (scripts/base-images.sh). The image is tagged kua-deploy-cache-warm-kua-deploy; removing it
# does not empty the build cache.
set -euo pipefail
cd "$(dirname "$0")/.."
started=$(date +%s)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# The compose file names files a build does not read; give Compose empty ones.
: > "$tmp/admin-token"
: > "$tmp/deploy-registry.json"
KUA_ADMIN_TOKEN_SECRET="$tmp/admin-token" KUA_REGISTRY_FILE="$tmp/deploy-registry.json" \
  docker compose -p kua-deploy-cache-warm build --quiet
echo "build cache warm in $(( $(date +%s) - started ))s"
