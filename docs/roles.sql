-- Roles for dnstap-collector: a writer the collector logs in as, and read-only analysts.
-- See docs/storage.md, "Roles". Tested by tests/integration/test_storage_writer_role.sh
-- (which also checks that every grant below is needed).
--
-- Not a migration: run it once, as a superuser (or as the owner of the database and of the
-- dnstap schema), in the collector's database, AFTER `dnstap-collector migrate` created the
-- schema. It is idempotent; run it again after a migration that adds tables or functions.
--
--   dnstap-collector migrate --postgres "dbname=dnstap user=postgres"
--   psql -v ON_ERROR_STOP=1 -d dnstap -f docs/roles.sql
--   psql -d dnstap -c "ALTER ROLE dnstap_writer PASSWORD '...'"       -- or peer/cert auth
--   psql -d dnstap -c "CREATE ROLE alice LOGIN IN ROLE dnstap_reader"  -- one per analyst
--
-- Then: dnstap-collector serve ... --postgres "dbname=dnstap user=dnstap_writer"
--
-- Why the writer needs what it needs (dnstap-collector as of schema version 2):
--  * CONNECT, TEMPORARY on the database: the session, and the temporary staging table
--    pdns_stage that every batch's passive-DNS upsert goes through.
--  * No CREATE on the database: at every (re)connect the collector reads
--    dnstap.schema_version first and runs no migration DDL when the schema is current.
--    (Older collectors ran CREATE SCHEMA IF NOT EXISTS at every connect and needed it; this
--    file takes it back.)
--  * USAGE, CREATE on schema dnstap: the collector creates partitions
--    dnstap.exchange_pYYYYMMDD[HH] ahead and on demand.
--  * OWNERSHIP of dnstap.exchange and its partitions: PostgreSQL lets only the owner of a
--    partitioned table create partitions of it (CREATE TABLE ... PARTITION OF), and only the
--    owner detach and drop them (retention, --retention-days). There is no grantable
--    privilege for either. The writer can therefore also DROP dnstap.exchange: keep its
--    credentials as safe as a table owner's.
--  * SELECT on dnstap.schema_version: the check at connect reads max(version).
--  * SELECT, INSERT, UPDATE on dnstap.pdns: INSERT ... ON CONFLICT DO UPDATE reads and
--    updates existing rows (time_first, time_last, count, ...).
-- Not needed: DELETE/TRUNCATE anywhere, anything on dnstap.pdns beyond the above, EXECUTE on
-- the lookup functions, sequences (there are none).
--
-- A newer collector whose embedded migrations are not applied yet would try to apply them
-- as the writer and fail (and keep retrying, logged once): run `dnstap-collector migrate` as
-- the owner before starting a new version, then run this file again.

BEGIN;

DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'dnstap_writer') THEN
        CREATE ROLE dnstap_writer LOGIN;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'dnstap_reader') THEN
        CREATE ROLE dnstap_reader NOLOGIN;  -- a group: analysts are members of it
    END IF;
END
$$;

-- Optional hardening for a database that holds only DNS logs (client addresses are personal
-- data): nobody else may connect or create temporary tables. Uncomment to apply.
-- DO $$ BEGIN EXECUTE format('REVOKE ALL ON DATABASE %I FROM PUBLIC', current_database()); END $$;
-- REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA dnstap FROM PUBLIC;

-- ---------------------------------------------------------------------------------------
-- Writer
DO $$
BEGIN
    EXECUTE format('GRANT CONNECT, TEMPORARY ON DATABASE %I TO dnstap_writer', current_database());
    EXECUTE format('REVOKE CREATE ON DATABASE %I FROM dnstap_writer', current_database());
END
$$;
GRANT USAGE, CREATE ON SCHEMA dnstap TO dnstap_writer;
GRANT SELECT ON dnstap.schema_version TO dnstap_writer;
GRANT SELECT, INSERT, UPDATE ON dnstap.pdns TO dnstap_writer;

ALTER TABLE dnstap.exchange OWNER TO dnstap_writer;
-- Partitions that exist already (created by an earlier collector running as someone else):
-- the writer must own them too, or retention cannot drop them.
DO $$
DECLARE
    part regclass;
BEGIN
    FOR part IN SELECT inhrelid::regclass FROM pg_inherits
                WHERE inhparent = 'dnstap.exchange'::regclass
    LOOP
        EXECUTE format('ALTER TABLE %s OWNER TO dnstap_writer', part);
    END LOOP;
END
$$;

-- ---------------------------------------------------------------------------------------
-- Read-only analysts: SQL on the tables, the lookup functions, `dnstap-collector lookup`
-- and `dnstap-collector report`.
DO $$
BEGIN
    EXECUTE format('GRANT CONNECT ON DATABASE %I TO dnstap_reader', current_database());
END
$$;
GRANT USAGE ON SCHEMA dnstap TO dnstap_reader;
-- Through the parent table only the parent's privilege is checked, so this covers every
-- partition, present and future.
GRANT SELECT ON dnstap.exchange, dnstap.pdns, dnstap.schema_version TO dnstap_reader;
-- SECURITY INVOKER functions: they read dnstap.pdns with the caller's SELECT privilege.
-- (PUBLIC has EXECUTE by default; granted explicitly for databases that revoked it.)
GRANT EXECUTE ON FUNCTION dnstap.normalize_name(text),
                          dnstap.pdns_name(text, timestamptz, timestamptz),
                          dnstap.pdns_rdata(text, timestamptz, timestamptz)
    TO dnstap_reader;
-- Partitions the writer creates later are readable directly too (SELECT ... FROM
-- dnstap.exchange_p20261121), not only through dnstap.exchange.
ALTER DEFAULT PRIVILEGES FOR ROLE dnstap_writer IN SCHEMA dnstap GRANT SELECT ON TABLES TO dnstap_reader;
DO $$
DECLARE
    part regclass;
BEGIN
    FOR part IN SELECT inhrelid::regclass FROM pg_inherits
                WHERE inhparent = 'dnstap.exchange'::regclass
    LOOP
        EXECUTE format('GRANT SELECT ON %s TO dnstap_reader', part);
    END LOOP;
END
$$;

COMMIT;
