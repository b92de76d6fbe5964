"""asgiproxy 0.2 (Starlette + aiohttp) in front of ``BENCH_BACKEND``, as its README sets it up.

Its concurrency limit is raised from 20 to edge's pool size (512), so that it is not the limit.
"""

import os
from urllib.parse import urlsplit

from asgiproxy.config import BaseURLProxyConfigMixin, ProxyConfig
from asgiproxy.context import ProxyContext
from asgiproxy.simple_proxy import make_simple_proxy_app

BACKEND = os.environ["BENCH_BACKEND"]


class Config(BaseURLProxyConfigMixin, ProxyConfig):
    upstream_base_url = BACKEND
    rewrite_host_header = urlsplit(BACKEND).netloc


app = make_simple_proxy_app(ProxyContext(Config(), max_concurrency=512))
