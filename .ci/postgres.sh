#!/usr/bin/env bash
# A throwaway PostgreSQL server on loopback for the multi-worker Optuna test (tests/test_tune.py).
#
#   bash .ci/postgres.sh /tmp/fer-ci-postgres.env && source /tmp/fer-ci-postgres.env
#
# Installs Debian's `postgresql` package if no server binaries are found, starts a private
# cluster in $PGDATA (default /tmp/fer-ci-postgres) on 127.0.0.1:$PGPORT (default 55432), creates
# user and database `fer`, and writes `export FER_TEST_POSTGRES_URL=...` to the file given as $1.
# Safe to rerun: an existing cluster is reused. Stop it with: pg_ctl -D "$PGDATA" stop
set -euo pipefail
envfile=${1:-/tmp/fer-ci-postgres.env}
PGDATA=${PGDATA:-/tmp/fer-ci-postgres}
PGPORT=${PGPORT:-55432}
url="postgresql://fer:fer@127.0.0.1:$PGPORT/fer"

bindir() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1; }
if [ -z "$(bindir)" ]; then
    echo "postgres.sh: installing Debian's postgresql"
    sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq postgresql >/dev/null
fi
bin=$(bindir)

# PostgreSQL refuses to run as root: as root, run it as the `postgres` user the package made.
as_owner() { if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
if [ "$(id -u)" -eq 0 ]; then mkdir -p "$PGDATA" && chown postgres: "$PGDATA"; fi

if [ ! -f "$PGDATA/PG_VERSION" ]; then
    as_owner "$bin/initdb" -D "$PGDATA" -U postgres --auth=trust >/dev/null
fi
if ! as_owner "$bin/pg_ctl" -D "$PGDATA" status >/dev/null 2>&1; then
    # Socket in $PGDATA: no need for /var/run/postgresql; TCP on loopback only.
    as_owner "$bin/pg_ctl" -D "$PGDATA" -l "$PGDATA/server.log" -w start \
        -o "-c listen_addresses=127.0.0.1 -p $PGPORT -k $PGDATA" >/dev/null
fi

psql() { as_owner "$bin/psql" -h 127.0.0.1 -p "$PGPORT" -U postgres -v ON_ERROR_STOP=1 -qtA "$@"; }
[ "$(psql -c "SELECT 1 FROM pg_roles WHERE rolname = 'fer'")" = 1 ] || psql -c "CREATE ROLE fer LOGIN PASSWORD 'fer'"
[ "$(psql -c "SELECT 1 FROM pg_database WHERE datname = 'fer'")" = 1 ] || psql -c "CREATE DATABASE fer OWNER fer"

echo "export FER_TEST_POSTGRES_URL=$url" > "$envfile"
echo "postgres.sh: server on 127.0.0.1:$PGPORT (data $PGDATA); FER_TEST_POSTGRES_URL=$url written to $envfile"
