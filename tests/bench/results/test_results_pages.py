"""The results pages: every committed result is cited by a current page; no page speaks of sessions or VMs.

A current page is ``README.md``, a ``docs/*.md`` page, ``docs/results/README.md``, or a ``README.md`` under
``docs/results`` that a current page cites. A file under ``docs/results`` is cited when a current page
names it, or names a folder above it that holds files of its own (a run folder, or a summary folder
beside its runs), by a path from the repository root (``docs/results/standard/seed0``) or from the
page's folder (``standard/seed0/``, ``results/perf/cpu/perf.json``, ``../shared-cpu/run3.json``).
A folder that only groups others (``perf/``) cites nothing by its name: each of its folders needs its
own citation. ``{a,b}`` in a path is read as both paths.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
DOCS = ROOT / "docs"
RESULTS = DOCS / "results"
MAIN_PAGE = RESULTS / "README.md"
#: what the issue's ``grep -rniw "session\|sessions\|VM" README.md docs`` looks for
WORDS = re.compile(r"\b(?:session|sessions|vm)\b", re.IGNORECASE)
BRACES = re.compile(r"([\w./-]*)\{([\w.,-]+)\}([\w./-]*)")


def _expand_braces(text: str) -> str:
    """``seed{0,1}/`` -> ``seed0/ seed1/``, until no brace group is left."""
    while True:
        new = BRACES.sub(lambda m: " ".join(m[1] + part + m[3] for part in m[2].split(",")), text)
        if new == text:
            return text
        text = new


def _mentions(text: str, name: str) -> bool:
    """Whether ``text`` names the path ``name`` as a path (not inside a longer path or word).

    A one-component name counts only with a ``/`` after it: ``standard/`` is the folder, ``standard`` the
    profile.
    """
    tail = r"/" if "/" not in name else r"(?:/|(?![\w-]|\.\w))"
    return re.search(r"(?<![\w./-])" + re.escape(name) + tail, text) is not None


def _cited(path: Path, pages: dict[Path, str]) -> bool:
    """Whether ``path`` (a file under docs/results) or a folder above it with files of its own is cited."""
    targets = [path]
    for folder in path.parents:
        if folder == RESULTS:
            break
        if any(p.is_file() for p in folder.iterdir()):
            targets.append(folder)
    for page, text in pages.items():
        for target in targets:
            relative = os.path.relpath(target, page.parent).replace(os.sep, "/")
            names = {target.relative_to(ROOT).as_posix(), relative}
            if any(_mentions(text, name) for name in names):
                return True
    return False


def _text(path: Path) -> str | None:
    """The file's text, or ``None`` for a binary file (an image, a checkpoint)."""
    data = path.read_bytes()
    if b"\0" in data:
        return None
    try:
        return data.decode()
    except UnicodeDecodeError:
        return None


def current_pages() -> dict[Path, str]:
    """Every current page and its text (braces expanded): the fixed ones, then the cited results READMEs."""
    fixed = [ROOT / "README.md", *sorted(DOCS.glob("*.md")), MAIN_PAGE]
    pages = {p: _expand_braces(p.read_text()) for p in fixed}
    candidates = [p for p in sorted(RESULTS.rglob("README.md")) if p != MAIN_PAGE]
    added = True
    while added:
        added = False
        for readme in candidates:
            if readme not in pages and _cited(readme, pages):
                pages[readme] = _expand_braces(readme.read_text())
                added = True
    return pages


def test_every_result_under_docs_results_is_cited_by_a_current_page() -> None:
    pages = current_pages()
    files = [p for p in sorted(RESULTS.rglob("*")) if p.is_file() and p != MAIN_PAGE]
    assert files, "no results found"
    uncited = [p.relative_to(ROOT).as_posix() for p in files if not _cited(p, pages)]
    assert uncited == [], "cited by no current page (cite them or git rm them):\n" + "\n".join(uncited)


def test_no_page_speaks_of_sessions_or_vms() -> None:
    """The text files of README.md and docs/ (binary files such as images skipped, as ``grep -I`` does)."""
    files = [ROOT / "README.md", *sorted(p for p in DOCS.rglob("*") if p.is_file())]
    found = []
    for path in files:
        text = _text(path)
        if text is None:
            continue
        for number, line in enumerate(text.splitlines(), 1):
            if WORDS.search(line):
                found.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()[:120]}")
    assert found == [], "\n".join(found)


def test_the_citation_rule() -> None:
    assert _mentions("see `standard/seed0/`.", "standard/seed0")
    assert _mentions("(docs/results/perf/cpu/perf.json)", "docs/results/perf/cpu/perf.json")
    assert _mentions("in `tuning/` and", "tuning")
    assert not _mentions("the `standard` profile", "standard")
    assert not _mentions("`standard-r3/seed0`", "standard")
    assert not _mentions("docs/results/standard/seed0", "standard/seed0")
    assert not _mentions("standard/seed0-ibot", "standard/seed0")
    assert _expand_braces("`seed{1,2}-ibot/`") == "`seed1-ibot/ seed2-ibot/`"
    perf_json = RESULTS / "perf/cpu/perf.json"
    assert _cited(perf_json, {MAIN_PAGE: "see `perf/cpu/`"})
    assert _cited(perf_json, {DOCS / "performance.md": "[x](results/perf/cpu/perf.json)"})
    assert not _cited(perf_json, {MAIN_PAGE: "see `perf/` and `perf/cpu-global/`"})
    assert WORDS.search("a 2-core VM") and WORDS.search("Sessions")
    assert not WORDS.search("KVM, vmap, sessionid")
