#!/bin/sh
# postgres:15's contract, in short: a new PGDATA is initialised with POSTGRES_USER as superuser,
# the password read from POSTGRES_PASSWORD_FILE (never an argument or a log line), POSTGRES_DB
# created, and connections from other containers asked for that password (scram-sha-256).
set -eu
# Any other command (psql, a shell) runs as it is, as in the official image.
if [ "${1:-}" = postgres ] && [ "$(id -u)" = 0 ]; then
    chown postgres:postgres "$PGDATA" && chmod 700 "$PGDATA"
    if [ ! -s "$PGDATA/PG_VERSION" ]; then
        user=${POSTGRES_USER:-postgres}
        pwfile=$(mktemp) && chown postgres "$pwfile"
        cat "$POSTGRES_PASSWORD_FILE" > "$pwfile"
        gosu postgres initdb --username="$user" --pwfile="$pwfile" --auth-local=trust --auth-host=scram-sha-256 >/dev/null
        rm -f "$pwfile"
        echo "host all all all scram-sha-256" >> "$PGDATA/pg_hba.conf"
        echo "listen_addresses = '*'" >> "$PGDATA/postgresql.conf"
        db=${POSTGRES_DB:-$user}
        gosu postgres pg_ctl -D "$PGDATA" -o "-c listen_addresses=''" -w start >/dev/null
        [ "$db" = postgres ] || gosu postgres psql -v ON_ERROR_STOP=1 -U "$user" -d postgres -q -c "CREATE DATABASE \"$db\""
        gosu postgres pg_ctl -D "$PGDATA" -m fast -w stop >/dev/null
        echo "docker-entrypoint: initialised $PGDATA (user $user, database $db)"
    fi
    exec gosu postgres "$0" "$@"
fi
exec "$@"
