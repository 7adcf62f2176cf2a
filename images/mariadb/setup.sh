#!/bin/bash
# Build step: root may log in from any host without a password; database `test` exists.
set -eu
mkdir -p /run/mysqld
chown mysql:mysql /run/mysqld
mariadbd --user=mysql --skip-networking &
pid=$!
until mariadb-admin ping --silent 2>/dev/null; do sleep 0.2; done
mariadb <<'SQL'
ALTER USER root@localhost IDENTIFIED VIA mysql_native_password USING PASSWORD('');
CREATE USER root@'%' IDENTIFIED BY '';
GRANT ALL ON *.* TO root@'%' WITH GRANT OPTION;
CREATE DATABASE test;
SQL
mariadb-admin shutdown
wait "$pid"
