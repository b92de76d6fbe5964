"""Config: a bad file is refused with every problem, each naming its key; the environment
overrides the file, each variable typed by the key it sets and named in its errors."""

from __future__ import annotations

import re
import ssl
import tomllib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from edge import config
from edge.config import schema
from tests.support.certificates import make_certificates, openssl

GOOD = """
[server]
port = 8080
[store]
url = "redis://127.0.0.1:6379/0"
[legacy]
hosts = ["parents.example.com"]
backend = "http://127.0.0.1:9001"
public_url = "https://parents.example.com"
[new]
hosts = ["portal.example.com"]
backend = "http://127.0.0.1:9002"
public_url = "https://portal.example.com"
[policy]
legacy_sunset = "2027-06-30T22:00:00Z"
"""


STORE_URL = 'url = "redis://127.0.0.1:6379/0"'


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "edge.toml"
    path.write_text(text)
    return path


def test_a_good_file_loads(tmp_path: Path) -> None:
    settings = config.load(write(tmp_path, GOOD), env={})
    assert settings.server.port == 8080
    # Every client deadline is there without being asked for.
    server = settings.server
    assert (
        server.header_timeout,
        server.body_idle_timeout,
        server.keepalive_timeout,
        server.send_timeout,
    ) == (10.0, 30.0, 75.0, 60.0)
    assert server.max_connections == 10_000
    assert settings.store.prefix == "edge:"
    assert settings.policy.legacy_sunset is not None
    assert settings.policy.legacy_sunset.isoformat() == "2027-06-30T22:00:00+00:00"


