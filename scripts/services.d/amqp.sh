# RabbitMQ for the streams-amqp tests without containers: the broker listening on STREAMS_AMQP_URL (default
# amqp://guest:guest@127.0.0.1:5672/%2f). It runs on the development and CI machines
# (and in docker-compose.yml); nothing is started here. A missing one fails the tests
# early with how to start it. The close-all-connections test needs `rabbitmqctl`.

amqp_wait() {
  export STREAMS_AMQP_URL="${STREAMS_AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}"
  local hostport=${STREAMS_AMQP_URL#*://}
  hostport=${hostport#*@}
  hostport=${hostport%%/*}
  local host=${hostport%:*} port=${hostport##*:}
  if ! wait_port "$host" "$port" 30; then
    echo "RabbitMQ is not listening on $host:$port: start it (docker compose up -d rabbitmq, or rabbitmq-server -detached)" >&2
    return 1
  fi
  echo "amqp: broker listening on $host:$port"
}

SERVICES+=(amqp_wait)
