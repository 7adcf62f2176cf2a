#!/bin/sh
# As the official image: arguments starting with `-` are redis-server's. Protected mode
# is off (the official image builds it so): clients come from outside the container.
set -e
if [ "${1#-}" != "$1" ]; then
  set -- redis-server "$@"
fi
if [ "$1" = redis-server ]; then
  shift
  exec redis-server --protected-mode no "$@"
fi
exec "$@"
