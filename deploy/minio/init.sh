#!/bin/sh
# One-shot MinIO init (quay.io/minio/mc image, docker-compose.yml's minio-init): the buckets, one policy per role
# (policies/*.json) and one access key per role, each with its own policy and nothing else:
#   ui      s3:PutObject into feedback/ (not feedback/quarantine/), s3:HeadBucket on feedback: it cannot read,
#           list or delete a single sample
#   worker  reads the feedback (and moves broken samples to feedback/quarantine/), reads and writes the DVC remote;
#           MLflow artifacts go through the MLflow server (proxied), so no key to the mlflow bucket
#   mlflow  the MLflow server: its artifact bucket only
# The API has no S3 key at all: it only talks to MLflow.
# Idempotent: safe to run on every `docker compose up` (keys and policies are set again, so rotating a secret in
# .env and re-running applies it). Refuses a missing value or a `change-me` placeholder from .env.example.
set -eu
here="$(cd "$(dirname "$0")" && pwd)"

die() { echo "minio-init: $*" >&2; exit 2; }
for var in MINIO_ROOT_USER MINIO_ROOT_PASSWORD \
           S3_UI_ACCESS_KEY_ID S3_UI_SECRET_KEY \
           S3_WORKER_ACCESS_KEY_ID S3_WORKER_SECRET_KEY \
           S3_MLFLOW_ACCESS_KEY_ID S3_MLFLOW_SECRET_KEY; do
  eval "value=\${$var:-}"
  [ -n "$value" ] || die "$var is not set: set it in .env (see .env.example)"
  case "$value" in
    *change-me*) die "$var is still the placeholder from .env.example: set a real value in .env" ;;
  esac
done

tries=0
until mc alias set local http://minio:9000 "$MINIO_ROOT_USER" "$MINIO_ROOT_PASSWORD" >/dev/null 2>&1; do
  tries=$((tries + 1))
  [ "$tries" -lt 60 ] || die "MinIO at http://minio:9000 did not accept the root credentials within 60 s"
  echo "waiting for minio…"; sleep 1
done

for bucket in mlflow feedback dvc; do
  mc mb --ignore-existing "local/$bucket"
done

# role key: name, access key, secret key, policy file
role() {
  policy="ukr-hw-$1"
  mc admin policy create local "$policy" "$here/policies/$1.json" >/dev/null
  mc admin user add local "$2" "$3" >/dev/null
  if ! out="$(mc admin policy attach local "$policy" --user "$2" 2>&1)"; then
    case "$out" in
      *already*) ;;  # attached on an earlier run
      *) die "attaching $policy to $2 failed: $out" ;;
    esac
  fi
  echo "minio-init: key $2 → policy $policy"
}
role ui "$S3_UI_ACCESS_KEY_ID" "$S3_UI_SECRET_KEY"
role worker "$S3_WORKER_ACCESS_KEY_ID" "$S3_WORKER_SECRET_KEY"
role mlflow "$S3_MLFLOW_ACCESS_KEY_ID" "$S3_MLFLOW_SECRET_KEY"

# The single read/write key that an earlier docker-compose.yml shared between every service: gone.
for old in ukr-hw-app; do
  case " $S3_UI_ACCESS_KEY_ID $S3_WORKER_ACCESS_KEY_ID $S3_MLFLOW_ACCESS_KEY_ID " in
    *" $old "*) ;;
    *) mc admin user remove local "$old" >/dev/null 2>&1 && echo "minio-init: removed the old shared key $old" || true ;;
  esac
done
echo "minio ready: buckets mlflow, feedback, dvc; one key per role (ui, worker, mlflow)"
