"""/healthz says the process is alive; /readyz says it can route: the store was reached once."""

from __future__ import annotations

from tests.support.redis import RedisServer
from tests.support.settings import NEW_HOST
from tests.support.stack import stack
from tests.support.waiting import eventually


def test_not_ready_until_the_store_is_first_reached(own_redis: RedisServer, prefix: str) -> None:
    own_redis.stop()
    with stack(own_redis.url, prefix) as edge, edge.admin() as admin:
        assert admin.get("/healthz").json() == {"status": "ok"}
        not_ready = admin.get("/readyz")
        assert not_ready.status_code == 503
        assert "not been reached" in not_ready.json()["error"]
        with edge.client() as client:
            assert client.get("/acme-gym/", headers={"Host": NEW_HOST}).status_code == 503
        own_redis.start()
        eventually(lambda: admin.get("/readyz").status_code == 200, within=15)
        assert admin.get("/readyz").json() == {"status": "ready"}


def test_a_later_outage_keeps_it_ready_serving_the_last_known_modes(
    own_redis: RedisServer, prefix: str
) -> None:
    own_redis.cli("SET", f"{prefix}mode:acme-gym", "active")
    with stack(own_redis.url, prefix) as edge, edge.admin() as admin, edge.client() as client:
        assert client.get("/acme-gym/", headers={"Host": NEW_HOST}).status_code == 200
        own_redis.stop()
        # Taking the instance out of the load balancer would fail the tenants it still knows.
        assert admin.get("/readyz").status_code == 200
        assert admin.get("/healthz").status_code == 200
        assert client.get("/acme-gym/", headers={"Host": NEW_HOST}).status_code == 200
