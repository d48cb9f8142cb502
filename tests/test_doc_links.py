"""Every relative link and image in README.md and docs/*.md points to a file (or folder) of this repository."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# [text](target) and ![alt](target); an optional "title" after the target is dropped
LINK = re.compile(r"!?\[[^\]]*\]\((?P<target>[^)\s]+)(?:\s+\"[^\"]*\")?\)")
EXTERNAL = re.compile(r"^(?:[a-z][a-z0-9+.-]*:|#)", re.I)  # http:, https:, mailto:, in-page anchors


def links(page: Path):
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)  # code blocks hold no links
    text = re.sub(r"`[^`\n]*`", "", text)  # nor inline code
    for match in LINK.finditer(text):
        target = match["target"]
        if not EXTERNAL.match(target):
            yield target


def test_the_pages_exist_and_link_somewhere():
    assert (ROOT / "README.md").is_file() and len(PAGES) > 1
    assert any(True for page in PAGES for _ in links(page))


def test_every_relative_link_resolves():
    broken = []
    for page in PAGES:
        for target in links(page):
            path = (page.parent / target.split("#")[0]).resolve()
            if not path.exists():
                broken.append(f"{page.relative_to(ROOT)}: {target}")
            elif not path.is_relative_to(ROOT):
                broken.append(f"{page.relative_to(ROOT)}: {target} leaves the repository")
    assert not broken, "links to nothing:\n" + "\n".join(broken)


def test_the_readme_shows_the_demo_picture_and_every_notebook_screenshot():
    readme = set(links(ROOT / "README.md"))
    assert "docs/demo_grid.png" in readme
    for notebook in sorted((ROOT / "notebooks").glob("0*.ipynb")):
        assert f"docs/screenshots/{notebook.stem}.png" in readme, f"README lacks {notebook.name}'s screenshot"
