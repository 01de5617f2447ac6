"""The README is a short front door, and every relative link in it and in docs/ leads somewhere."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote

import pytest

REPOSITORY = Path(__file__).resolve().parent.parent
README = REPOSITORY / "README.md"
PAGES = [README, *sorted((REPOSITORY / "docs").glob("*.md"))]
README_LIMIT = 15_000
SETUP_COMMANDS = (
    "bash .ci/setup && .venv/bin/panel serve apps/explorer.py",
    "bash .ci/setup && .venv/bin/python -m pytest -q",
)

LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.MULTILINE)


def prose(text: str) -> str:
    """The page without its fenced code blocks (a link there is code, not a link)."""
    return FENCE.sub("", text)


def anchors(path: Path) -> set[str]:
    """GitHub's anchors for the headings of a markdown page."""
    found = set()
    for title in HEADING.findall(prose(path.read_text(encoding="utf-8"))):
        slug = re.sub(r"[^\w\- ]", "", title.lower().replace("`", "")).replace(" ", "-")
        found.add(slug)
    return found


def relative_links(path: Path) -> list[str]:
    return [t for t in LINK.findall(prose(path.read_text(encoding="utf-8"))) if not re.match(r"^[a-z][a-z0-9+.-]*:", t)]


def test_readme_is_a_front_door_of_at_most_15000_characters():
    text = README.read_text(encoding="utf-8")
    assert len(text) <= README_LIMIT, f"README.md has {len(text):,} characters; move detail into docs/"
    for command in SETUP_COMMANDS:
        assert command in text, f"the set-up command {command!r} is missing from README.md"
    assert "docs/img/" in text, "the README shows a picture of the app"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPOSITORY)))
def test_every_relative_link_points_to_an_existing_file_and_heading(page):
    links = relative_links(page)
    broken = []
    for link in links:
        target, _, anchor = link.partition("#")
        file = (page.parent / unquote(target)).resolve() if target else page
        if not file.exists():
            broken.append(f"{link}: no such file")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            broken.append(f"{link}: no heading #{anchor} in {file.relative_to(REPOSITORY)}")
    assert not broken, f"{page.relative_to(REPOSITORY)}: " + "; ".join(broken)


def test_the_link_check_sees_links_and_catches_a_broken_one(tmp_path):
    page = tmp_path / "page.md"
    (tmp_path / "there.md").write_text("# Here it is\n")
    page.write_text("See [a](there.md#here-it-is), ![b](\nmissing.png) and [c](https://example.org).\n"
                    "```\n[not a link](nowhere.md)\n```\n")
    assert relative_links(page) == ["there.md#here-it-is", "missing.png"]
    assert anchors(tmp_path / "there.md") == {"here-it-is"}
