#!/bin/bash
set -eu
/opt/moto/bin/moto_server -H 0.0.0.0 -p 4566 &
pid=$!
trap 'kill -TERM "$pid"' INT TERM
until (exec 3<>/dev/tcp/127.0.0.1/4566) 2>/dev/null; do
  kill -0 "$pid" || exit 1
  sleep 0.1
done
echo "Ready."
wait "$pid" || wait "$pid"
