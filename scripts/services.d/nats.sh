# NATS with JetStream for the streams-nats tests without containers: the server listening
# on STREAMS_NATS_SERVERS (default 127.0.0.1:4222; docker-compose.yml has one), else
# `nats-server -js` started here with its store under the tools cache. The fault tests
# start private servers with the same binary (STREAMS_NATS_SERVER_BIN). Without
# nats-server on the PATH, Debian's package is unpacked into the tools cache, once
# (scripts/images.sh builds the nats image from the same binary).

nats_server_bin() {
  if command -v nats-server >/dev/null 2>&1; then
    command -v nats-server
    return 0
  fi
  local dir="$STREAMS_TOOLS/nats" bin="$STREAMS_TOOLS/nats/usr/bin/nats-server"
  if [ ! -x "$bin" ]; then
    echo "installing nats-server from Debian's package into $dir (once)" >&2
    mkdir -p "$dir"
    (cd "$dir" && apt-get download nats-server >/dev/null && dpkg -x nats-server_*.deb .) >&2 || {
      echo "cannot install nats-server: apt-get download nats-server failed" >&2
      return 1
    }
  fi
  echo "$bin"
}

start_nats() {
  export STREAMS_NATS_SERVERS="${STREAMS_NATS_SERVERS:-127.0.0.1:4222}"
  STREAMS_NATS_SERVER_BIN="$(nats_server_bin)"
  export STREAMS_NATS_SERVER_BIN
  local hostport=${STREAMS_NATS_SERVERS%%,*}
  local host=${hostport%:*} port=${hostport##*:}
  if port_open "$host" "$port"; then
    echo "nats: using the server already listening on $host:$port"
    return 0
  fi
  local dir="$STREAMS_TOOLS/nats-run"
  mkdir -p "$dir"
  "$STREAMS_NATS_SERVER_BIN" -js -a "$host" -p "$port" -sd "$dir/store" >"$dir/server.log" 2>&1 &
  STARTED_PIDS+=("$!")
  wait_port "$host" "$port" 30
  echo "nats: nats-server -js started on $host:$port (log: $dir/server.log)"
}

SERVICES+=(start_nats)
