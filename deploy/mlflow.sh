#!/usr/bin/env bash
# The MLflow tracking server of a CaloTwin deployment.
#
# Runs, metrics, parameters and the model registry (calotwin-generator, aliases champion/challenger)
# live in PostgreSQL; artifacts (the logged generators, loss curves, validation reports) live on the
# object store, read and written by this server only (--serve-artifacts, MLflow's default): CaloTwin's
# processes need no object-store credentials for MLflow, only CALOTWIN_MLFLOW_URI=http://<host>:<port>.
# New experiments get the artifact root mlflow-artifacts:/ (CaloTwin leaves it to the server).
#
# Environment:
#   MLFLOW_PG_HOST, MLFLOW_PG_USER       PostgreSQL host and user (required)
#   MLFLOW_PG_PASSWORD                   its password (passed to libpq as PGPASSWORD, never on the command line)
#   MLFLOW_PG_PORT, MLFLOW_PG_DB         default 5432 and mlflow; the database must exist, MLflow creates its tables
#   MLFLOW_ARTIFACTS_DESTINATION         e.g. s3://calotwin/mlflow (required)
#   MLFLOW_S3_ENDPOINT_URL               the endpoint of an S3-compatible store that is not AWS, e.g. http://minio:9000
#   AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY   the server's object-store credentials (or any boto3 credential source)
#   MLFLOW_HOST, MLFLOW_PORT             default 127.0.0.1 and 5000; with 0.0.0.0 also set MLFLOW_ALLOWED_HOSTS
#   MLFLOW_ALLOWED_HOSTS                 Host headers accepted besides localhost and private IPs, e.g. mlflow.example.org
#   MLFLOW_WORKERS                       uvicorn worker processes (default 4)
#   MLFLOW                               the mlflow executable (default: mlflow on PATH, e.g. .venv/bin/mlflow)
#
# Example:
#   MLFLOW_PG_HOST=db MLFLOW_PG_USER=mlflow MLFLOW_PG_PASSWORD=... \
#   MLFLOW_ARTIFACTS_DESTINATION=s3://calotwin/mlflow MLFLOW_S3_ENDPOINT_URL=http://minio:9000 \
#   AWS_ACCESS_KEY_ID=... AWS_SECRET_ACCESS_KEY=... MLFLOW=.venv/bin/mlflow deploy/mlflow.sh
set -euo pipefail

: "${MLFLOW_PG_HOST:?set MLFLOW_PG_HOST (PostgreSQL host)}"
: "${MLFLOW_PG_USER:?set MLFLOW_PG_USER (PostgreSQL user)}"
: "${MLFLOW_ARTIFACTS_DESTINATION:?set MLFLOW_ARTIFACTS_DESTINATION (e.g. s3://calotwin/mlflow)}"

if [[ -n "${MLFLOW_PG_PASSWORD:-}" ]]; then
    export PGPASSWORD="$MLFLOW_PG_PASSWORD"
fi
# SQLAlchemy 2.1 maps a plain postgresql:// URL to psycopg 3; the psycopg2 driver is the one installed
backend="postgresql+psycopg2://${MLFLOW_PG_USER}@${MLFLOW_PG_HOST}:${MLFLOW_PG_PORT:-5432}/${MLFLOW_PG_DB:-mlflow}"
# MLflow's server-side job runner (GenAI scorers, prompt optimisation) starts 7 worker processes;
# CaloTwin does not use it
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION="${MLFLOW_SERVER_ENABLE_JOB_EXECUTION:-false}"

args=(
    server
    --backend-store-uri "$backend"
    --serve-artifacts
    --artifacts-destination "$MLFLOW_ARTIFACTS_DESTINATION"
    --host "${MLFLOW_HOST:-127.0.0.1}"
    --port "${MLFLOW_PORT:-5000}"
    --workers "${MLFLOW_WORKERS:-4}"
)
if [[ -n "${MLFLOW_ALLOWED_HOSTS:-}" ]]; then
    args+=(--allowed-hosts "$MLFLOW_ALLOWED_HOSTS")
fi
exec "${MLFLOW:-mlflow}" "${args[@]}"
