"""The README stays a user's document: short, and every link it and docs/ hold leads to a file
of this repository (none outside it, none missing)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# [text](target): the target up to a space, ")" or "#".
_LINK = re.compile(r"\]\(([^)\s#]*)(?:#[^)\s]*)?\)")


def relative_links(text: str) -> list[str]:
    return [
        target
        for target in _LINK.findall(text)
        if target and not re.match(r"[a-z][a-z0-9+.-]*:", target)  # http:, mailto: ...
    ]


def test_the_readme_is_at_most_400_lines() -> None:
    assert len((ROOT / "README.md").read_text().splitlines()) <= 400


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda path: path.name)
def test_every_link_leads_to_a_file_of_the_repository(document: Path) -> None:
    links = relative_links(document.read_text())
    for target in links:
        path = (document.parent / target).resolve()
        assert path.is_relative_to(ROOT), f"{document.name} links outside the repository: {target}"
        assert path.exists(), f"{document.name} links to a missing file: {target}"


@pytest.mark.parametrize(
    ("text", "links"),
    [
        ("[a](docs/a.md) and [b](b.md#part)", ["docs/a.md", "b.md"]),
        ("[spec](../shared/SPEC.md)", ["../shared/SPEC.md"]),  # found, so refused above
        ("[site](https://example.com/x) [mail](mailto:a@b)", []),
        ("[here](#the-matrix)", []),  # an anchor of the same page
    ],
)
def test_links_are_read_as_a_reader_follows_them(text: str, links: list[str]) -> None:
    assert relative_links(text) == links