def test_client_deadlines_take_durations(tmp_path: Path) -> None:
    text = GOOD.replace("port = 8080", 'port = 8080\nheader_timeout = "15s"', 1)
    env = {"EDGE_SERVER__BODY_IDLE_TIMEOUT": "1m", "EDGE_SERVER__MAX_CONNECTIONS": "20000"}
    server = config.load(write(tmp_path, text), env=env).server
    assert (server.header_timeout, server.body_idle_timeout, server.max_connections) == (
        15.0,
        60.0,
        20000,
    )


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("port = 8080", "port = 8080\nbogus = 1", "server.bogus: unknown key"),
        ("port = 8080", 'port = "eighty"', "server.port: Input should be a valid integer"),
        ("port = 8080", "port = 70000", "server.port: Input should be less than or equal to 65535"),
        (
            "port = 8080",
            "port = 8080\nheader_timeout = 0",
            "server.header_timeout: Input should be greater than 0",
        ),
        (
            "port = 8080",
            'port = 8080\nbody_idle_timeout = "soon"',
            "server.body_idle_timeout: 'soon' is not a duration",
        ),
        (
            "port = 8080",
            "port = 8080\nkeepalive_timeout = 7200",
            "server.keepalive_timeout: Input should be less than or equal to 3600",
        ),
        (
            "port = 8080",
            "port = 8080\nmax_connections = 0",
            "server.max_connections: Input should be greater than or equal to 1",
        ),
        (
            'url = "redis://127.0.0.1:6379/0"',
            'url = "http://x"',
            "store.url: unsupported scheme 'http'",
        ),
        (
            '"2027-06-30T22:00:00Z"',
            '"next summer"',
            "policy.legacy_sunset: 'next summer' is not an ISO-8601 instant",
        ),
        (
            '"2027-06-30T22:00:00Z"',
            '"2027-06-30T22:00:00"',
            "policy.legacy_sunset: must be an instant with a UTC offset",
        ),
        (
            'hosts = ["portal.example.com"]',
            'hosts = ["parents.example.com"]',
            "new.hosts: 'parents.example.com' is listed on both fronts",
        ),
        (
            'backend = "http://127.0.0.1:9001"',
            'backend = "ftp://x"',
            "legacy.backend: must be an http:// or https:// URL",
        ),
        ('backend = "http://127.0.0.1:9001"', "", "legacy.backend: is required"),
        (
            'hosts = ["portal.example.com"]',
            'hosts = ["bad host!"]',
            "new.hosts: 'bad host!' is not a host name",
        ),
        (
            "[policy]",
            "[policy]\nredirect_status = 303",
            "policy.redirect_status: Input should be 301 or 302",
        ),
        (
            "[policy]",
            '[policy]\nsetup_allow = [{method = "post", path = "/x"}]',
            "policy.setup_allow.0.method",
        ),
        (
            "[policy]",
            '[policy]\npath_rules = [{from = "classes", to = "/x"}]',
            "policy.path_rules.0.from: must be an absolute path",
        ),
        (
            "[server]",
            '[server]\ntrusted_proxies = ["10.0.0.0/33"]',
            "server.trusted_proxies: '10.0.0.0/33' is not an IP address or CIDR",
        ),
        (
            'port = 8080\n[store]\nurl = "redis://127.0.0.1:6379/0"',
            'port = 8080\nworkers = 2\n[store]\nurl = "memory://"',
            "server.workers: memory:// is a single-process store",
        ),
        ("[policy]", "[admin]\nport = 8080\n[policy]", "admin.port: must differ from server.port"),
        (
            "[policy]",
            '[admin]\ntoken = "short"\n[policy]',
            "admin.token: must be at least 16 characters",
        ),
        ("[policy]", "[nonsense]\n[policy]", "nonsense: unknown key"),
        (
            STORE_URL,
            'url = "redis+sentinel://127.0.0.1:26379"',
            "store.url: must look like redis+sentinel://",
        ),
        (
            STORE_URL,
            'url = "redis+sentinel://s1:26379,s2/mymaster"',
            "store.url: 's2' is not host:port",
        ),
        (STORE_URL, 'url = "redis+cluster://"', "store.url: must look like redis+cluster://"),
        (
            STORE_URL,
            'url = "redis+cluster://n1:7000/2"',
            "store.url: a Redis Cluster has only database 0",
        ),
        (
            STORE_URL,
            'url = "redis+cluster://n1:7000?db=1"',
            "store.url: unknown option 'db' in the url",
        ),
        (STORE_URL, 'url = "redis+shard://n1:7000"', "store.url: unsupported scheme"),
        (
            STORE_URL,
            f'{STORE_URL}\nssl_ca_certs = "{__file__}"',
            "store.ssl_ca_certs: needs a TLS store url",
        ),
        (
            STORE_URL,
            'url = "rediss://r:6380/0"\nssl_ca_certs = "/no/such/ca.pem"',
            "store.ssl_ca_certs: Path does not point to a file",
        ),
        (
            STORE_URL,
            f'url = "rediss://r:6380/0"\nssl_keyfile = "{__file__}"',
            "store.ssl_keyfile: needs store.ssl_certfile",
        ),
        (STORE_URL, 'url = "memory://"\nwait_replicas = 1', "store.wait_replicas: needs a Redis"),
    ],
)
def test_a_bad_file_is_refused_naming_the_key(
    tmp_path: Path, old: str, new: str, message: str
) -> None:
    assert old in GOOD
    path = write(tmp_path, GOOD.replace(old, new, 1))
    with pytest.raises(config.ConfigError) as caught:
        config.load(path, env={})
    text = str(caught.value)
    assert "\n" not in text
    assert f"{path}: {message}" in text


