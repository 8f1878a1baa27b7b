"""README.md and docs/ stay a true map: short, every relative link resolves, every `make`
target and params key they name exists. Pure text checks, no stage runs."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
MAX_README_LINES = 250

# Pages other branches are adding: a link to one of them is skipped (with a message) while
# it is missing here and checked like any other once it exists. Drop an entry once merged.

LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
CODE_SPAN = re.compile(r"`([^`\n]+)`")
MAKE_TARGET = re.compile(r"\bmake ([a-z][\w-]*)")
# file names that look like a key (`report.py`, `foundation.md`) are not keys
FILE_SUFFIXES = {"py", "md", "json", "yaml", "yml", "csv", "png", "jsonl", "txt", "sh", "pth"}


def pages() -> list[Path]:
    return [README, ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").rglob("*.md"))]


def without_code_blocks(text: str) -> str:
    """Fenced blocks hold commands and diagrams, not links."""
    return re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    headings = re.findall(r"^#{1,6} (.+)$", without_code_blocks(page.read_text()), flags=re.M)
    return {slug(h) for h in headings}


def relative_links(page: Path) -> list[str]:
    links = LINK.findall(without_code_blocks(page.read_text()))
    return [link for link in links if not re.match(r"[a-z]+:", link)]


def test_slug_matches_github() -> None:
    assert slug("The paper's setting, per dataset") == "the-papers-setting-per-dataset"
    assert slug("DVC at dataset scale (`benchmarks/dvc_noop.py`)") == (
        "dvc-at-dataset-scale-benchmarksdvc_nooppy"
    )
    assert slug("A → B") == "a--b"


def test_readme_is_short() -> None:
    n = len(README.read_text().splitlines())
    assert n <= MAX_README_LINES, f"README.md has {n} lines; move detail into docs/"


def test_relative_links_resolve() -> None:
    broken = []
    for page in pages():
        for link in relative_links(page):
            path_part, _, anchor = link.partition("#")
            target = (page.parent / path_part).resolve() if path_part else page
            name = f"{page.relative_to(ROOT)} -> {link}"
            if not target.exists():
                broken.append(name)
            elif anchor and target.suffix == ".md" and anchor not in anchors(target):
                broken.append(f"{name} (no such heading)")
    assert not broken, "broken links:\n" + "\n".join(broken)


def makefile_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text()
    return {name for line in re.findall(r"^([\w -]+):", text, flags=re.M) for name in line.split()}


def code_text(text: str) -> str:
    """Fenced blocks and `code spans`: where a page names commands (prose may say "make")."""
    blocks = re.findall(r"^```.*?^```", text, flags=re.S | re.M)
    return "\n".join(blocks + CODE_SPAN.findall(without_code_blocks(text)))


def named_make_targets() -> set[str]:
    return {t for page in pages() for t in MAKE_TARGET.findall(code_text(page.read_text()))}


def test_make_scan_reads_commands_only() -> None:
    text = "To make sure, run `make repro`.\n```bash\nmake test  # then\n```\n"
    assert sorted(MAKE_TARGET.findall(code_text(text))) == ["repro", "test"]


def test_named_make_targets_exist() -> None:
    targets = makefile_targets()
    assert {"setup", "repro", "test"} <= targets  # the parser reads this Makefile
    missing = named_make_targets() - targets
    assert not missing, f"README/docs name make targets the Makefile lacks: {missing}"


def keys_in(text: str, sections: set[str]) -> set[str]:
    """The dotted words in `code spans` whose first part is a params section; a word in
    single quotes is quoted program output (an error naming a wrong key), not a key."""
    key = re.compile(
        r"(?<![\w./'-])(" + "|".join(sorted(sections)) + r")((?:\.[A-Za-z_]\w*)+)(?![\w/])"
    )
    found = set()
    for span in CODE_SPAN.findall(text):
        for section, rest in key.findall(span):
            if rest.rsplit(".", 1)[-1] not in FILE_SUFFIXES:
                found.add(section + rest)
    return found


def has_key(params: dict, dotted: str) -> bool:
    node = params
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def test_named_params_keys_exist() -> None:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    named = set().union(*(keys_in(page.read_text(), set(params)) for page in pages()))
    assert "generate.guidance" in named  # the scan sees the keys the pages name
    missing = sorted(k for k in named if not has_key(params, k))
    assert not missing, f"README/docs name params keys that params.yaml lacks: {missing}"


def test_key_scan_skips_files_and_finds_typos() -> None:
    text = (
        "`src/ddb/stages/report.py`, `report.py`, `reports/foundation.md`, `models/erm`, "
        "`-S data.root=/x`, `generate.guidence`, `data.celeba.seed`, `report.seeds` and "
        "report.datasets outside a code span, `unknown key 'erm.sed'`"
    )
    named = keys_in(text, {"data", "generate", "report", "models", "erm"})
    assert named == {"data.root", "generate.guidence", "data.celeba.seed", "report.seeds"}
    params = {"generate": {"guidance": 2.0}, "data": {"celeba": {"seed": 0}}}
    assert has_key(params, "data.celeba.seed")
    assert not has_key(params, "generate.guidence")
    assert not has_key(params, "generate.guidance.x")
