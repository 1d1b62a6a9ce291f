-- The store's database roles, run once per instance as `postgres` (Cloud SQL's: CREATEROLE, not a
-- superuser) once the foundation stage has made the IAM users (docs/cloud-architecture.md,
-- section 15), with PROJECT replaced by the project id:
--   sed s/PROJECT/appraiser-prod/g infra/database-roles.sql \
--     | psql -v ON_ERROR_STOP=1 -1 "host=PRIVATE_IP dbname=appraiser user=postgres sslmode=require"
-- tests/test_infra_database.py runs it against PostgreSQL the same way (a non-superuser runs it;
-- another role made the IAM users).
--
-- The schema belongs to `appraiser_owner`, which the migrate job's user acts as (its URL sets
-- `options=-c role=appraiser_owner`); the API's and the pipeline's users read and write rows; the
-- export's user reads. Tables a later migration creates get the same grants (default privileges),
-- so a migration never leaves the app unable to read its own table.
--
-- The audit trail is the exception: the app role may only INSERT and SELECT `audit_events`.
-- Default privileges cannot single out one table, and the table does not exist yet when this
-- runs, so migration 0006 revokes UPDATE, DELETE and TRUNCATE on it from every role but its
-- owner (and a trigger refuses them to everyone, the owner included); the block at the end does
-- the same where the schema was built before these roles.

CREATE ROLE appraiser_owner NOLOGIN;     -- owns every table: only migrations change the schema
CREATE ROLE appraiser_app NOLOGIN;       -- sa-api, sa-pipeline: rows, never the schema
CREATE ROLE appraiser_readonly NOLOGIN;  -- sa-export
GRANT appraiser_owner TO "sa-migrate@PROJECT.iam";
GRANT appraiser_app TO "sa-api@PROJECT.iam", "sa-pipeline@PROJECT.iam";
GRANT appraiser_readonly TO "sa-export@PROJECT.iam";

GRANT CREATE, USAGE ON SCHEMA public TO appraiser_owner;
GRANT USAGE ON SCHEMA public TO appraiser_app, appraiser_readonly;
REVOKE CREATE ON SCHEMA public FROM PUBLIC;

-- ALTER DEFAULT PRIVILEGES FOR ROLE needs membership in that role; this session made it, so it
-- may grant it to itself
GRANT appraiser_owner TO CURRENT_USER;
ALTER DEFAULT PRIVILEGES FOR ROLE appraiser_owner IN SCHEMA public
    GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO appraiser_app;
ALTER DEFAULT PRIVILEGES FOR ROLE appraiser_owner IN SCHEMA public
    GRANT USAGE, SELECT, UPDATE ON SEQUENCES TO appraiser_app;
ALTER DEFAULT PRIVILEGES FOR ROLE appraiser_owner IN SCHEMA public
    GRANT SELECT ON TABLES TO appraiser_readonly;

DO $$
BEGIN
  IF to_regclass('public.audit_events') IS NOT NULL THEN
    REVOKE UPDATE, DELETE, TRUNCATE ON public.audit_events FROM appraiser_app, appraiser_readonly;
    GRANT SELECT, INSERT ON public.audit_events TO appraiser_app;
  END IF;
END $$;
