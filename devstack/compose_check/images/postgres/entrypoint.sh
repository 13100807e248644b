#!/bin/sh
# The official image's first start, reduced to what compose relies on: a cluster in $PGDATA whose superuser is
# $POSTGRES_USER with $POSTGRES_PASSWORD, a database $POSTGRES_DB, password logins from the network.
set -eu
: "${POSTGRES_PASSWORD:?POSTGRES_PASSWORD is required}"
user="${POSTGRES_USER:-postgres}"
db="${POSTGRES_DB:-$user}"
as_postgres() { runuser -u postgres -- env PATH="$PATH" "$@"; }
mkdir -p "$PGDATA" /run/postgresql
chown -R postgres:postgres "$PGDATA" /run/postgresql
chmod 700 "$PGDATA"
if [ ! -s "$PGDATA/PG_VERSION" ]; then
    pwfile="$(mktemp)"
    printf '%s\n' "$POSTGRES_PASSWORD" > "$pwfile"
    chown postgres "$pwfile"
    as_postgres initdb --username="$user" --pwfile="$pwfile" --auth-local=trust --auth-host=scram-sha-256 >/dev/null
    rm -f "$pwfile"
    echo "host all all all scram-sha-256" >> "$PGDATA/pg_hba.conf"
    if [ "$db" != postgres ]; then
        as_postgres pg_ctl -w -o "-c listen_addresses=''" start >/dev/null
        as_postgres psql -q -U "$user" -d postgres -c "CREATE DATABASE \"$db\""
        as_postgres pg_ctl -w -m fast stop >/dev/null
    fi
fi
if [ "${1:-}" = postgres ]; then
    set -- "$@" -c listen_addresses='*'
fi
exec runuser -u postgres -- env PATH="$PATH" "$@"
