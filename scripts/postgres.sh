#!/usr/bin/env bash
# Makes sure a PostgreSQL server answers on 127.0.0.1:5432 for the tests: starts the machine's
# cluster if it is installed but stopped, installs it from Debian if missing (needs root), and
# makes a login role `charter` (password `charter`, may create databases) for the tests.
# The tests create and drop databases of their own; nothing here touches existing data.
set -euo pipefail

ready() { pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; }

ensure_role() {
  # Local connections as the postgres OS user use peer auth; TCP needs a password, so the
  # tests get a role of their own rather than a changed postgres password.
  local psql=(psql -qtA -v ON_ERROR_STOP=1)
  [ "$(id -un)" = postgres ] || psql=(su postgres -c "psql -qtA -v ON_ERROR_STOP=1")
  "${psql[@]}" >/dev/null <<'SQL'
DO $$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'charter') THEN
    CREATE ROLE charter LOGIN PASSWORD 'charter' CREATEDB;
  END IF;
END $$;
SQL
}

if ready; then ensure_role; exit 0; fi

if ! command -v pg_ctlcluster >/dev/null 2>&1; then
  echo "postgres: not installed; installing from Debian"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq postgresql >/dev/null
fi

version=$(ls /etc/postgresql 2>/dev/null | sort -V | tail -1)
if [ -z "$version" ]; then
  echo "postgres: no cluster found under /etc/postgresql" >&2
  exit 1
fi
pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
for _ in $(seq 1 50); do
  if ready; then ensure_role; echo "postgres: $version running on 127.0.0.1:5432"; exit 0; fi
  sleep 0.2
done
echo "postgres: did not become ready on 127.0.0.1:5432" >&2
exit 1
