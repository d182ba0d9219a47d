"""The repository refers only to itself.

A reader who clones the project must be able to follow every reference in it. So no tracked
text file (code, rules, Snakefile, tests, docs, README, BENCHMARKS, schemas, configs,
report captions, Makefile, envs) may point outside the repository: not to the external
specification the project started from (cite ``docs/DESIGN.md §N`` instead), not to the
development machine's shared folder or the paper's file there, not to absolute paths of that
machine, and not through a relative path that climbs out of the repository. Every
``DESIGN.md §N`` citation must name a section that docs/DESIGN.md has, and every relative
Markdown link must lead to a file of the repository.

The forbidden strings are assembled from pieces below, so this file does not match itself.
"""

from __future__ import annotations

import os
import posixpath
import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DESIGN = "docs/DESIGN.md"
#: Sections the code has always cited (their numbers are stable, docs/DESIGN.md says so).
REQUIRED_SECTIONS = {str(n) for n in range(11)} | {"9b"}
#: Folders that are never part of the project when the tree is walked without git.
UNTRACKED_DIRS = {".git", ".venv", "results", ".snakemake", "__pycache__", ".pytest_cache", ".hypothesis",
                  "build", ".mypy_cache", ".ruff_cache"}

# --------------------------------------------------------------------------- forbidden text

_SPEC = "SP" + "EC"
#: (pattern, what it is, what to do instead)
FORBIDDEN = [
    (re.compile(r"\b" + _SPEC + r"\b"), "the external specification", "cite docs/DESIGN.md §N"),
    (re.compile(r"(?i)\b" + _SPEC.lower() + r"\.md\b"), "the external specification's file", "cite docs/DESIGN.md"),
    (re.compile(r"(?<![\w-])" + "sha" + r"red/[\w.$-]"), "the development machine's shared folder",
     "refer to a file of the repository"),
    (re.compile(r"(?i)krishnan-2023-" + "multi-arm"), "the paper's file on the development machine",
     "cite the paper (Krishnan et al., Sci. Rep. 2023, doi:10.1038/s41598-023-31207-5)"),
    (re.compile(r"(?i)\bpaper/" + "krishnan"), "the paper's file on the development machine",
     "cite the paper by its reference"),
    (re.compile(r"(?<![\w.~$-])/(?:" + "wo" + "rk|" + "ro" + r"ot)(?![\w.-])"),
     "an absolute path of the development machine", "use a path relative to the repository"),
]

#: A relative path that starts by climbing (``../``), as a token of its own (not ``sub-../x``).
_UP = r"\.\./"
UP_PATH = re.compile(r"(?<![\w.\-/~$])((?:" + _UP + r")+[^\s'\"`)\]>,;:*|]*)")


def escapes_repo(token: str, rel_file: str) -> bool:
    """Whether ``token`` (a path starting with ``../``), read from the folder of ``rel_file``
    (a path relative to the repository root), leads outside the repository."""
    here = posixpath.dirname(rel_file)
    resolved = posixpath.normpath(posixpath.join(here, token))
    return resolved == ".." or resolved.startswith("../")


def outside_references(text: str, rel_file: str) -> list[str]:
    """``line: what (excerpt)`` for every reference in ``text`` that leaves the repository."""
    found = []
    for lineno, line in enumerate(text.splitlines(), 1):
        for pattern, what, instead in FORBIDDEN:
            for m in pattern.finditer(line):
                found.append(f"{rel_file}:{lineno}: {what} ({m.group(0)!r}; {instead}): {line.strip()[:160]}")
        for m in UP_PATH.finditer(line):
            if escapes_repo(m.group(1), rel_file):
                found.append(f"{rel_file}:{lineno}: relative path leaving the repository ({m.group(1)!r}): "
                             f"{line.strip()[:160]}")
    return found


# --------------------------------------------------------------------------- the files

def _walk(root: Path) -> list[str]:
    out = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in UNTRACKED_DIRS and not d.endswith(".egg-info"))
        for name in sorted(files):
            out.append(Path(folder, name).relative_to(root).as_posix())
    return out


def tracked_files(root: Path = REPO) -> list[str]:
    """Paths (relative, POSIX) of the files git tracks in ``root``; without a git checkout
    rooted there, every file of the tree outside build and result folders."""
    try:
        top = subprocess.run(["git", "-C", str(root), "rev-parse", "--show-toplevel"], capture_output=True,
                             text=True, check=True).stdout.strip()
        if Path(top).resolve() == root.resolve():
            out = subprocess.run(["git", "-C", str(root), "-c", "core.quotepath=off", "ls-files", "-z"],
                                 capture_output=True, check=True).stdout
            files = [p for p in out.decode("utf-8").split("\0") if p]
            if files:
                return [p for p in files if (root / p).is_file()]
    except (OSError, subprocess.CalledProcessError):
        pass
    return _walk(root)