@pytest.mark.parametrize(
    ("url", "nodes"),
    [
        ("redis://r:6379/0", None),
        ("unix:///run/redis.sock", None),
        (
            "redis+sentinel://s1:26379,[::1]:26380/mymaster",
            config.RedisNodes(
                "sentinel", False, (("s1", 26379), ("::1", 26380)), "mymaster", 0, None, None, None
            ),
        ),
        (
            "rediss+sentinel://:p%40ss@s1:26379/mymaster/2?sentinel_password=sp",
            config.RedisNodes(
                "sentinel", True, (("s1", 26379),), "mymaster", 2, None, "p@ss", "sp"
            ),
        ),
        (
            "redis+cluster://ana:pw@n1:7000,n2:7001",
            config.RedisNodes(
                "cluster", False, (("n1", 7000), ("n2", 7001)), "", 0, "ana", "pw", None
            ),
        ),
        (
            "rediss+cluster://n1:7000/0",
            config.RedisNodes("cluster", True, (("n1", 7000),), "", 0, None, None, None),
        ),
    ],
)
def test_sentinel_and_cluster_urls_are_read(url: str, nodes: config.RedisNodes | None) -> None:
    assert config.redis_nodes(url) == nodes
    assert config.StoreSettings(url=url).tls == url.startswith("rediss")


def test_not_toml_and_missing_files_are_refused(tmp_path: Path) -> None:
    with pytest.raises(config.ConfigError, match="not valid TOML"):
        config.load(write(tmp_path, "[server\nport=1"), env={})
    with pytest.raises(config.ConfigError, match="no such config file"):
        config.load(tmp_path / "missing.toml", env={})


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    env = {
        "EDGE_SERVER__PORT": "9999",
        "EDGE_STORE__URL": "redis://redis.internal:6380/2",
        "EDGE_LEGACY__HOSTS": '["a.example.com", "b.example.com"]',
        "EDGE_POLICY__LEGACY_SUNSET": "2028-01-01T00:00:00+01:00",
        "EDGE_ADMIN_TOKEN": "a-very-long-admin-token",
        "EDGE_UNRELATED": "ignored",
    }
    settings = config.load(write(tmp_path, GOOD), env=env)
    assert settings.server.port == 9999
    assert settings.store.url == "redis://redis.internal:6380/2"
    assert settings.legacy.hosts == ("a.example.com", "b.example.com")
    assert settings.policy.legacy_sunset is not None
    assert settings.policy.legacy_sunset.isoformat() == "2028-01-01T00:00:00+01:00"
    assert settings.admin.token == "a-very-long-admin-token"


def _section(settings: config.Settings, dotted: str) -> Any:
    section, key = dotted.split(".")
    return getattr(getattr(settings, section), key)


