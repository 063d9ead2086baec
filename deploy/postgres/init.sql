-- First-boot layout of the staging Postgres (docker-compose.temporal.yml).
--
-- One server, three databases, two login roles, each owning only its own data:
--   soundfoundry         owned by role soundfoundry  (the app; Alembic migrates it)
--   temporal             owned by role temporal      (Temporal persistence)
--   temporal_visibility  owned by role temporal      (Temporal visibility store)
-- The superuser (POSTGRES_USER) is kept for administration only.
--
-- The official image runs this file with psql once, when the data volume is empty.
-- Passwords come from the container environment through psql's \getenv, so none is
-- written here. Changing one later takes `ALTER ROLE ... PASSWORD ...`: this file will
-- not run again on an initialised volume.

\set ON_ERROR_STOP on

\getenv app_password APP_DB_PASSWORD
\getenv temporal_password TEMPORAL_DB_PASSWORD

-- Stop the first boot (psql exits non-zero) rather than create roles without passwords.
\if :{?app_password}
\else
  DO $$ BEGIN RAISE EXCEPTION 'APP_DB_PASSWORD is not set in the postgres container'; END $$;
\endif
\if :{?temporal_password}
\else
  DO $$ BEGIN RAISE EXCEPTION 'TEMPORAL_DB_PASSWORD is not set in the postgres container'; END $$;
\endif

CREATE ROLE soundfoundry LOGIN PASSWORD :'app_password';
CREATE ROLE temporal LOGIN PASSWORD :'temporal_password';

-- Temporal's auto-setup runs with SKIP_DB_CREATE=true, so its role needs no CREATEDB.
CREATE DATABASE soundfoundry OWNER soundfoundry;
CREATE DATABASE temporal OWNER temporal;
CREATE DATABASE temporal_visibility OWNER temporal;

-- Neither role can even connect to the other's databases.
REVOKE ALL ON DATABASE soundfoundry FROM PUBLIC;
REVOKE ALL ON DATABASE temporal FROM PUBLIC;
REVOKE ALL ON DATABASE temporal_visibility FROM PUBLIC;
