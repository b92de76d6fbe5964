# edge: the portal migration edge router.
#   docker build -t edge .
#   docker run --init --stop-timeout 35 -p 8080:8080 \
#       -v $PWD/config/edge.toml:/etc/edge/edge.toml:ro \
#       -e EDGE_STORE__URL=redis://redis:6379/0 -e EDGE_ADMIN_TOKEN=... edge
# Config: mount a file on /etc/edge/edge.toml, or override any key as EDGE_<SECTION>__<KEY>.
# docs/deploying.md has the rest (load balancer, Redis Sentinel/Cluster/TLS, capacity).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    EDGE_CONFIG=/etc/edge/edge.toml
WORKDIR /app
COPY pyproject.toml README.md ./
COPY edge ./edge
# Bytecode is compiled here, as root: the edge user cannot write it at run time, and every
# worker process would otherwise compile each module again on start.
RUN pip install . && rm -rf /app/edge && useradd --system --uid 10001 --no-create-home edge
COPY config/edge.toml /etc/edge/edge.toml

USER edge
EXPOSE 8080 9090
# Liveness of the process; a load balancer should probe /readyz (503 until Redis was reached).
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s \
    CMD ["python", "-c", "import os,urllib.request as u; u.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('EDGE_ADMIN__PORT', '9090'), timeout=2)"]
# Exec form: edge is PID 1 and gets SIGTERM itself (graceful_timeout, 30 s by default).
ENTRYPOINT ["edge"]
CMD ["serve"]
