"""What routing costs a request, in one process: ``python -m bench.route_cost``.

edge's router with its forwarder stubbed out (the request is answered at once, with no I/O),
against the same router with routing skipped as in ``bench.forward_only``. The difference is
what resolve, the mode look-up and decide cost a request, without a load test's noise: the
requests run one at a time on uvloop, interleaved in rounds, and the best round counts.
"""

from __future__ import annotations

import argparse
import gc
from time import perf_counter

import uvloop

from bench.forward_only import TENANT, skip_routing
from bench.stage import PATH
from edge import config
from edge.core.asgi import Message, Receive, Scope, Send
from edge.core.tenants import Mode
from edge.forwarding.headers import Backend, ClientView
from edge.forwarding.proxy import Forwarder
from edge.moves.service import Moves
from edge.observe.served import Outcome
from edge.serving.app import EdgeApp

HOST = "portal.example.com"
_ANSWERED = Outcome(200, 26, 0.0, None)
# What a browser sends besides Host; wrk sends Host alone.
_BROWSER = [
    (b"user-agent", b"Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/120.0"),
    (b"accept", b"text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"),
    (b"accept-language", b"en-GB,en;q=0.9"),
    (b"accept-encoding", b"gzip, deflate, br"),
    (b"cookie", b"session=0123456789abcdef; theme=dark"),
    (b"referer", b"https://portal.example.com/bench-gym/"),
    (b"connection", b"keep-alive"),
    (b"upgrade-insecure-requests", b"1"),
    (b"sec-fetch-dest", b"document"),
    (b"sec-fetch-mode", b"navigate"),
    (b"sec-fetch-site", b"same-origin"),
    (b"sec-fetch-user", b"?1"),
]


class StubForwarder(Forwarder):
    async def forward(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        backend: Backend,
        extra_headers: list[tuple[bytes, bytes]],
        view: ClientView,
    ) -> Outcome:
        return _ANSWERED


async def _receive() -> Message:
    return {"type": "http.request", "body": b"", "more_body": False}


async def _send(message: Message) -> None:
    pass


def _scope(headers: list[tuple[bytes, bytes]]) -> Scope:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "server": ("127.0.0.1", 8080),
        "client": ("127.0.0.1", 50000),
        "scheme": "http",
        "method": "GET",
        "root_path": "",
        "path": PATH,
        "raw_path": PATH.encode(),
        "query_string": b"",
        "headers": [(b"host", HOST.encode()), *headers],
    }


async def _app(skip: bool) -> EdgeApp:
    settings = config.from_mapping(
        {
            "store": {"url": "memory://"},
            "legacy": {
                "hosts": ["parents.example.com"],
                "backend": "http://127.0.0.1:9",
                "public_url": "https://parents.example.com",
            },
            "new": {
                "hosts": [HOST],
                "backend": "http://127.0.0.1:9",
                "public_url": f"https://{HOST}",
            },
        }
    )
    app = EdgeApp(settings)
    app.router.forwarder = StubForwarder(settings.upstream, settings.server.trusted_proxies)
    if skip:
        skip_routing(app.router)
    await Moves(app.store).set_mode(TENANT, Mode.ACTIVE, actor="bench")
    await app.cache.load(TENANT)
    return app


async def _round(app: EdgeApp, scope: Scope, requests: int) -> float:
    router = app.router
    started = perf_counter()
    for _ in range(requests):
        await router(dict(scope), _receive, _send)  # uvicorn gives every request its own scope
    return (perf_counter() - started) / requests * 1e6


async def measure(requests: int, rounds: int, browser: bool) -> dict[str, float]:
    """Best µs per request of each variant, and their difference."""
    apps = {"edge": await _app(skip=False), "edge forward-only": await _app(skip=True)}
    scope = _scope(_BROWSER if browser else [])
    gc.collect()
    gc.freeze()  # as EdgeApp does at startup
    best = dict.fromkeys(apps, float("inf"))
    for _ in range(rounds):
        for name, app in apps.items():
            best[name] = min(best[name], await _round(app, scope, requests))
    return {**best, "routing": best["edge"] - best["edge forward-only"]}


def main() -> None:
    arguments = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    arguments.add_argument("--requests", type=int, default=100_000, help="per round")
    arguments.add_argument("--rounds", type=int, default=7)
    arguments.add_argument(
        "--browser", action="store_true", help="12 headers besides Host, as a browser sends"
    )
    options = arguments.parse_args()
    costs = uvloop.run(measure(options.requests, options.rounds, options.browser))
    sent = "a browser's 13 headers" if options.browser else "Host alone"
    print(
        f"in one process, forwarder stubbed, {sent}: best of {options.rounds} round(s) "
        f"of {options.requests:,} requests"
    )
    for name, micros in costs.items():
        print(f"  {name:<18} {micros:6.2f} µs/request")


if __name__ == "__main__":
    main()
