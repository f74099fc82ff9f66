ARG PYTHON_VERSION=3.12
FROM python:${PYTHON_VERSION}-slim AS base
ENV PYTHONDONTWRITEBYTECODE=1
ENV PYTHONUNBUFFERED=1
WORKDIR /app

# Install system packages needed to build wheels
RUN set -eux; \
    apt-get update; \
    apt-get install -y --no-install-recommends \
        build-essential \
        libpq-dev \
        # keep this sorted
        gettext \
    ; \
    rm -rf /var/lib/apt/lists/*

COPY requirements.txt .
RUN --mount=type=cache,target=/root/.cache/pip \
    python -m pip install -r requirements.txt

COPY <<EOF /etc/app/config.ini
[server]
port = 8000
workers = 4
EOF

RUN <<EOT bash
  set -e
  python -m compileall -q /usr/local/lib
  useradd --create-home --shell /bin/bash app
EOT

COPY --chown=app:app . .
USER app
EXPOSE 8000
VOLUME ["/app/data"]
CMD ["gunicorn", "app.wsgi:application", "--bind", "0.0.0.0:8000"]
