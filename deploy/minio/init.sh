#!/bin/sh
# One-shot MinIO init (minio/mc image): the buckets and a non-root access key for the applications.
# Idempotent: safe to run on every `docker compose up`.
set -eu
: "${MINIO_ROOT_USER:?}" "${MINIO_ROOT_PASSWORD:?}" "${S3_ACCESS_KEY_ID:?}" "${S3_SECRET_ACCESS_KEY:?}"

until mc alias set local http://minio:9000 "$MINIO_ROOT_USER" "$MINIO_ROOT_PASSWORD" >/dev/null 2>&1; do
  echo "waiting for minio…"; sleep 1
done

for bucket in mlflow feedback dvc; do
  mc mb --ignore-existing "local/$bucket"
done

# the applications' key: read/write on the buckets, no admin rights
mc admin user add local "$S3_ACCESS_KEY_ID" "$S3_SECRET_ACCESS_KEY"
mc admin policy attach local readwrite --user "$S3_ACCESS_KEY_ID" 2>/dev/null || true
echo "minio ready: buckets mlflow, feedback, dvc; access key $S3_ACCESS_KEY_ID"
