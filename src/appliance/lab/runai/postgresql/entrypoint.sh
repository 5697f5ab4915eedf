#!/bin/sh
# Entrypoint of the synthetic Run:ai PostgreSQL image (runs as user postgres): makes the cluster in PGDATA
# on the first start, makes sure the backend's role (POSTGRES_USER, password POSTGRES_PASSWORD, from the
# chart's Secret) and database (POSTGRES_DB) exist and that the role has the Secret's password, then runs
# the server on *:5432. TCP needs the password (scram-sha-256); the local socket trusts the OS user
# (peer), so `kubectl exec ... -- pg_dump` works as postgres without one.
set -eu

: "${PGDATA:?PGDATA is not set}"
: "${POSTGRES_USER:=runai}"
: "${POSTGRES_DB:=runai}"
export POSTGRES_USER POSTGRES_DB  # psql reads them with \getenv
if [ -z "${POSTGRES_PASSWORD:-}" ]; then
    echo "runai-postgresql: POSTGRES_PASSWORD is empty; the backend's role needs a password" >&2
    exit 2
fi
if [ "$(id -u)" = 0 ]; then
    echo "runai-postgresql: refusing to run as root; run as user postgres (999)" >&2
    exit 2
fi

if [ ! -s "$PGDATA/PG_VERSION" ]; then
    echo "runai-postgresql: initialising a cluster in $PGDATA"
    mkdir -p "$PGDATA"
    chmod 0700 "$PGDATA"
    initdb --pgdata="$PGDATA" --username=postgres --encoding=UTF8 --locale=C \
        --auth-local=peer --auth-host=scram-sha-256
    cat >>"$PGDATA/pg_hba.conf" <<'HBA'
# runai-postgresql: the backend connects over the cluster network, with the role's password.
host    all             all             0.0.0.0/0               scram-sha-256
host    all             all             ::/0                    scram-sha-256
HBA
fi

# A volume's fsGroup gives its group rwx (and setgid) to what is on it when kubelet mounts it again;
# postgres starts only on a data directory of 0700 or 0750.
chmod 0700 "$PGDATA"

# Role and database, on the socket only, before any client can connect over TCP.
pg_ctl --pgdata="$PGDATA" --wait --silent --options="-c listen_addresses=''" start
psql --no-psqlrc --quiet --set=ON_ERROR_STOP=1 --username=postgres --dbname=postgres <<'SQL'
\getenv role POSTGRES_USER
\getenv db POSTGRES_DB
\getenv password POSTGRES_PASSWORD
SELECT format('CREATE ROLE %I LOGIN', :'role') WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'role')
\gexec
ALTER ROLE :"role" WITH LOGIN PASSWORD :'password';
SELECT format('CREATE DATABASE %I OWNER %I', :'db', :'role')
 WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = :'db')
\gexec
SQL
pg_ctl --pgdata="$PGDATA" --wait --silent --mode=fast stop

unset POSTGRES_PASSWORD
exec postgres -D "$PGDATA" -c listen_addresses='*' -c password_encryption=scram-sha-256 "$@"
