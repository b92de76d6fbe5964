# edge: the portal migration edge router.
#   docker build -t edge .
#   docker run -p 8080:8080 -v $PWD/config/edge.toml:/etc/edge/edge.toml:ro \
#              -e EDGE_ADMIN_TOKEN=... edge
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    EDGE_CONFIG=/etc/edge/edge.toml
WORKDIR /app
COPY pyproject.toml README.md ./
COPY edge ./edge
RUN pip install --no-compile . && useradd --system --uid 10001 --no-create-home edge
COPY config/edge.toml /etc/edge/edge.toml

USER edge
EXPOSE 8080 9090
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s \
    CMD ["python", "-c", "import os,urllib.request as u; u.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('EDGE_ADMIN__PORT', '9090'), timeout=2)"]
ENTRYPOINT ["edge"]
CMD ["serve"]
