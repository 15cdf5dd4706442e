"""docs/architecture.md stays true to the tree: every file it names exists, and each question of
its "where to look" table is answered by at most two files."""

from __future__ import annotations

import re

from support.paths import REPO

ARCHITECTURE = REPO / "docs" / "architecture.md"
PACKAGE = REPO / "services" / "mailsluice"
ROOTS = ("operator/", "tests/", "deploy/", "docs/", "services/", "scripts/")
PATHLIKE = re.compile(r"`([\w.-]+/[\w./-]*)`")


def resolve(name: str) -> bool:
    base = REPO if name.startswith(ROOTS) else PACKAGE
    return (base / name).exists()


def where_to_look() -> list[tuple[str, list[str]]]:
    text = ARCHITECTURE.read_text()
    section = text.split("## Where to look", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 2 and cells[0] not in ("question", "---"):
            rows.append((cells[0], re.findall(r"`([^`]+)`", cells[1])))
    return rows


def test_every_question_is_answered_by_one_or_two_files() -> None:
    rows = where_to_look()
    assert len(rows) >= 10
    for question, files in rows:
        assert 1 <= len(files) <= 2, question
        for name in files:
            assert resolve(name), f"{question}: {name} does not exist"


def test_every_path_the_architecture_names_exists() -> None:
    names = set(PATHLIKE.findall(ARCHITECTURE.read_text()))
    assert names, "the pattern found no paths: it is broken"
    missing = sorted(n for n in names if not resolve(n))
    assert not missing, f"docs/architecture.md names paths that do not exist: {missing}"
