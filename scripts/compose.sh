#!/bin/sh
# docker-compose.repro.yml under `docker compose` or `podman-compose`, whichever is there:
#   sh scripts/compose.sh up -d --build | ps | logs setup | exec -T web ... | down -v
# COMPOSE overrides the choice (e.g. COMPOSE=podman-compose); the project name is
# CONTEND_COMPOSE_PROJECT (default contend-repro). `down` also removes the project's networks,
# which podman-compose 1.0 leaves behind.
set -eu
here=$(cd "$(dirname "$0")/.." && pwd)
project=${CONTEND_COMPOSE_PROJECT:-contend-repro}
if [ -z "${COMPOSE:-}" ]; then
  if docker compose version >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
    COMPOSE="docker compose"
  elif command -v podman-compose >/dev/null 2>&1; then
    COMPOSE=podman-compose
  else
    echo "Error: neither docker compose (with a running engine) nor podman-compose is installed" >&2
    exit 127
  fi
fi
# shellcheck disable=SC2086  # COMPOSE is a command and its subcommand, e.g. "docker compose"
$COMPOSE -p "$project" -f "$here/docker-compose.repro.yml" "$@"
if [ "${1:-}" = down ] && [ "$COMPOSE" = podman-compose ]; then
  for net in $(podman network ls -q --filter "label=io.podman.compose.project=$project"); do
    podman network rm -f "$net" >/dev/null
  done
fi
