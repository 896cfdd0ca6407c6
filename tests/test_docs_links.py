"""Every relative link in the project's markdown pages leads somewhere: to a file of the repository and, with a
``#fragment``, to a heading or an ``<a id>`` anchor of that page (GitHub's heading ids)."""

import re
import subprocess
from pathlib import Path

import pytest
from helpers import REPO

# the model card is written into a published model's folder, beside the files these links name
PUBLISHED_BESIDE = {"model_cards/cxr_model_card.md": {"confusion_matrix.png", "training_curves.png"}}


def _pages():
    out = subprocess.run(["git", "ls-files", "*.md"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    return sorted(out.split())


def _without_code(text):
    return re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)


def heading_id(heading):
    """GitHub's id of a markdown heading: its text, lower case, without punctuation, spaces as hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", re.sub(r"<[^>]+>", "", heading)).replace("`", "")
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


def anchors(text):
    """The ids a page's links may point at: its headings' (repeats numbered as GitHub numbers them) and its
    ``<a id="...">`` anchors."""
    ids, seen = set(), {}
    for line in _without_code(text).splitlines():
        heading = re.match(r"#{1,6}\s+(.*)", line)
        if heading:
            base = heading_id(heading.group(1))
            ids.add(base if base not in seen else f"{base}-{seen[base]}")
            seen[base] = seen.get(base, 0) + 1
        ids.update(re.findall(r'<a id="([^"]+)"', line))
    return ids


def broken_links(page: Path, rel: str):
    """The relative links of ``page`` (named ``rel`` in the repository) that lead nowhere."""
    broken = []
    for link in re.findall(r"\]\(([^)\s]+)\)", _without_code(page.read_text(encoding="utf-8"))):
        if re.match(r"[a-z][a-z0-9+.-]*:", link):  # https:, mailto:
            continue
        path, _, fragment = link.partition("#")
        if path in PUBLISHED_BESIDE.get(rel, ()):
            continue
        target = (page.parent / path) if path else page
        if not target.exists():
            broken.append(f"{link} (no such file)")
        elif fragment and target.suffix == ".md" and fragment not in anchors(target.read_text(encoding="utf-8")):
            broken.append(f"{link} (no such heading)")
    return broken


def test_the_heading_ids_are_githubs():
    text = "# A: b\n## Scale: cost per film to 21,165 and 100,000 films\n## Again\n## Again\n"
    assert anchors(text) == {"a-b", "scale-cost-per-film-to-21165-and-100000-films", "again", "again-1"}
    assert heading_id("The `--operating-point` flag") == "the---operating-point-flag"


def test_a_broken_link_is_found(tmp_path):
    page = tmp_path / "page.md"
    (tmp_path / "other.md").write_text("# Here\n", encoding="utf-8")
    page.write_text("[a](other.md#here) [b](other.md#there) [c](gone.md) [d](#top)\n\n# Top\n", encoding="utf-8")
    assert broken_links(page, "page.md") == ["other.md#there (no such heading)", "gone.md (no such file)"]


@pytest.mark.parametrize("rel", _pages())
def test_every_relative_link_leads_somewhere(rel):
    assert broken_links(REPO / rel, rel) == []
