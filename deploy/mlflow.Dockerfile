# MLflow tracking server + registry behind MLflow's basic-auth app: PostgreSQL backend (psycopg 3), proxied
# artifacts on S3 (boto3), Flask-WTF for the auth app. deploy/mlflow/start.py writes the auth config from the
# environment and starts `mlflow server --app-name basic-auth` (see docker-compose.yml).
# Base image pinned by tag; record its digest and pin `FROM python:…@sha256:…` where you can.
FROM python:3.11.13-slim-bookworm
ENV PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN pip install "mlflow[auth]==3.17.2" "Flask-WTF==1.3.0" "psycopg[binary]==3.3.9" "boto3==1.43.117" \
 && useradd --system --uid 10001 --user-group --home-dir /var/lib/mlflow --create-home --shell /usr/sbin/nologin mlflow
COPY deploy/mlflow/start.py /opt/ukr-hw/start.py
USER mlflow
WORKDIR /var/lib/mlflow
EXPOSE 5000
ENTRYPOINT ["python", "/opt/ukr-hw/start.py"]
CMD ["--host=0.0.0.0", "--port=5000"]
