# One image for every vertex: the vertex is chosen by arguments, e.g.
#   docker run IMAGE --pipeline /etc/natsflow/pipeline.yaml --vertex classify
# with NATS_URL (and NATS_TOKEN / NATS_USER / NATS_PASSWORD / NATS_CREDS / NATS_TLS_*) in the environment.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY pyproject.toml README.md ./
COPY framework ./framework
COPY vertices ./vertices
COPY examples ./examples
# User and group 10001: the rendered pods run as 10001:10001 with a read-only root filesystem and
# an emptyDir on /tmp, so HOME points there for any library that keeps a cache under ~.
RUN pip install ".[examples]" \
    && groupadd --system --gid 10001 natsflow \
    && useradd --system --uid 10001 --gid 10001 --no-create-home natsflow
ENV HOME=/tmp

USER 10001:10001
# SIGTERM drains in-flight work and exits 0; give pods a grace period longer than the ack wait.
STOPSIGNAL SIGTERM
ENTRYPOINT ["natsflow", "vertex"]
