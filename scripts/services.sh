#!/usr/bin/env bash
# Service management for the test suite, sourced by scripts/test.sh.
#
# With a Docker engine (started here when missing, see scripts/containers.sh) the tests
# start their own containers and nothing else is started. Without one, every file in
# scripts/services.d/ is sourced; each defines a start function for a native service and
# adds its name to SERVICES. A service that is already reachable (a docker-compose
# container, a system service) is used as is; one the script starts is stopped on exit.

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/streams-target}"
export STREAMS_TOOLS="${STREAMS_TOOLS:-$HOME/.cache/streams-tools}"
SERVICES=()
# Services without a container image: started (or waited for) natively also when the
# others run in containers (none today; a service.d file adds its start function).
UNCONTAINED=()
STARTED_PIDS=()

# Whether host:port accepts TCP connections.
port_open() {
  (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null
}

# Waits until host:port accepts TCP connections, or fails after $3 seconds.
wait_port() {
  local host=$1 port=$2 seconds=${3:-60} i
  for ((i = 0; i < seconds * 10; i++)); do
    if port_open "$host" "$port"; then
      return 0
    fi
    sleep 0.1
  done
  echo "service on $host:$port did not come up within ${seconds}s" >&2
  return 1
}

services_start() {
  local s
  mkdir -p "$STREAMS_TOOLS"
  for s in "${SERVICES[@]}"; do
    echo "== service: $s"
    "$s"
  done
}

# Containers when an engine can run, else every native service; what was started is
# stopped when the shell exits.
services_up() {
  trap services_stop EXIT
  mkdir -p "$STREAMS_TOOLS"
  if containers_start; then
    local s
    for s in "${UNCONTAINED[@]+"${UNCONTAINED[@]}"}"; do
      echo "== service (native, no image yet): $s"
      "$s"
    done
    return 0
  fi
  echo "containers: not used ($CONTAINERS_REASON); running the tests against native services"
  export STREAMS_CONTAINERS=0
  services_start
}

services_stop() {
  containers_stop
  local pid
  for pid in "${STARTED_PIDS[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in "${STARTED_PIDS[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
}

# shellcheck source=scripts/containers.sh
source "$(dirname "${BASH_SOURCE[0]}")/containers.sh"
for f in "$(dirname "${BASH_SOURCE[0]}")"/services.d/*.sh; do
  [ -e "$f" ] || continue
  # shellcheck source=/dev/null
  source "$f"
done
