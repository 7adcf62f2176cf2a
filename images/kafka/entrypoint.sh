#!/bin/bash
set -eu
advertised=${KAFKA_ADVERTISED_LISTENERS:-PLAINTEXT://localhost:9092}
advertised=${advertised%%,*}
tansu broker \
  --storage-engine "${TANSU_STORAGE_ENGINE:-memory://tansu/}" \
  --listener-url tcp://0.0.0.0:9092 \
  --advertised-listener-url "tcp://${advertised#*://}" &
pid=$!
trap 'kill -TERM "$pid"' INT TERM
until (exec 3<>/dev/tcp/127.0.0.1/9092) 2>/dev/null; do
  kill -0 "$pid" || exit 1
  sleep 0.1
done
echo "Kafka Server started (tansu)"
wait "$pid" || wait "$pid"