@pytest.mark.parametrize(
    ("variable", "value", "key", "expected"),
    [
        # A string key takes the value as it is, however it looks.
        ("EDGE_ADMIN__TOKEN", "1234567890123456", "admin.token", "1234567890123456"),
        ("EDGE_ADMIN_TOKEN", "1234567890123456", "admin.token", "1234567890123456"),
        ("EDGE_ADMIN__TOKEN", "true-but-a-token!", "admin.token", "true-but-a-token!"),
        ("EDGE_ADMIN__TOKEN", '"quoted token 0123"', "admin.token", '"quoted token 0123"'),
        ("EDGE_STORE__PREFIX", "2024", "store.prefix", "2024"),
        ("EDGE_SERVER__HOST", "::", "server.host", "::"),
        # Numbers, switches, instants and durations are converted.
        ("EDGE_SERVER__PORT", "9999", "server.port", 9999),
        ("EDGE_SERVER__ACCESS_LOG", "false", "server.access_log", False),
        ("EDGE_SERVER__ACCESS_LOG", "0", "server.access_log", False),
        ("EDGE_LEGACY__REWRITE_LOCATION", "yes", "legacy.rewrite_location", True),
        ("EDGE_STORE__SSL_CHECK_HOSTNAME", "off", "store.ssl_check_hostname", False),
        ("EDGE_STORE__TIMEOUT", "0.25", "store.timeout", 0.25),
        ("EDGE_POLICY__REDIRECT_STATUS", "301", "policy.redirect_status", 301),
        ("EDGE_POLICY__PREVIEW_TTL", "12h", "policy.preview_ttl", 43200.0),
        ("EDGE_SERVER__LOG_LEVEL", "debug", "server.log_level", "debug"),
        (
            "EDGE_POLICY__LEGACY_SUNSET",
            "2028-01-01T00:00:00Z",
            "policy.legacy_sunset",
            datetime(2028, 1, 1, tzinfo=UTC),
        ),
        # An empty value unsets an optional key.
        ("EDGE_POLICY__LEGACY_SUNSET", "", "policy.legacy_sunset", None),
        ("EDGE_LEGACY__COOKIE_DOMAIN", "", "legacy.cookie_domain", None),
        # A list: comma-separated or a JSON array; a list of tables: a JSON array.
        ("EDGE_NEW__HOSTS", "a.example.com,b.example.com", "new.hosts", ("a.example.com", "b.example.com")),  # noqa: E501
        ("EDGE_NEW__HOSTS", " a.example.com , B.example.com ,", "new.hosts", ("a.example.com", "b.example.com")),  # noqa: E501
        ("EDGE_NEW__HOSTS", '["a.example.com"]', "new.hosts", ("a.example.com",)),
        ("EDGE_SERVER__TRUSTED_PROXIES", "10.0.0.0/8,::1", "server.trusted_proxies", ("10.0.0.0/8", "::1")),  # noqa: E501
        ("EDGE_SERVER__TRUSTED_PROXIES", "", "server.trusted_proxies", ()),
        (
            "EDGE_POLICY__SETUP_ALLOW",
            '[{"method": "POST", "path": "/{tenant}/login"}]',
            "policy.setup_allow",
            (config.AllowRule(method="POST", path="/{tenant}/login"),),
        ),
        (
            "EDGE_POLICY__PATH_RULES",
            '[{"from": "/{tenant}/a", "to": "/{tenant}/b"}]',
            "policy.path_rules",
            (config.PathRule.model_validate({"from": "/{tenant}/a", "to": "/{tenant}/b"}),),
        ),
    ],
)  # fmt: skip
def test_each_variable_is_read_as_the_type_of_its_key(
    tmp_path: Path, variable: str, value: str, key: str, expected: object
) -> None:
    settings = config.load(write(tmp_path, GOOD), env={variable: value})
    assert _section(settings, key) == expected


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"EDGE_SERVER__WORKERS": "0"}, "EDGE_SERVER__WORKERS: Input should be greater than or equal to 1"),  # noqa: E501
        ({"EDGE_SERVER__PORT": "eighty"}, "EDGE_SERVER__PORT: Input should be a valid integer"),
        ({"EDGE_SERVER__ACCESS_LOG": "maybe"}, "EDGE_SERVER__ACCESS_LOG: Input should be a valid boolean"),  # noqa: E501
        ({"EDGE_SERVER__PROT": "8080"}, "EDGE_SERVER__PROT: sets no config key ([server] prot)"),
        ({"EDGE_SERVRE__PORT": "8080"}, "EDGE_SERVRE__PORT: sets no config key ([servre] port)"),
        ({"EDGE_SERVER__": "1"}, "EDGE_SERVER__: sets no config key ([server] )"),
        ({"EDGE_NEW__HOSTS": '["a.example.com"'}, "EDGE_NEW__HOSTS: not a JSON array"),
        ({"EDGE_NEW__HOSTS": "bad host!"}, "EDGE_NEW__HOSTS: 'bad host!' is not a host name"),
        ({"EDGE_NEW__HOSTS": "parents.example.com"}, "EDGE_NEW__HOSTS: 'parents.example.com' is listed on both fronts"),  # noqa: E501
        ({"EDGE_POLICY__SETUP_ALLOW": "POST /login"}, "EDGE_POLICY__SETUP_ALLOW: must be a JSON array"),  # noqa: E501
        (
            {"EDGE_POLICY__SETUP_ALLOW": '[{"method": "post", "path": "/x"}]'},
            "EDGE_POLICY__SETUP_ALLOW: 0.method: String should match pattern",
        ),
        ({"EDGE_POLICY__REDIRECT_STATUS": "303"}, "EDGE_POLICY__REDIRECT_STATUS: Input should be 301 or 302"),  # noqa: E501
        ({"EDGE_POLICY__LEGACY_SUNSET": "2028-01-01"}, "EDGE_POLICY__LEGACY_SUNSET: must be an instant with a UTC offset"),  # noqa: E501
        ({"EDGE_ADMIN__TOKEN": "short"}, "EDGE_ADMIN__TOKEN: must be at least 16 characters"),
        ({"EDGE_ADMIN_TOKEN": "short"}, "EDGE_ADMIN_TOKEN: must be at least 16 characters"),
        (
            {"EDGE_ADMIN_TOKEN": "0123456789abcdef", "EDGE_ADMIN__TOKEN": "fedcba9876543210"},
            "EDGE_ADMIN_TOKEN: EDGE_ADMIN__TOKEN is set too, to another value: set one",
        ),
        ({"EDGE_ADMIN__PORT": "8080"}, "EDGE_ADMIN__PORT: must differ from server.port"),
        ({"EDGE_STORE__SSL_CA_CERTS": __file__}, "EDGE_STORE__SSL_CA_CERTS: needs a TLS store url"),
        (
            {"EDGE_STORE__URL": "rediss://r:6380/0", "EDGE_STORE__SSL_CA_CERTS": "/no/such/ca.pem"},
            "EDGE_STORE__SSL_CA_CERTS: Path does not point to a file",
        ),
    ],
)  # fmt: skip
def test_a_bad_variable_is_named_not_the_file(
    tmp_path: Path, env: dict[str, str], message: str
) -> None:
    path = write(tmp_path, GOOD)
    with pytest.raises(config.ConfigError) as caught:
        config.load(path, env=env)
    assert caught.value.problems == [caught.value.problems[0]]
    (problem,) = caught.value.problems
    assert problem.startswith(message)
    assert str(path) not in problem


