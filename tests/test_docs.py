"""docs/configuration.md lists every key edge accepts, with its default, so it cannot drift
from the schema in edge/config.py."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, TypeAdapter, ValidationError
from pydantic.fields import FieldInfo

from edge.config import Settings

CONFIGURATION = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"


def schema() -> dict[tuple[str, str], FieldInfo]:
    """Every (section, key) of the config and its field."""
    keys = {}
    for section, section_field in Settings.model_fields.items():
        model = section_field.annotation
        assert isinstance(model, type) and issubclass(model, BaseModel)
        for key, field in model.model_fields.items():
            keys[(section, field.alias or key)] = field
    return keys


def documented(text: str) -> dict[tuple[str, str], str]:
    """(section, key) → its default cell, from the tables under each ``### `[section]` `` heading
    (one heading may name several sections, one row several keys)."""
    rows: dict[tuple[str, str], str] = {}
    sections: list[str] = []
    default_column: int | None = None
    for line in text.splitlines():
        if line.startswith("#"):
            sections, default_column = re.findall(r"`\[(\w+)\]`", line), None
            continue
        if not (sections and line.startswith("|")):
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if cells[0] == "key":
            default_column = cells.index("default")
        elif default_column is not None and not set(cells[0]) <= {"-", " "}:
            for key in re.findall(r"`(\w+)`", cells[0]):
                for section in sections:
                    rows[(section, key)] = cells[default_column]
    return rows


def default_problem(field: FieldInfo, cell: str) -> str | None:
    """What is wrong with a documented default: "required", "none…" (no default value), or a
    TOML value in backticks first, read as the key reads it."""
    if cell == "required" or field.is_required():
        return None if cell == "required" and field.is_required() else f"documented {cell!r}"
    if cell.startswith("none"):
        return None if field.default is None else f"documented none, is {field.default!r}"
    literal = re.match(r"`([^`]+)`", cell)
    if literal is None:
        return f"documented {cell!r}: neither a `value`, none nor required"
    try:
        value: Any = tomllib.loads(f"v = {literal[1]}")["v"]
        read = TypeAdapter(Annotated[field.annotation, field]).validate_python(value)
    except (tomllib.TOMLDecodeError, ValidationError):
        return f"documented {literal[1]}: not a value of this key"
    return None if read == field.default else f"documented {literal[1]}, is {field.default!r}"


def problems(text: str) -> list[str]:
    keys, rows = schema(), documented(text)
    found = [f"[{s}] {k}: not documented" for s, k in sorted(keys.keys() - rows.keys())]
    found += [f"[{s}] {k}: documented, not a key" for s, k in sorted(rows.keys() - keys.keys())]
    for where in sorted(keys.keys() & rows.keys()):
        problem = default_problem(keys[where], rows[where])
        if problem is not None:
            found.append(f"[{where[0]}] {where[1]}: {problem}")
    return found


def test_every_config_key_is_documented_with_its_default() -> None:
    text = CONFIGURATION.read_text(encoding="utf-8")
    assert len(documented(text)) == len(schema())  # the tables were read at all
    assert problems(text) == []


def test_a_key_missing_or_wrong_in_the_docs_is_found() -> None:
    text = CONFIGURATION.read_text(encoding="utf-8")
    row = next(line for line in text.splitlines() if line.startswith("| `send_timeout` |"))
    assert problems(text.replace(row + "\n", "")) == ["[server] send_timeout: not documented"]
    wrong = row.replace("`60`", '`"30s"`')
    assert problems(text.replace(row, wrong)) == [
        '[server] send_timeout: documented "30s", is 60.0'
    ]
    stray = "| `sendtimeout` | duration | `60` | a typo |"
    assert problems(text.replace(row, f"{row}\n{stray}")) == [
        "[server] sendtimeout: documented, not a key"
    ]
