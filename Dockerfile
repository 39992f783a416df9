# syntax=docker/dockerfile:1
# leadscore service image: one image runs the API (`serve`, the default), the consumer
# (`consume`) and the event simulator (`simulate`); docker-compose.yml picks the command.

# --- build: install the project and its pinned dependencies into a self-contained venv ---
FROM python:3.11-slim AS build

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src
# The lock file first, so dependency layers stay cached while only our code changes.
COPY requirements.lock ./
COPY pyproject.toml README.md ./
COPY schemas/ schemas/
COPY models/ models/
COPY app/ app/
COPY consumers/ consumers/
COPY devtools/ devtools/
# -c: every dependency at the version CI tested; a non-editable install, so /src is not needed later.
RUN pip install --no-cache-dir -c requirements.lock .

# --- runtime: the venv plus the one system library LightGBM needs, as a non-root user ---
FROM python:3.11-slim AS runtime

# LightGBM's wheel links against OpenMP (libgomp), which the slim image lacks.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/*

RUN groupadd --system --gid 10001 leadscore \
    && useradd --system --uid 10001 --gid leadscore --create-home --home-dir /home/leadscore leadscore

COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1

USER leadscore
WORKDIR /home/leadscore

EXPOSE 8000

# No curl in slim images: the standard library does the probe (urlopen raises on non-2xx).
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]

CMD ["leadscore", "serve", "--host", "0.0.0.0", "--port", "8000"]
