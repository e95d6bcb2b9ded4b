# The reference Antenna-like server (web tier and result workers) as one image.
# Build: docker compose -f docker-compose.repro.yml build
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    DJANGO_SETTINGS_MODULE=contend.refserver.settings

WORKDIR /app
COPY pyproject.toml README.md ./
COPY contend ./contend
RUN pip install . py-spy

# Processes read every flag and CONTEND_REF_DSN / CONTEND_REF_NATS from the environment.
CMD ["python", "-m", "contend.refserver", "web", "--host", "0.0.0.0", "--port", "8000"]
