# MLflow tracking server + registry: PostgreSQL backend (psycopg 3), proxied artifacts on S3 (boto3).
FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN pip install "mlflow==3.17.2" "psycopg[binary]==3.3.9" "boto3==1.43.117" \
 && useradd --create-home --uid 10001 mlflow
USER mlflow
EXPOSE 5000
CMD ["mlflow", "server", "--host", "0.0.0.0", "--port", "5000"]
