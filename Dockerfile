# pg-broker image: the `broker` command (api, worker, migrate, ...) and `alembic`, without the
# embedded PostgreSQL (containers point BROKER_DATABASE_URL at a real server).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    BROKER_STATE_DIR=/var/lib/broker/state

WORKDIR /app
COPY pyproject.toml README.md alembic.ini ./
COPY alembic ./alembic
COPY broker ./broker
COPY api ./api
# A plain install: the wheel carries the migrations (broker._alembic) for `broker migrate`
# and /readyz; alembic.ini and alembic/ stay in /app for `alembic upgrade head`.
RUN pip install . \
    && useradd --system --uid 10001 --home-dir /var/lib/broker --create-home broker \
    && mkdir -p /var/lib/broker/state \
    && chown -R broker:broker /var/lib/broker

USER broker
EXPOSE 8000
ENTRYPOINT ["broker"]
CMD ["api", "--host", "0.0.0.0"]
