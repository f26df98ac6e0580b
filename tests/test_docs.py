"""The repository stands alone (issue 9 §5): it cites only its own files and public URLs.

* No tracked file outside docs/ cites the project's private design and research notes (the patterns are in
  ``PRIVATE_CITATION`` below); the facts they held are in docs/.
* Every relative link in README.md and docs/*.md — a markdown link ``](path)`` or a ``docs/...`` path in the
  text — points to a file that exists, and a ``#section`` of a markdown file to one of its headings.
"""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
THIS = Path(__file__).resolve().relative_to(ROOT).as_posix()

PRIVATE_CITATION = re.compile(
    r"\.\./shared\b"
    r"|\bDESIGN\.md\b"
    r"|\bresearch/[\w.-]+\.md\b"
    r"|\b(?:paper_sources|official_impl|ecosystem|offline_assets|mini_teacher_feasibility)\.md\b")
MARKDOWN_LINK = re.compile(r"\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
DOCS_PATH = re.compile(r"(?<![\w./-])docs/[\w./#-]*")
URL_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


def _tracked_files() -> list[str]:
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: the tracked files are unknown")
    return [p for p in out.decode().split("\0") if p and (ROOT / p).is_file()]


def _private_citations(paths: list[str]) -> list[str]:
    found = []
    for path in paths:
        text = (ROOT / path).read_bytes().decode("utf-8", errors="ignore")
        for number, line in enumerate(text.splitlines(), 1):
            for match in PRIVATE_CITATION.finditer(line):
                found.append(f"{path}:{number}: {match.group(0)}")
    return found


def _checked_sources(paths: list[str]) -> list[str]:
    return [p for p in paths if not p.startswith("docs/") and p != THIS and not _is_rendered_report(p)]


def _is_rendered_report(path: str) -> bool:
    return path.startswith("reports/") and path.endswith(".html")


def test_no_tracked_file_outside_docs_cites_private_notes():
    found = _private_citations(_checked_sources(_tracked_files()))
    assert not found, ("these lines cite files a reader of the repository does not have; cite docs/ or a public "
                       "URL instead:\n" + "\n".join(found))


# Rendered reports are regenerated from the notebooks and the library, which the test above checks.
def test_rendered_reports_cite_no_private_notes():
    reports = [p for p in _tracked_files() if _is_rendered_report(p)]
    found = _private_citations(reports)
    assert not found, "re-render these reports:\n" + "\n".join(found)


# ------------------------------------------------------------------------------------------------------ links
def _outside_code(text: str) -> list[tuple[int, str]]:
    """(line number, line) of a markdown text, without fenced code blocks."""
    lines, fenced = [], False
    for number, line in enumerate(text.splitlines(), 1):
        if line.lstrip().startswith(("```", "~~~")):
            fenced = not fenced
            continue
        if not fenced:
            lines.append((number, line))
    return lines


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped (hyphens and underscores kept), spaces to -."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    anchors, seen = set(), {}
    for _, line in _outside_code(path.read_text(encoding="utf-8")):
        match = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if match:
            slug = _slug(match.group(1))
            count = seen.get(slug, 0)
            seen[slug] = count + 1
            anchors.add(slug if count == 0 else f"{slug}-{count}")
    return anchors


def _markdown_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _broken(source: Path, base: Path, target: str) -> str | None:
    """Why ``target`` (relative to ``base``) does not resolve, or None when it does."""
    path_part, _, fragment = target.partition("#")
    resolved = (base / path_part).resolve() if path_part else source.resolve()
    try:
        resolved.relative_to(ROOT)
    except ValueError:
        return "points outside the repository"
    if not resolved.exists():
        return "no such file"
    if fragment and resolved.suffix == ".md" and fragment not in _anchors(resolved):
        return f"no heading with anchor #{fragment} in {resolved.relative_to(ROOT).as_posix()}"
    return None


@pytest.mark.parametrize("source", _markdown_files(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_relative_links_resolve(source):
    assert source.is_file(), f"{source} is missing"
    broken = []
    for number, line in _outside_code(source.read_text(encoding="utf-8")):
        for match in MARKDOWN_LINK.finditer(line):
            target = match.group(1)
            if URL_SCHEME.match(target):
                continue
            why = _broken(source, source.parent, target)
            if why:
                broken.append(f"{source.name}:{number}: ]({target}) {why}")
    text = source.read_text(encoding="utf-8")
    for number, line in enumerate(text.splitlines(), 1):
        for match in DOCS_PATH.finditer(line):
            target = match.group(0).rstrip(".,;:")
            why = _broken(source, ROOT, target)
            if why:
                broken.append(f"{source.name}:{number}: {target} {why}")
    assert not broken, "\n".join(broken)


def test_docs_pages_exist():
    for name in ("design.md", "sources.md", "official_code.md", "data.md", "deviations.md", "hyperparameters.md"):
        assert (ROOT / "docs" / name).is_file(), f"docs/{name} is missing"


def test_slug_matches_github():
    assert _slug("6. What \"Table 2\" means here") == "6-what-table-2-means-here"
    assert _slug("6. The reference numbers held in `tinyclip/zoo.py`") == "6-the-reference-numbers-held-in-tinyclipzoopy"
    assert _slug("2.4 The student configs") == "24-the-student-configs"


def test_readme_claims_table_is_the_committed_claims_json(monkeypatch):
    """Every verdict and number in the README's claims table comes from reports/claims.json (`make readme-claims`
    copies it there)."""
    from tinyclip.site import claims_markdown

    monkeypatch.delenv("TINYCLIP_REPORTS_ROOT", raising=False)
    assert claims_markdown("mini") in (ROOT / "README.md").read_text()