def read_text(path: Path) -> str | None:
    """The file's text, or None for a binary file."""
    data = path.read_bytes()
    if b"\0" in data[:8192]:
        return None
    return data.decode("utf-8", errors="replace")


@pytest.fixture(scope="module")
def texts() -> dict[str, str]:
    out = {}
    for rel in tracked_files():
        text = read_text(REPO / rel)
        if text is not None:
            out[rel] = text
    assert DESIGN in out, f"{DESIGN} is missing: the project's design document must be in the repository"
    return out


# --------------------------------------------------------------------------- DESIGN.md sections

ANCHOR = re.compile(r'^<a id="s(\w+)"></a>\s*\n(?:\s*\n)*#{1,6} §(\S+)', re.MULTILINE)
ANY_ANCHOR = re.compile(r'<a\s+(?:id|name)="([^"]+)"')


def design_sections(design_text: str) -> dict[str, str]:
    """Section number -> anchor id, from ``<a id="sN"></a>`` lines each followed by its heading
    ``## §N …``. A mismatch between an anchor and its heading is an error."""
    sections = {}
    for m in ANCHOR.finditer(design_text):
        anchor, heading = m.group(1), m.group(2)
        if anchor != heading:
            raise AssertionError(f'{DESIGN}: anchor "s{anchor}" stands before the heading of §{heading}')
        if anchor in sections:
            raise AssertionError(f"{DESIGN}: §{anchor} is defined twice")
        sections[anchor] = f"s{anchor}"
    return sections


_SEC = r"§{1,2}\s*\d+[a-z]?(?:\s*[–—-]\s*§?\d+[a-z]?)?"
CITATION = re.compile(r"DESIGN\.md\s*(" + _SEC + r"(?:\s*(?:,|/|&|and)\s*" + _SEC + r")*)")
ONE_SECTION = re.compile(r"§{1,2}\s*(\d+[a-z]?)(?:\s*[–—-]\s*§?(\d+[a-z]?))?")
#: A bare "§N" inside DESIGN.md itself (not after another "§" or a word).
BARE = re.compile(r"(?<![\w§])(" + _SEC + r")")


def cited_sections(fragment: str) -> list[str]:
    """Every section a citation's section list names, ranges expanded: "§3–7" -> 3, 4, 5, 6, 7."""
    out = []
    for m in ONE_SECTION.finditer(fragment):
        first, last = m.group(1), m.group(2)
        out.append(first)
        if last is not None:
            out.append(last)
            a, b = re.match(r"\d+", first).group(0), re.match(r"\d+", last).group(0)
            out += [str(n) for n in range(int(a) + 1, int(b))]
    return out


def citations(text: str) -> list[tuple[int, str]]:
    """(line, section) of every ``DESIGN.md §…`` citation in ``text``."""
    out = []
    for lineno, line in enumerate(text.splitlines(), 1):
        for m in CITATION.finditer(line):
            out += [(lineno, s) for s in cited_sections(m.group(1))]
    return out


# --------------------------------------------------------------------------- Markdown links

FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.MULTILINE | re.DOTALL)
CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1")
LINK = re.compile(r"\[[^\]\n]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


def markdown_links(text: str) -> list[tuple[int, str]]:
    """(line, target) of the inline links of a Markdown text, outside code blocks and spans."""
    out = []
    text = FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), text)
    for lineno, line in enumerate(text.splitlines(), 1):
        for m in LINK.finditer(CODE_SPAN.sub("", line)):
            out.append((lineno, m.group(1)))
    return out


def heading_slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    s = re.sub(r"<[^>]+>", "", heading).strip().lower()
    s = re.sub(r"[^\w\- ]", "", s)
    return s.replace(" ", "-")


def anchors_of(text: str) -> set[str]:
    out = set(ANY_ANCHOR.findall(text))
    for m in re.finditer(r"^#{1,6}\s+(.+?)\s*#*\s*$", FENCE.sub("", text), re.MULTILINE):
        out.add(heading_slug(m.group(1)))
    return out


def broken_links(rel_file: str, text: str, files: dict[str, str]) -> list[str]:
    """``line: problem`` for every relative link of ``rel_file`` that leads nowhere."""
    problems = []
    here = posixpath.dirname(rel_file)
    for lineno, target in markdown_links(text):
        if SCHEME.match(target):
            continue
        path, _, fragment = target.partition("#")
        if path:
            resolved = posixpath.normpath(posixpath.join(here, path))
            if resolved == ".." or resolved.startswith("../") or posixpath.isabs(path):
                problems.append(f"{rel_file}:{lineno}: link {target!r} leaves the repository")
                continue
            if not (REPO / resolved).exists():
                problems.append(f"{rel_file}:{lineno}: link {target!r}: no file {resolved}")
                continue
        else:
            resolved = rel_file
        if fragment and resolved.endswith(".md") and resolved in files:
            if fragment not in anchors_of(files[resolved]):
                problems.append(f"{rel_file}:{lineno}: link {target!r}: {resolved} has no anchor #{fragment}")
    return problems


