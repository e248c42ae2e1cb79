"""The book's structure: every chapter is in the table of contents, and the reverse."""
from pathlib import Path

import yaml

from conftest import is_chapter

ROOT = Path(__file__).resolve().parents[1]


def toc_files() -> list[str]:
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [toc["root"]]
    for part in toc.get("parts", []):
        files += [c["file"] for c in part.get("chapters", [])]
    return files


def test_every_toc_entry_exists():
    missing = [f for f in toc_files() if not (ROOT / f"{f}.md").exists()]
    assert not missing, f"listed in _toc.yml but missing: {missing}"


def test_every_chapter_is_in_the_toc():
    listed = set(toc_files())
    pages = {f"book/{p.stem}" for p in (ROOT / "book").glob("*.md")}
    unlisted = sorted(pages - listed)
    assert not unlisted, f"book pages missing from _toc.yml: {unlisted}"


def test_chapters_are_text_notebooks_without_outputs():
    chapters = [p for p in (ROOT / "book").glob("*.md") if is_chapter(p)]
    assert len(chapters) >= 2
    assert not list((ROOT / "book").glob("*.ipynb")), "commit chapters as MyST text only"
    for p in chapters:
        head = p.read_text(encoding="utf-8")[:400]
        assert "format_name: myst" in head, f"{p.name} is not a MyST notebook"
