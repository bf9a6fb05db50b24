-- arbiter's PostgreSQL roles (docs/deploy.md, "Database roles"):
--
--   arbiter_daemon    read-write: the daemon. It also owns the tables: run
--                     `arbiter db upgrade` with this role, so that the default
--                     privileges below reach every table a migration creates.
--   arbiter_readonly  read-only: the CLI (arbiter status, prices, ...), dashboards and
--                     ad-hoc queries. SELECT only; every session starts read-only.
--
-- Run it as a superuser or as the owner of the database, connected to the arbiter
-- database, before the first `arbiter db upgrade`:
--
--   psql -v ON_ERROR_STOP=1 -d arbiter -f deploy/postgres/roles.sql
--   psql -d arbiter -c '\password arbiter_daemon'      # and arbiter_readonly
--
-- It is idempotent: re-run it after restoring a dump, or after migrations that another
-- role ran (their tables get the same grants). Plain SQL, no psql meta-commands. It
-- sets no passwords: set them with \password (or your secret manager's rotation), so
-- that none is written in a file or in the server log.

BEGIN;

DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'arbiter_daemon') THEN
        CREATE ROLE arbiter_daemon LOGIN;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'arbiter_readonly') THEN
        CREATE ROLE arbiter_readonly LOGIN;
    END IF;
END
$$;

-- Read-only by default, whatever client connects. A session may still SET it off:
-- the grants below are what actually stops writes; this makes a mistake fail early
-- ("cannot execute INSERT in a read-only transaction").
ALTER ROLE arbiter_readonly SET default_transaction_read_only = on;
-- A CLI query or a dashboard must not run for ever nor hold a snapshot open.
ALTER ROLE arbiter_readonly SET statement_timeout = '60s';
ALTER ROLE arbiter_readonly SET idle_in_transaction_session_timeout = '5min';

-- The database: only these two roles (and its owner, and superusers) may connect.
DO $$
BEGIN
    EXECUTE format('REVOKE ALL ON DATABASE %I FROM PUBLIC', current_database());
    EXECUTE format('GRANT CONNECT ON DATABASE %I TO arbiter_daemon, arbiter_readonly',
                   current_database());
END
$$;

-- The schema: the daemon creates the tables (migrations), the reader only looks.
-- (PostgreSQL 14 still lets every role create in public; 15 and later do not.)
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
GRANT USAGE, CREATE ON SCHEMA public TO arbiter_daemon;
GRANT USAGE ON SCHEMA public TO arbiter_readonly;

-- Tables that exist already (made by another role, or restored from a dump).
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO arbiter_daemon;
GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA public TO arbiter_daemon;
GRANT SELECT ON ALL TABLES IN SCHEMA public TO arbiter_readonly;

-- Tables that `arbiter db upgrade` will create as arbiter_daemon.
ALTER DEFAULT PRIVILEGES FOR ROLE arbiter_daemon IN SCHEMA public
    GRANT SELECT ON TABLES TO arbiter_readonly;

COMMIT;
