# edge: the portal migration edge router.
#   docker build -t edge .
#   docker run --init --stop-timeout 35 -p 8080:8080 \
#       -v $PWD/config/edge.toml:/etc/edge/edge.toml:ro \
#       -e EDGE_STORE__URL=redis://redis:6379/0 -e EDGE_ADMIN_TOKEN=... edge
# Config: mount a file on /etc/edge/edge.toml, or override any key as EDGE_<SECTION>__<KEY>.
# docs/deploying.md has the rest (load balancer, Redis Sentinel/Cluster/TLS, capacity).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 EDGE_CONFIG=/etc/edge/edge.toml
WORKDIR /app
# The dependencies exactly as uv.lock holds them, each checked against its hash; uv (at the
# version scripts/uv pins) only writes them out, and is gone before the image is.
COPY pyproject.toml uv.lock README.md ./
COPY scripts/uv ./scripts/uv
RUN ./scripts/uv export --locked --no-dev --no-emit-project --no-header \
        --format requirements-txt --output-file /tmp/requirements.txt \
    && pip install --require-hashes --only-binary :all: -r /tmp/requirements.txt \
    && rm -rf .tools /tmp/requirements.txt /root/.cache
COPY edge ./edge
# edge itself, on the locked dependencies just installed. Bytecode is compiled here, as root:
# the edge user cannot write it at run time, and every worker process would otherwise compile
# each module again on start.
RUN pip install --no-deps . && rm -rf /app/edge /app/build \
    && useradd --system --uid 10001 --no-create-home edge
COPY config/edge.toml /etc/edge/edge.toml

USER edge
EXPOSE 8080 9090
# Liveness of the process; a load balancer should probe /readyz (503 until Redis was reached).
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s \
    CMD ["python", "-c", "import os,urllib.request as u; u.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('EDGE_ADMIN__PORT', '9090'), timeout=2)"]
# Exec form: edge is PID 1 and gets SIGTERM itself (graceful_timeout, 30 s by default).
ENTRYPOINT ["edge"]
CMD ["serve"]
