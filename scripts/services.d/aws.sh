# AWS emulator for streams-sqs, streams-sns and streams-dynamodb tests.
#
# Uses whatever listens on 127.0.0.1:4566 (LocalStack from docker-compose.yml, or an
# emulator started earlier); otherwise starts moto_server there, installing moto from
# PyPI into a cached virtual environment the first time.

aws_emulator_start() {
  local venv="$STREAMS_TOOLS/moto-venv"
  if port_open 127.0.0.1 4566; then
    echo "AWS emulator already listening on 127.0.0.1:4566"
    return 0
  fi
  if [ ! -x "$venv/bin/moto_server" ]; then
    echo "installing moto[server] into $venv"
    python3 -m venv "$venv" >"$STREAMS_TOOLS/moto-install.log" 2>&1 || {
      echo "python3 -m venv failed; see $STREAMS_TOOLS/moto-install.log" >&2
      return 1
    }
    "$venv/bin/pip" install --quiet "moto[server]" >>"$STREAMS_TOOLS/moto-install.log" 2>&1 || {
      echo "pip install moto[server] failed; see $STREAMS_TOOLS/moto-install.log" >&2
      return 1
    }
  fi
  "$venv/bin/moto_server" -H 127.0.0.1 -p 4566 >"$STREAMS_TOOLS/moto.log" 2>&1 &
  STARTED_PIDS+=($!)
  wait_port 127.0.0.1 4566 60
}

SERVICES+=(aws_emulator_start)