def test_the_same_token_in_both_variables_is_one_token(tmp_path: Path) -> None:
    token = "0123456789abcdef"
    env = {"EDGE_ADMIN_TOKEN": token, "EDGE_ADMIN__TOKEN": token}
    assert config.load(write(tmp_path, GOOD), env=env).admin.token == token


def test_a_bad_config_lists_every_problem_each_by_its_key_or_variable(tmp_path: Path) -> None:
    bad = (
        GOOD.replace("port = 8080", "port = 70000\nbogus = 1")
        .replace('backend = "http://127.0.0.1:9002"', 'backend = "ftp://x"')
        .replace('"2027-06-30T22:00:00Z"', '"next summer"')
    )
    path = write(tmp_path, bad + '[admin]\ntoken = "short"\n')
    env = {"EDGE_STORE__TIMEOUT": "soon", "EDGE_SERVER__PROT": "1"}
    with pytest.raises(config.ConfigError) as caught:
        config.load(path, env=env)
    problems = caught.value.problems
    expected = [
        "EDGE_SERVER__PROT: sets no config key",
        f"{path}: server.port: Input should be less than or equal to 65535",
        f"{path}: server.bogus: unknown key",
        "EDGE_STORE__TIMEOUT: 'soon' is not a duration",
        f"{path}: new.backend: must be an http:// or https:// URL",
        f"{path}: policy.legacy_sunset: 'next summer' is not an ISO-8601 instant",
        f"{path}: admin.token: must be at least 16 characters",
    ]
    assert len(problems) == len(expected), problems
    for problem, start in zip(problems, expected, strict=True):
        assert problem.startswith(start), problems
    assert str(caught.value).splitlines() == problems


