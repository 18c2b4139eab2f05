"""The product's text speaks of the product: no history, no paths of one machine.

README.md, docs/*.md, the sources (src/**/*.py) and the configs (configs/**/*.yaml) are read by
users who never saw how the project was written: a sentence dated to when it was written
("this session", "issue 12", "the old code") or a path of the machine it was written on
(``../shared``, ``/work/...``, ``/home/me/...``) tells them nothing and goes stale. History
belongs in CHANGELOG.md (not scanned), and tests/ is not scanned either: its ``/tmp`` paths
are code.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.conftest import REPO

#: Phrases that date a sentence to when it was written.
HISTORY = re.compile(
    r"\b(this|previous|last|earlier) session\b|\bthe session that\b|\bissues? #?\d+"
    r"|\bearlier version\b|\bthe old code\b|\bfrom the previous one\b|\bno longer re-measured\b"
    r"|\bavailable offline here\b",
    re.IGNORECASE,
)
#: Paths of the machine the text was written on: the shared folder beside the checkout, the
#: workspace, and absolute home or temporary paths.
MACHINE = re.compile(r"\.\./shared\b|(?<![\w.])/work/|(?<![\w.~$])/(?:home|root|Users|tmp)/\w")


def product_files() -> list[Path]:
    files = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    files += sorted((REPO / "src").rglob("*.py")) + sorted((REPO / "configs").rglob("*.yaml"))
    return [path for path in files if path.is_file()]


def findings(text: str) -> list[str]:
    """``line N: <the match> in <the line>`` for every history phrase or machine path."""
    found = []
    for number, line in enumerate(text.splitlines(), start=1):
        for pattern in (HISTORY, MACHINE):
            found += [f"line {number}: {m.group(0)!r} in {line.strip()[:120]!r}"
                      for m in pattern.finditer(line)]  # fmt: skip
    return found


@pytest.mark.parametrize("path", product_files(), ids=lambda p: p.relative_to(REPO).as_posix())
def test_no_history_or_machine_words(path: Path) -> None:
    found = findings(path.read_text(encoding="utf-8"))
    assert not found, f"{path.relative_to(REPO)}: history or machine words\n" + "\n".join(found)


def test_the_scan_covers_every_kind_of_product_text() -> None:
    names = {p.relative_to(REPO).as_posix() for p in product_files()}
    assert {"README.md", "docs/errors.md", "src/softcal/apps/cli.py", "configs/mnist.yaml",
            "configs/sweeps/mnist.yaml"} <= names  # fmt: skip


@pytest.mark.parametrize("text", [
    "The CIFAR rows come from this session's benchmark.", "the rows from the previous one",
    "a comment (issue 13)", "Issue 12 (CIFAR-10)", "an earlier version of the script",
    "unlike the old code", "no longer re-measured", "neither set is available offline here",
    "SOFTCAL_DATA_ROOT=../shared/data", "export SOFTCAL_DATA_ROOT=/work/shared/data",
    "saved in /home/alice/runs", "python scripts/evaluate.py /tmp/front_runs/mnist/version_0",
])  # fmt: skip
def test_history_and_machine_words_are_found(text: str) -> None:
    assert findings(text), text


@pytest.mark.parametrize("text", [
    "cached in ~/.cache/softcal", "runs/mnist/version_0", "the session start record (TensorBoard)",
    "github.com/Lightning-AI/pytorch-lightning/issues/1217", "$SOFTCAL_DATA_ROOT/cifar10-sample",
    "data/one/train", "an old checkpoint still loads", "work/runs", "the issue is the data",
])  # fmt: skip
def test_product_words_are_not_flagged(text: str) -> None:
    assert not findings(text), text
