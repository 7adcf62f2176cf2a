#!/bin/bash
# Starts PostgreSQL, creates POSTGRES_DB when missing, then prints the line the official
# image prints on stdout once it accepts connections.
set -eu
# A container starts with no server running: lock files left by a killed one are stale,
# and one naming a PID that is now another process would stop the server from starting.
rm -f "$PGDATA/postmaster.pid" /tmp/.s.PGSQL.5432.lock
postgres -D "$PGDATA" -k /tmp &
pid=$!
trap 'kill -INT "$pid"' INT TERM
until pg_isready -h /tmp -q; do
  kill -0 "$pid" || exit 1
  sleep 0.1
done
db=${POSTGRES_DB:-postgres}
if [ -z "$(psql -h /tmp -U postgres -tAc "SELECT 1 FROM pg_database WHERE datname = '$db'")" ]; then
  createdb -h /tmp -U postgres "$db"
fi
echo "database system is ready to accept connections"
wait "$pid" || wait "$pid"