def test_problems_found_together_by_the_consistency_check_are_all_listed(tmp_path: Path) -> None:
    bad = GOOD.replace('hosts = ["portal.example.com"]', 'hosts = ["parents.example.com"]')
    path = write(tmp_path, bad + "[admin]\nport = 8080\n")
    with pytest.raises(config.ConfigError) as caught:
        config.load(path, env={})
    assert caught.value.problems == [
        f"{path}: new.hosts: 'parents.example.com' is listed on both fronts",
        f"{path}: admin.port: must differ from server.port",
    ]


def test_problems_across_sections_are_listed_beside_a_bad_key_elsewhere(tmp_path: Path) -> None:
    bad = GOOD.replace('hosts = ["portal.example.com"]', 'hosts = ["parents.example.com"]')
    bad = bad.replace('"2027-06-30T22:00:00Z"', '"next summer"')
    path = write(tmp_path, bad)
    with pytest.raises(config.ConfigError) as caught:
        config.load(path, env={})
    assert caught.value.problems == [
        f"{path}: policy.legacy_sunset: 'next summer' is not an ISO-8601 instant",
        f"{path}: new.hosts: 'parents.example.com' is listed on both fronts",
    ]


def test_a_check_across_sections_is_not_made_on_a_section_that_is_invalid(tmp_path: Path) -> None:
    # Positive control: memory:// with two workers is a problem of its own...
    text = GOOD.replace(STORE_URL, 'url = "memory://"').replace("port = 8080", "workers = 2")
    with pytest.raises(config.ConfigError) as caught:
        config.load(write(tmp_path, text + '[admin]\ntoken = "short"\n'), env={})
    assert [p.split(": ")[1] for p in caught.value.problems] == ["admin.token", "server.workers"]
    # ...but an invalid store URL is not judged as the default memory:// it would fall back to.
    text = GOOD.replace(STORE_URL, 'url = "nope://"').replace("port = 8080", "workers = 2")
    with pytest.raises(config.ConfigError) as caught:
        config.load(write(tmp_path, text), env={})
    assert [p.split(": ")[1] for p in caught.value.problems] == ["store.url"]


def _duration_keys() -> list[tuple[str, str]]:
    keys = []
    for section, field in config.Settings.model_fields.items():
        assert isinstance(field.annotation, type)
        for key, inner in field.annotation.model_fields.items():
            if any(getattr(m, "func", None) is schema._seconds for m in inner.metadata):
                keys.append((section, key))
    return keys


def test_every_key_in_seconds_takes_a_unit() -> None:
    keys = _duration_keys()
    assert ("upstream", "read_timeout") in keys and ("server", "header_timeout") in keys
    assert ("upstream", "pool_size") not in keys  # the search can tell a count from a time
    raw = tomllib.loads(GOOD)
    for section, key in keys:
        raw.setdefault(section, {})[key] = "1m"
    settings = config.from_mapping(raw)
    assert all(getattr(getattr(settings, s), k) == 60.0 for s, k in keys)


def test_the_config_path_comes_from_edge_config(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD)
    assert config.load(env={"EDGE_CONFIG": str(path)}).server.port == 8080


def test_without_a_path_or_edge_config_there_is_no_config(tmp_path: Path) -> None:
    with pytest.raises(config.ConfigError) as caught:
        config.load(env={"EDGE_STORE__URL": "memory://"})
    (problem,) = caught.value.problems
    assert "--config PATH" in problem and "EDGE_CONFIG" in problem and "edge demo" in problem


@pytest.mark.parametrize("name", ["config/edge.toml", "config/demo.toml"])
def test_the_shipped_configs_are_valid(name: str) -> None:
    root = Path(__file__).parent.parent
    config.load(root / name, env={})


