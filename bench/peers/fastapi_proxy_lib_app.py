"""fastapi-proxy-lib 0.3 (FastAPI + httpx) in front of ``BENCH_BACKEND``, as its docs set it up.

Its httpx pool gets edge's size (512) and read timeout (30 s) instead of httpx's 100 and 5 s.
"""

import os

import httpx
from fastapi_proxy_lib.fastapi.app import reverse_http_app

client = httpx.AsyncClient(
    limits=httpx.Limits(max_connections=512, max_keepalive_connections=512),
    timeout=httpx.Timeout(30.0, connect=5.0),
)
app = reverse_http_app(client, base_url=os.environ["BENCH_BACKEND"] + "/")
