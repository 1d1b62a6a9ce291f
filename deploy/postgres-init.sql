-- Run once by the postgres image, on an empty data volume (/docker-entrypoint-initdb.d), as
-- POSTGRES_USER connected to POSTGRES_DB (the appraiser store). The MLflow tracking server keeps
-- its runs and registered models in a database of its own, owned by the same role.
CREATE DATABASE mlflow;
