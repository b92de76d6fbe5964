"""The environment's part: ``EDGE_<SECTION>__<KEY>`` variables, each read as the type of the key
it sets, and problems named by the variable that caused them."""

from __future__ import annotations

import json
import types
from collections.abc import Mapping
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel

from edge.config.schema import Settings

ENV_PREFIX = "EDGE_"
ENV_CONFIG = "EDGE_CONFIG"
ENV_ADMIN_TOKEN = "EDGE_ADMIN_TOKEN"  # noqa: S105 (a variable name)


class EnvOverrides:
    """The ``EDGE_<SECTION>__<KEY>`` variables, each read as the type of the key it sets."""

    def __init__(self) -> None:
        self.values: dict[tuple[str, str], Any] = {}
        self.variables: dict[tuple[str, str], str] = {}  # (section, key) → variable name
        self.problems: list[str] = []  # variables that set no key, or cannot be read

    @classmethod
    def read(cls, env: Mapping[str, str]) -> EnvOverrides:
        overrides = cls()
        for name, value in sorted(env.items()):
            if name.startswith(ENV_PREFIX) and "__" in name:
                section, _, key = name[len(ENV_PREFIX) :].lower().partition("__")
                overrides.add(name, section, key, value)
            elif (meant := _misspelled(name)) and not _service_link(value):
                overrides.problems.append(f"{name}: is not read: to set this key, name it {meant}")
        token = env.get(ENV_ADMIN_TOKEN)
        if token is not None:
            if overrides.values.get(("admin", "token"), token) != token:
                variable = overrides.variables[("admin", "token")]
                overrides.problems.append(
                    f"{ENV_ADMIN_TOKEN}: {variable} is set too, to another value: set one"
                )
            else:
                overrides.add(ENV_ADMIN_TOKEN, "admin", "token", token)
        return overrides

    def add(self, variable: str, section: str, key: str, text: str) -> None:
        field = _section_field(section, key)
        if field is None:
            self.problems.append(f"{variable}: sets no config key ([{section}] {key})")
            return
        try:
            self.values[(section, key)] = _typed(field, text)
        except ValueError as exc:
            self.problems.append(f"{variable}: {exc}")
            return
        self.variables[(section, key)] = variable

    def applied_to(self, raw: Mapping[str, Any]) -> dict[str, Any]:
        merged: dict[str, Any] = {
            name: dict(section) if isinstance(section, Mapping) else section
            for name, section in raw.items()
        }
        for (section, key), value in self.values.items():
            target = merged.setdefault(section, {})
            if isinstance(target, dict):
                target[key] = value
        return merged

    def name(self, path: tuple[str, ...], problem: str, source: str) -> str:
        """A problem as ops read it: by its variable when one set the key, else by the key."""
        variable = self.variables.get((path[0], path[1])) if len(path) >= 2 else None
        if variable is None:
            return f"{source}: {'.'.join(path) or 'config'}: {problem}"
        within = ".".join(path[2:])
        return f"{variable}: {within + ': ' if within else ''}{problem}"


def _misspelled(name: str) -> str | None:
    """The variable ``name`` was meant to be, when it names a key but would not be read
    (one underscore after the section, a prefix not in capitals); else None."""
    if name in (ENV_CONFIG, ENV_ADMIN_TOKEN) or not name.upper().startswith(ENV_PREFIX):
        return None
    rest = name[len(ENV_PREFIX) :].lower()
    for section in Settings.model_fields:
        for separator in ("__", "_"):
            key = rest.removeprefix(section + separator)
            if key != rest and _section_field(section, key) is not None:
                return f"{ENV_PREFIX}{section.upper()}__{key.upper()}"
    return None


def _service_link(value: str) -> bool:
    """Kubernetes and Docker links set ``<SERVICE>_PORT=tcp://host:port`` for each service: a
    service named edge-admin gives EDGE_ADMIN_PORT, which is no one's misspelling."""
    return value.startswith(("tcp://", "udp://", "sctp://"))


def _section_field(section: str, key: str) -> Any:
    """The type of ``[section] key`` in the schema, or None when there is no such key."""
    field = Settings.model_fields.get(section)
    model = field.annotation if field is not None else None
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        return None
    key_field = model.model_fields.get(key)
    return key_field.annotation if key_field is not None else None


def _typed(annotation: Any, text: str) -> Any:
    """An environment value as the type of its key; pydantic validates it after."""
    members = get_args(annotation) if get_origin(annotation) in (Union, types.UnionType) else ()
    optional = type(None) in members
    if optional:
        (annotation,) = (member for member in members if member is not type(None))
        if not text.strip():
            return None
    origin = get_origin(annotation)
    if origin in (tuple, list):
        return _sequence(get_args(annotation)[0], text)
    if origin is Literal and all(isinstance(v, int) for v in get_args(annotation)):
        return int(text) if text.strip().isdigit() else text
    return text  # strings as they are; pydantic converts numbers, switches and instants


def _sequence(item: Any, text: str) -> Any:
    """A list: a JSON array, or (of strings) comma-separated values."""
    if text.lstrip().startswith("["):
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"not a JSON array: {exc}") from None
    if item is str:
        return [part.strip() for part in text.split(",") if part.strip()]
    raise ValueError("must be a JSON array, such as [{...}, {...}]")
