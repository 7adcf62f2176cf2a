# Containers for the test suite, sourced by scripts/services.sh.
#
# The tests start their services through testcontainers (crate streams-testkit), one
# container per test binary, when STREAMS_CONTAINERS=1. This makes sure a Docker engine
# answers (installing Debian's docker.io and starting dockerd as root when missing), builds
# the images (scripts/images.sh, cached) and exports their names. Where no engine can
# run, it says so in one line and the native services are used instead.

DOCKERD_PID=""
CONTAINERS_REASON=""

# Whether a Docker engine answers, starting one when possible.
docker_engine_up() {
  if docker info >/dev/null 2>&1; then
    return 0
  fi
  if ! command -v dockerd >/dev/null 2>&1; then
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
      CONTAINERS_REASON="no Docker engine, and installing one needs root and apt-get"
      return 1
    fi
    echo "containers: installing Debian's docker.io (log: $STREAMS_TOOLS/docker-install.log)"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io; } \
      >"$STREAMS_TOOLS/docker-install.log" 2>&1 || {
      CONTAINERS_REASON="apt-get install docker.io failed (see $STREAMS_TOOLS/docker-install.log)"
      return 1
    }
  fi
  if [ "$(id -u)" != 0 ]; then
    CONTAINERS_REASON="no Docker engine answers and starting dockerd needs root"
    return 1
  fi
  # --ip: ports a container publishes without an address go to loopback only.
  dockerd --ip 127.0.0.1 >"$STREAMS_TOOLS/dockerd.log" 2>&1 &
  DOCKERD_PID=$!
  local i
  for ((i = 0; i < 300; i++)); do
    if docker info >/dev/null 2>&1; then
      echo "containers: dockerd started (log: $STREAMS_TOOLS/dockerd.log)"
      return 0
    fi
    if ! kill -0 "$DOCKERD_PID" 2>/dev/null; then
      break
    fi
    sleep 0.1
  done
  kill "$DOCKERD_PID" 2>/dev/null || true
  DOCKERD_PID=""
  CONTAINERS_REASON="dockerd did not start: $(tail -n 1 "$STREAMS_TOOLS/dockerd.log" 2>/dev/null | cut -c1-160)"
  return 1
}

# Points the tests at the services of a running `docker compose up` (project `streams`),
# waiting for each to print its readiness line; the others start per test binary.
compose_services_use() {
  local spec service port var fmt pattern id hostport address i
  for spec in "kafka 9092 STREAMS_KAFKA_BROKERS 127.0.0.1:%s Kafka.Server.started" \
    "localstack 4566 STREAMS_AWS_ENDPOINT http://127.0.0.1:%s Ready\\." \
    "postgres 5432 STREAMS_POSTGRES_URL postgres://postgres@127.0.0.1:%s/test ready.to.accept.connections" \
    "mariadb 3306 STREAMS_MYSQL_URL mysql://root@127.0.0.1:%s/test ready.for.connections" \
    "nats 4222 STREAMS_NATS_SERVERS 127.0.0.1:%s Server.is.ready" \
    "redis 6379 STREAMS_REDIS_URL redis://127.0.0.1:%s Ready.to.accept.connections" \
    "rabbitmq 5672 STREAMS_AMQP_URL amqp://guest:guest@127.0.0.1:%s/%%2f Server.startup.complete"; do
    read -r service port var fmt pattern <<<"$spec"
    [ -z "${!var:-}" ] || continue
    id=$(docker ps -q --filter label=com.docker.compose.project=streams \
      --filter "label=com.docker.compose.service=$service" | head -n 1)
    [ -n "$id" ] || continue
    hostport=$(docker port "$id" "$port/tcp" | head -n 1)
    printf -v address "$fmt" "${hostport##*:}"
    for ((i = 0; i < 1200; i++)); do
      docker logs "$id" 2>&1 | grep -qE "$pattern" && break
      sleep 0.1
    done
    export "$var=$address"
    echo "containers: $service from docker compose at $address"
  done
}

# Engine and images; exports STREAMS_CONTAINERS=1 and the image names, or returns 1 with
# CONTAINERS_REASON set.
containers_start() {
  if [ "${STREAMS_CONTAINERS:-}" = 0 ]; then
    CONTAINERS_REASON="STREAMS_CONTAINERS=0"
    return 1
  fi
  docker_engine_up || return 1
  local images
  if ! images=$(scripts/images.sh); then
    CONTAINERS_REASON="building the images failed (see above)"
    return 1
  fi
  eval "$images"
  compose_services_use
  export STREAMS_CONTAINERS=1
  export STREAMS_TEST_SESSION="streams-test-$$"
  echo "containers: each test binary starts its own (images: $STREAMS_IMAGE_KAFKA $STREAMS_IMAGE_AWS $STREAMS_IMAGE_POSTGRES $STREAMS_IMAGE_MARIADB $STREAMS_IMAGE_NATS $STREAMS_IMAGE_REDIS $STREAMS_IMAGE_RABBITMQ)"
}

# Removes what the tests left (they remove their containers themselves; this covers a
# killed test binary), then stops the dockerd this script started.
containers_stop() {
  if [ -n "${STREAMS_TEST_SESSION:-}" ]; then
    docker ps -aq --filter "label=org.streams.test.session=$STREAMS_TEST_SESSION" |
      xargs -r docker rm -f -v >/dev/null 2>&1 || true
  fi
  if [ -n "$DOCKERD_PID" ]; then
    kill "$DOCKERD_PID" 2>/dev/null || true
    wait "$DOCKERD_PID" 2>/dev/null || true
  fi
}
