# The Aetherius Orchestrator image; docker-compose.yml runs it next to PostgreSQL, Redis and NATS.
#   docker build -t aetherius-orchestrator .
# The service reads config/config.yaml, overridden by AETHERIUS_<SECTION>__<KEY> variables.

# ---- build: durable-rules compiles a C extension, so the compiler stays in this stage.
FROM python:3.11-slim AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/*
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
WORKDIR /src
# Only what the package needs (there is no .dockerignore: never copy .venv or var/).
COPY pyproject.toml README.md ./
COPY engine ./engine
COPY steps ./steps
RUN /opt/venv/bin/pip install .

# ---- runtime
FROM python:3.11-slim
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
RUN useradd --system --uid 10001 --user-group --home-dir /app --no-create-home aetherius
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
COPY config ./config
# The shipped rules; docker-compose.yml mounts the operators' rules over /app/rules.
COPY rules ./rules
RUN mkdir -p /app/var && chown aetherius:aetherius /app/var
USER aetherius
EXPOSE 8081
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8081/healthz', timeout=4)"]
CMD ["aetherius", "serve"]
