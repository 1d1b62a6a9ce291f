-- The store's database roles, run once per instance as `postgres` after the `jobs` stage has made
-- the IAM users (docs/cloud-architecture.md, section 15), with PROJECT replaced by the project id:
--   sed s/PROJECT/appraiser-prod/g infra/database-roles.sql | psql "host=PRIVATE_IP dbname=appraiser user=postgres sslmode=require"
-- tests/test_infra_database.py runs it against the test PostgreSQL server.
--
-- The migrate job's user owns the schema and is the only one that may change it; the API and the
-- pipeline read and write rows; the export reads. Tables the migrate user creates later get the
-- same grants (default privileges), so a migration never leaves the app unable to read its table.

CREATE ROLE appraiser_app NOLOGIN;       -- sa-api, sa-pipeline: rows, never the schema
CREATE ROLE appraiser_readonly NOLOGIN;  -- sa-export
GRANT appraiser_app TO "sa-api@PROJECT.iam", "sa-pipeline@PROJECT.iam";
GRANT appraiser_readonly TO "sa-export@PROJECT.iam";

GRANT CREATE, USAGE ON SCHEMA public TO "sa-migrate@PROJECT.iam";
GRANT USAGE ON SCHEMA public TO appraiser_app, appraiser_readonly;
REVOKE CREATE ON SCHEMA public FROM PUBLIC;

-- ALTER DEFAULT PRIVILEGES FOR ROLE needs membership in that role (Cloud SQL's postgres is not
-- a superuser)
GRANT "sa-migrate@PROJECT.iam" TO CURRENT_USER;
ALTER DEFAULT PRIVILEGES FOR ROLE "sa-migrate@PROJECT.iam" IN SCHEMA public
    GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO appraiser_app;
ALTER DEFAULT PRIVILEGES FOR ROLE "sa-migrate@PROJECT.iam" IN SCHEMA public
    GRANT USAGE, SELECT, UPDATE ON SEQUENCES TO appraiser_app;
ALTER DEFAULT PRIVILEGES FOR ROLE "sa-migrate@PROJECT.iam" IN SCHEMA public
    GRANT SELECT ON TABLES TO appraiser_readonly;
