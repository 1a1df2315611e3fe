"""The README stays a page a new user reads on a screen or two, and its links onward land on files and
headings that exist (the docs pages' own links are checked by `mkdocs build --strict`)."""

import re
from pathlib import Path

from markdown.extensions.toc import slugify

REPO = Path(__file__).parents[2]
README = REPO / "README.md"


def test_readme_is_under_300_lines():
    assert len(README.read_text().splitlines()) < 300


def test_readme_links_reach_files_and_headings():
    links = re.findall(r"\]\(((?!https?:)[^)]+)\)", README.read_text())
    assert any(link.startswith("docs/") for link in links)
    for link in links:
        path, _, anchor = link.partition("#")
        target = REPO / path
        assert target.is_file(), link
        if anchor:
            headings = re.findall(r"^#+ (.+)$", target.read_text(), flags=re.M)
            assert anchor in {slugify(h, "-") for h in headings}, link
