# PostgreSQL and MariaDB for the streams-sql tests. Both run on the development and CI
# machines (or come from docker-compose.yml); nothing is started here. This only waits
# for them, so that a database still booting does not fail the tests and a missing one
# fails them early with a clear message (the tests fail too, never skip).

# host and port of a database URL such as postgres://user@127.0.0.1:5432/test.
sql_host_port() {
  local rest=${1#*://}
  rest=${rest#*@}
  rest=${rest%%/*}
  echo "${rest%%:*} ${rest##*:}"
}

sql_wait() {
  local url hp
  for url in "${STREAMS_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/test}" \
    "${STREAMS_MYSQL_URL:-mysql://root@127.0.0.1:3306/test}"; do
    read -r -a hp <<<"$(sql_host_port "$url")"
    if ! wait_port "${hp[0]}" "${hp[1]}" 30; then
      echo "database for $url is not reachable: start it (docker compose up -d postgres mariadb)" >&2
      return 1
    fi
    echo "database listening on ${hp[0]}:${hp[1]}"
  done
}

SERVICES+=(sql_wait)
