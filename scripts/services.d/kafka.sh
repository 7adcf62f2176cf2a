#!/usr/bin/env bash
# Kafka API for the streams-kafka tests: an existing broker on STREAMS_KAFKA_BROKERS
# (default localhost:9092, e.g. Apache Kafka from docker-compose.yml), else the
# Kafka-compatible broker tansu, installed from crates.io into the tools cache once.

TANSU_VERSION=0.6.0

tansu_bin() {
  local bin="$STREAMS_TOOLS/tansu/bin/tansu"
  if [ ! -x "$bin" ] || ! "$bin" --version 2>/dev/null | grep -q "$TANSU_VERSION"; then
    echo "installing tansu $TANSU_VERSION into $STREAMS_TOOLS/tansu (about ten minutes, once)" >&2
    cargo install tansu --version "$TANSU_VERSION" --locked --features dynostore,libsql \
      --root "$STREAMS_TOOLS/tansu" >&2
  fi
  echo "$bin"
}

start_kafka() {
  export STREAMS_KAFKA_BROKERS="${STREAMS_KAFKA_BROKERS:-localhost:9092}"
  # The broker-restart test starts private brokers of its own with this binary.
  STREAMS_TANSU_BIN="$(tansu_bin)"
  export STREAMS_TANSU_BIN
  local hostport=${STREAMS_KAFKA_BROKERS%%,*}
  local host=${hostport%:*} port=${hostport##*:}
  [ "$host" = localhost ] && host=127.0.0.1
  if port_open "$host" "$port"; then
    echo "kafka: using the broker already listening on $host:$port"
    return 0
  fi
  local dir="$STREAMS_TOOLS/tansu-run"
  mkdir -p "$dir"
  (
    cd "$dir" && exec "$STREAMS_TANSU_BIN" broker \
      --storage-engine memory://tansu/ \
      --listener-url "tcp://$host:$port" \
      --advertised-listener-url "tcp://$host:$port"
  ) >"$dir/broker.log" 2>&1 &
  STARTED_PIDS+=("$!")
  wait_port "$host" "$port" 60
  echo "kafka: tansu started on $host:$port (log: $dir/broker.log)"
}

SERVICES+=(start_kafka)