def test_the_demo_config_is_the_one_edge_demo_runs() -> None:
    root = Path(__file__).parent.parent
    assert (root / "config/demo.toml").read_text() == config.DEMO_CONFIG.read_text()
    demo = config.load(config.DEMO_CONFIG, env={})
    assert demo.store.url == "memory://"
    assert demo.policy.legacy_sunset is not None  # the dashboard counts down to it


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://ops:s3cret@r:6379/0", "redis://ops:***@r:6379/0"),
        ("rediss://:s3cret@r:6380", "rediss://:***@r:6380"),
        ("redis://r:6379/0", "redis://r:6379/0"),
        ("unix:///run/redis.sock", "unix:///run/redis.sock"),
        ("memory://", "memory://"),
        (
            "redis+sentinel://:p%40ss@s1:26379,s2:26380/m/2?sentinel_password=sp",
            "redis+sentinel://:***@s1:26379,s2:26380/m/2?sentinel_password=***",
        ),
        ("redis+cluster://ana:a:b@c@n1:7000", "redis+cluster://ana:***@n1:7000"),
    ],
)
def test_passwords_are_redacted_from_store_urls(url: str, shown: str) -> None:
    assert config.redacted_url(url) == shown


# --- the portals: TLS, credentials, the forwarding pool -----------------------------------------

LEGACY_BACKEND = 'backend = "http://127.0.0.1:9001"'


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_certificates(tmp_path_factory.mktemp("portal-certs"))


def portal_tls(certs: Path, **files: str) -> str:
    """[legacy]'s backend on https://, with TLS files from ``certs`` under the keys given."""
    lines = [LEGACY_BACKEND.replace("http:", "https:")]
    lines += [f'{key} = "{certs / name}"' for key, name in files.items()]
    return "\n".join(lines)


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({"ssl_keyfile": "client.key"}, "legacy.ssl_keyfile: needs legacy.ssl_certfile"),
        ({"ssl_ca_certs": "absent.pem"}, "legacy.ssl_ca_certs: Path does not point to a file"),
        ({"ssl_ca_certs": "san.ext"}, "legacy.ssl_ca_certs: holds no usable CA certificate"),
        (
            {"ssl_certfile": "client.crt", "ssl_keyfile": "server.key"},
            "legacy.ssl_certfile: must be a PEM certificate, matching ssl_keyfile",
        ),
        (
            {"ssl_certfile": "client.crt"},
            "legacy.ssl_certfile: must be a PEM certificate followed by its key",
        ),
    ],
)
def test_a_portals_tls_files_are_checked_at_load(
    tmp_path: Path, certs: Path, files: dict[str, str], message: str
) -> None:
    path = write(tmp_path, GOOD.replace(LEGACY_BACKEND, portal_tls(certs, **files)))
    with pytest.raises(config.ConfigError, match=re.escape(f"{path}: {message}")):
        config.load(path, env={})


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        (
            LEGACY_BACKEND,
            'backend = "http://edge:s3cret@127.0.0.1:9001"',
            "legacy.backend: must not carry a user or password",
        ),
        (
            LEGACY_BACKEND,
            'backend = "https://edge@127.0.0.1:9001"',
            "legacy.backend: must not carry a user or password",
        ),
        (
            LEGACY_BACKEND,
            f'{LEGACY_BACKEND}\nssl_ca_certs = "{__file__}"',
            "legacy.ssl_ca_certs: needs an https:// legacy.backend",
        ),
        (
            "[policy]",
            "[upstream]\npool_size = 10\npool_size_per_host = 11\n[policy]",
            "upstream.pool_size_per_host: must not exceed upstream.pool_size",
        ),
        (
            "[policy]",
            "[upstream]\npool_size_per_host = 0\n[policy]",
            "upstream.pool_size_per_host: Input should be greater than or equal to 1",
        ),
        (
            "[policy]",
            "[upstream]\nmax_header_bytes = 100\n[policy]",
            "upstream.max_header_bytes: Input should be greater than or equal to 1024",
        ),
    ],
)
def test_a_bad_portal_setting_is_refused_naming_the_key(
    tmp_path: Path, old: str, new: str, message: str
) -> None:
    path = write(tmp_path, GOOD.replace(old, new, 1))
    with pytest.raises(config.ConfigError, match=re.escape(f"{path}: {message}")):
        config.load(path, env={})


