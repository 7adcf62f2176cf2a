# Redis for the streams-redis tests without containers: the server listening on STREAMS_REDIS_URL (default
# redis://127.0.0.1:6379; docker-compose.yml has one), else `redis-server` started here
# without persistence. The restart test runs a private append-only redis-server with the
# same binary (STREAMS_REDIS_SERVER_BIN; Debian's redis-server package provides it).

start_redis() {
  export STREAMS_REDIS_URL="${STREAMS_REDIS_URL:-redis://127.0.0.1:6379}"
  if ! command -v redis-server >/dev/null 2>&1; then
    echo "redis-server is not on the PATH: install Debian's redis-server package (apt-get install redis-server)" >&2
    return 1
  fi
  STREAMS_REDIS_SERVER_BIN="$(command -v redis-server)"
  export STREAMS_REDIS_SERVER_BIN
  local hostport=${STREAMS_REDIS_URL#*://}
  hostport=${hostport#*@}
  hostport=${hostport%%/*}
  local host=${hostport%:*} port=${hostport##*:}
  if port_open "$host" "$port"; then
    echo "redis: using the server already listening on $host:$port"
    return 0
  fi
  local dir="$STREAMS_TOOLS/redis-run"
  mkdir -p "$dir"
  "$STREAMS_REDIS_SERVER_BIN" --bind "$host" --port "$port" --save "" --appendonly no \
    --dir "$dir" >"$dir/server.log" 2>&1 &
  STARTED_PIDS+=("$!")
  wait_port "$host" "$port" 30
  echo "redis: redis-server started on $host:$port (log: $dir/server.log)"
}

SERVICES+=(start_redis)
