"""Every relative link in the README and docs/ reaches a file that exists and, with a #fragment, a heading
of that file (GitHub's anchor rule: lower case, punctuation dropped, spaces to hyphens). The results moved
from the README into docs/results.md; a heading renamed or a file moved breaks links silently otherwise."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.S | re.M)


def anchor(heading: str) -> str:
    """GitHub's id for a heading's text."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = FENCE.sub("", path.read_text())
    return {anchor(m.group(1)) for m in re.finditer(r"^#{1,6}\s+(.+?)\s*$", text, re.M)}


def links(path: Path) -> list[str]:
    return [m.group(1) for m in LINK.finditer(FENCE.sub("", path.read_text()))
            if not re.match(r"[a-z]+:", m.group(1))]  # http:, https:, mailto: are not checked (no network)


def test_anchor_rule():
    assert anchor("Seed spread (one split, three initialisations)") == "seed-spread-one-split-three-initialisations"
    assert anchor("Missing sequences (LGG)") == "missing-sequences-lgg"
    assert anchor("Presets: the seed workflows' recipes") == "presets-the-seed-workflows-recipes"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(doc):
    broken = []
    for link in links(doc):
        target, _, fragment = link.partition("#")
        path = (doc.parent / target).resolve() if target else doc
        if not path.exists():
            broken.append(f"{link}: no such file")
        elif fragment and path.suffix == ".md" and fragment not in anchors(path):
            broken.append(f"{link}: no heading #{fragment} in {path.name}")
    assert not broken, f"{doc.relative_to(ROOT)}: " + "; ".join(broken)