def test_a_portals_tls_settings_load(tmp_path: Path, certs: Path) -> None:
    files = {"ssl_ca_certs": "ca.crt", "ssl_certfile": "client.crt", "ssl_keyfile": "client.key"}
    text = GOOD.replace(LEGACY_BACKEND, portal_tls(certs, **files) + "\nssl_check_hostname = false")
    settings = config.load(write(tmp_path, text), env={})
    context = settings.legacy.ssl_context()
    assert context is not None and not context.check_hostname
    assert context.verify_mode == ssl.CERT_REQUIRED  # the chain is still checked
    assert settings.new.ssl_context() is None  # an http:// portal


def test_each_portal_holds_half_the_pool_by_default() -> None:
    assert config.UpstreamSettings(pool_size=512).places_per_portal == 256
    assert config.UpstreamSettings(pool_size=1).places_per_portal == 1
    assert config.UpstreamSettings(pool_size=8, pool_size_per_host=8).places_per_portal == 8


def test_a_client_key_behind_a_password_is_refused_not_asked_for(
    tmp_path: Path, certs: Path
) -> None:
    """edge runs unattended: a key that needs a password stops it at load, no prompt."""
    key = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-passout", "pass:x")
    openssl(
        "req",
        "-x509",
        *key,
        "-keyout",
        "locked.key",
        "-out",
        "locked.crt",
        "-subj",
        "/CN=x",
        cwd=certs,
    )
    files = {"ssl_certfile": "locked.crt", "ssl_keyfile": "locked.key"}
    path = write(tmp_path, GOOD.replace(LEGACY_BACKEND, portal_tls(certs, **files)))
    with pytest.raises(
        config.ConfigError, match=r"legacy\.ssl_certfile: must be a PEM certificate"
    ):
        config.load(path, env={})


@pytest.mark.parametrize(
    ("variable", "meant"),
    [
        ("EDGE_STORE_URL", "EDGE_STORE__URL"),
        ("EDGE_SERVER_ACCESS_LOG", "EDGE_SERVER__ACCESS_LOG"),
        ("edge_store__url", "EDGE_STORE__URL"),
        ("Edge_Upstream_Read_Timeout", "EDGE_UPSTREAM__READ_TIMEOUT"),
    ],
)
def test_a_variable_that_misspells_a_key_is_refused_not_ignored(
    tmp_path: Path, variable: str, meant: str
) -> None:
    """Ignored, ``EDGE_STORE_URL=memory://`` would leave edge on the file's store."""
    path = write(tmp_path, GOOD)
    env = {variable: "memory://", "EDGE_UNRELATED": "x", "EDGE_WIRE_EXAMPLES": "5"}
    with pytest.raises(config.ConfigError) as caught:
        config.load(path, env=env)
    assert caught.value.problems == [f"{variable}: is not read: to set this key, name it {meant}"]
    # The positive control: names that set no key stay the environment's own business, and
    # so do the links Kubernetes sets for a service named edge-admin.
    links = {"EDGE_ADMIN_PORT": "tcp://10.0.0.7:9090", "EDGE_ADMIN_SERVICE_HOST": "10.0.0.7"}
    assert config.load(path, env={"EDGE_UNRELATED": "x", "EDGE_WIRE_EXAMPLES": "5", **links})


@pytest.mark.parametrize("url", ["ftp://user:pw-SECRET@portal", "http://user:pw-SECRET@"])
def test_a_refused_backend_url_never_shows_its_password(tmp_path: Path, url: str) -> None:
    with pytest.raises(config.ConfigError) as caught:
        config.load(write(tmp_path, GOOD), env={"EDGE_LEGACY__BACKEND": url})
    [problem] = caught.value.problems
    assert problem.startswith("EDGE_LEGACY__BACKEND: must")
    assert "pw-SECRET" not in problem
