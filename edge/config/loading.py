"""Loading: the file named by argument or EDGE_CONFIG, read as TOML, the environment applied,
validated; every problem found, named by its key or variable."""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from edge.config.env import ENV_CONFIG, EnvOverrides
from edge.config.schema import KeyedError, Settings

DEMO_CONFIG = Path(__file__).parent.parent / "demo" / "demo.toml"  # `edge demo`'s, and only its
NO_CONFIG = (
    "no config file given: pass --config PATH or set EDGE_CONFIG=PATH "
    "(config/edge.toml is a commented example), or run `edge demo` to try edge on its "
    "built-in demo config"
)


class ConfigError(ValueError):
    """A config that cannot be used: every problem found, each naming its key or variable."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def config_path(path: str | os.PathLike[str] | None, env: Mapping[str, str]) -> Path:
    """The config file given, by argument or EDGE_CONFIG; ConfigError when neither is."""
    given = path or env.get(ENV_CONFIG)
    if not given:
        raise ConfigError([NO_CONFIG])
    return Path(given)


def load(
    path: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None
) -> Settings:
    """Read, merge and validate; raise ConfigError listing every problem."""
    env = os.environ if env is None else env
    source = config_path(path, env)
    try:
        raw = tomllib.loads(source.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError([f"{source}: no such config file"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([f"{source}: cannot be read: {exc}"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{source}: not valid TOML: {exc}"]) from None
    overrides = EnvOverrides.read(env)
    return from_mapping(overrides.applied_to(raw), source=str(source), overrides=overrides)


def from_mapping(
    raw: Mapping[str, Any], source: str = "config", overrides: EnvOverrides | None = None
) -> Settings:
    """Validate; every problem is named by its environment variable or by ``source: key``."""
    overrides = overrides or EnvOverrides()
    try:
        settings = Settings.model_validate(raw)
    except ValidationError as exc:
        problems = [overrides.name(key, problem, source) for key, problem in _problems(exc)]
        raise ConfigError(overrides.problems + problems) from None
    if overrides.problems:
        raise ConfigError(overrides.problems)
    return settings


def _problems(exc: ValidationError) -> list[tuple[tuple[str, ...], str]]:
    """Each problem pydantic found: the key's path, and what is wrong."""
    found: list[tuple[tuple[str, ...], str]] = []
    for error in exc.errors(include_url=False):
        context_error = (error.get("ctx") or {}).get("error")
        if isinstance(context_error, KeyedError):
            found.extend(
                (tuple(key.split(".")), problem) for key, problem in context_error.problems
            )
            continue
        path = tuple(str(part) for part in error["loc"] if not str(part).startswith("function-"))
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = "unknown key"
        elif error["type"] == "missing":
            message = "is required"
        found.append((path, message))
    return found
