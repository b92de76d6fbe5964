"""nginx, configured by the bench in a directory of its own: the backend and the C anchor proxy."""

from __future__ import annotations

import getpass
import os
import shutil
from pathlib import Path

SMALL_BODY = b"edge bench: a small body.\n"  # 26 bytes, as in docs/performance.md's runs
BIG_PATH = "/bench-gym/big"
UPLOAD_PATH = "/bench-gym/upload"
ECHO_MODULE = Path("/usr/lib/nginx/modules/ngx_http_echo_module.so")

_COMMON = """\
{user}worker_processes 1;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
{modules}
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    keepalive_requests 1000000;
    keepalive_timeout 60s;
    client_max_body_size 0;
{http}
}}
"""

# The backend: a small fixed body anywhere, the big file, and an upload sink that reads the
# whole body before it answers (the echo module ships with Debian's nginx-light).
_BACKEND = """\
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            default_type text/plain;
            return 200 "{body}";
        }}
        location = {big} {{
            default_type application/octet-stream;
            alias {big_file};
        }}
        location = {upload} {{
            client_body_buffer_size 1m;
            echo_read_request_body;
            echo "received";
        }}
    }}
"""

# The anchor: a keep-alive upstream pool, streaming both ways as the Python proxies do, with
# 64 KiB reads as theirs (nginx's default for an unbuffered stream is one page).
_PROXY = """\
    upstream backend {{
        server 127.0.0.1:{backend_port};
        keepalive 512;
    }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_request_buffering off;
            proxy_buffering off;
            proxy_buffer_size 64k;
            proxy_buffers 4 64k;
            client_body_buffer_size 64k;
        }}
    }}
"""


def nginx_binary() -> str:
    found = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")
    if found is None:
        raise RuntimeError("nginx is not installed: sudo apt-get install nginx-light")
    return found


def backend_config(directory: Path, port: int, big_file: Path) -> str:
    if not ECHO_MODULE.exists():
        raise RuntimeError(f"{ECHO_MODULE} is missing: sudo apt-get install nginx-light")
    http = _BACKEND.format(
        port=port,
        body=SMALL_BODY.decode().replace("\n", "\\n"),
        big=BIG_PATH,
        big_file=big_file,
        upload=UPLOAD_PATH,
    )
    return _common(directory, f"load_module {ECHO_MODULE};", http)


def proxy_config(directory: Path, port: int, backend_port: int) -> str:
    http = _PROXY.format(port=port, backend_port=backend_port)
    return _common(directory, "", http)


def _common(directory: Path, modules: str, http: str) -> str:
    # A worker started by root would run as nobody, who cannot read the bench's temp directory.
    user = f"user {getpass.getuser()};\n" if os.geteuid() == 0 else ""
    return _COMMON.format(user=user, dir=directory, modules=modules, http=http)


def command(directory: Path, config: str) -> list[str]:
    """Write the config into directory; the command line that runs nginx in the foreground."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "nginx.conf"
    path.write_text(config)
    log = directory / "error.log"
    return [nginx_binary(), "-p", str(directory), "-e", str(log), "-c", str(path)]
