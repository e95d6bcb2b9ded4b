# The reference Antenna-like server (setup, web tier and result workers) as one image.
# Build: docker compose -f docker-compose.repro.yml build (or podman-compose; see its header).
# Only what the server needs (contend/refserver/requirements.txt): no load, sampling or report packages.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DJANGO_SETTINGS_MODULE=contend.refserver.settings

WORKDIR /app
# the server's packages first: a code change rebuilds only the last layer
COPY contend/refserver/requirements.txt ./requirements.txt
RUN pip install -r requirements.txt
COPY pyproject.toml README.md ./
COPY contend ./contend
RUN pip install --no-deps . && rm -rf /app/build

# Processes read every flag and CONTEND_REF_DSN / CONTEND_REF_NATS from the environment.
CMD ["python", "-m", "contend.refserver", "web", "--host", "0.0.0.0", "--port", "8000"]
