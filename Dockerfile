# AETHERION: one async process (FastAPI + uvicorn). Build: docker build -t aetherion .
# Run:   docker run -p 8001:8001 -v aetherion-var:/app/var aetherion
FROM python:3.11-slim-bookworm AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN apt-get update && apt-get install -y --no-install-recommends gcc \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY aetherion ./aetherion
RUN python -m venv /opt/venv && /opt/venv/bin/pip install --upgrade pip \
    && /opt/venv/bin/pip install .

FROM python:3.11-slim-bookworm
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 \
    AETHERION_LOG_FORMAT=json AETHERION_HOST=0.0.0.0 \
    AETHERION_MIGRATIONS_DIR=/app/migrations
RUN useradd --system --create-home --home-dir /app --uid 10001 aetherion
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
COPY --chown=aetherion:aetherion migrations ./migrations
RUN mkdir -p /app/var && chown aetherion:aetherion /app/var
USER aetherion
EXPOSE 8001
VOLUME ["/app/var"]
HEALTHCHECK --interval=30s --timeout=3s --start-period=20s \
    CMD python -c "import urllib.request,os; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('AETHERION_PORT', '8001') + '/healthz', timeout=2)"
ENTRYPOINT ["aetherion"]
CMD ["run"]