# --------------------------------------------------------------------------- the checks


def test_no_reference_outside_the_repository(texts):
    found = [hit for rel, text in sorted(texts.items()) for hit in outside_references(text, rel)]
    assert not found, (f"{len(found)} reference(s) to files outside the repository:\n" + "\n".join(found))


def test_design_sections_have_stable_anchors(texts):
    sections = design_sections(texts[DESIGN])
    missing = sorted(REQUIRED_SECTIONS - set(sections), key=lambda s: (int(re.match(r"\d+", s).group(0)), s))
    assert not missing, f"{DESIGN} lacks the anchored section(s) {['§' + s for s in missing]}"


def test_design_citations_name_existing_sections(texts):
    sections = design_sections(texts[DESIGN])
    bad = []
    for rel, text in sorted(texts.items()):
        for lineno, section in citations(text):
            if section not in sections:
                bad.append(f"{rel}:{lineno}: {DESIGN} has no §{section}")
    # DESIGN.md's references to its own sections
    for lineno, line in enumerate(CODE_SPAN.sub("", FENCE.sub("", texts[DESIGN])).splitlines(), 1):
        for m in BARE.finditer(line):
            bad += [f"{DESIGN}:{lineno}: no §{s}" for s in cited_sections(m.group(1)) if s not in sections]
    assert not bad, "citations of sections that do not exist:\n" + "\n".join(bad)


def test_markdown_links_resolve(texts):
    bad = [p for rel, text in sorted(texts.items()) if rel.endswith(".md") for p in broken_links(rel, text, texts)]
    assert not bad, "Markdown links that lead nowhere:\n" + "\n".join(bad)


# --------------------------------------------------------------------------- the checkers themselves


def test_checker_finds_each_kind_of_outside_reference():
    spec = _SPEC
    cases = {
        f"see {spec} §2 for why": "specification",
        f"The {spec}'s correction": "specification",
        f"is `../{'sha'}red/{spec}.md` in the tree": "shared folder",
        f"read /{'wo'}rk/{'sha'}red/paper.md": "absolute path",
        f"cache in /{'ro'}ot/.cache": "absolute path",
        f"paper/{'krishnan'}-2023-{'multi-arm'}-unet.md": "paper's file",
    }
    for line, what in cases.items():
        hits = outside_references(line, "README.md")
        assert hits and any(what in h for h in hits), (line, hits)
    up = ".." + "/"  # written in pieces, so that this file does not climb out itself
    assert outside_references(f"f'{up}{up}x'", "docs/a.md")  # out of docs/, then out of the repository
    # inside the repository, or not a path of its own: allowed
    assert not outside_references('caption="../report/visits.rst"', "rules/bids.smk")
    assert not outside_references('"participant_id": "sub-../../etc"', "tests/test_bids.py")
    assert not outside_references("find_spec('nilearn'); a shared filesystem; /tmp/site; ~/data", "x.py")
    assert not outside_references("see docs/DESIGN.md §2", "x.py")


def test_checker_reads_citations_and_ranges():
    assert [s for _, s in citations("(docs/DESIGN.md §3, §6) and docs/DESIGN.md §9b")] == ["3", "6", "9b"]
    assert sorted((s for _, s in citations("docs/DESIGN.md §3–7")), key=int) == ["3", "4", "5", "6", "7"]
    assert [s for _, s in citations("docs/DESIGN.md §1/§9; docs/DESIGN.md §2's last step")] == ["1", "9", "2"]
    assert [s for _, s in citations("docs/DESIGN.md §9 bullets 1–2")] == ["9"]
    text = '<a id="s1"></a>\n\n## §1 One\n\n<a id="s9b"></a>\n\n## §9b Two\n'
    assert design_sections(text) == {"1": "s1", "9b": "s9b"}
    with pytest.raises(AssertionError, match="anchor"):
        design_sections('<a id="s2"></a>\n\n## §3 Wrong\n')


def test_checker_finds_broken_links():
    up = ".." + "/"
    files = {"docs/a.md": "# Title\n\n<a id=\"s1\"></a>\n\n## §1 One\n"}
    text = (f"[ok]({up}README.md) [up]({up}{up}x.md) [gone](missing.md) [web](https://example.org)\n"
            "[frag](#s1) [bad](#s2) [slug](#title) `[code](nowhere.md)`\n```\n[fenced](nowhere.md)\n```\n")
    problems = broken_links("docs/a.md", text, {**files, "docs/a.md": files["docs/a.md"] + text})
    joined = "\n".join(problems)
    assert "leaves the repository" in joined and "missing.md" in joined and "#s2" in joined
    assert "README.md" not in joined and "nowhere" not in joined and "#s1" not in joined and "#title" not in joined
    assert len(problems) == 3, problems
