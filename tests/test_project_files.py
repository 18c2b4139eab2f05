"""The files a package is expected to have, and the tested versions they state."""

from __future__ import annotations

import re

from tests.conftest import REPO


def test_license_is_mit_of_the_contributors():
    text = (REPO / "LICENSE").read_text()
    assert text.startswith("MIT License") and "Copyright (c) softcal contributors" in text
    assert 'THE SOFTWARE IS PROVIDED "AS IS"' in text


def test_changelog_has_an_unreleased_section():
    text = (REPO / "CHANGELOG.md").read_text()
    assert text.startswith("# Changelog") and "\n## Unreleased\n" in text
    unreleased = text.split("\n## Unreleased\n", 1)[1].split("\n## ", 1)[0]
    for change in ("softcal.conformal", "softcal.shift", "# base:", "`-c`", "--ckpt", "calibration:"):
        assert change in unreleased, change


def test_the_tested_versions_are_the_caps_in_pyproject():
    """pyproject.toml caps torch and torchvision at the tested pair and points at the table."""
    pyproject = (REPO / "pyproject.toml").read_text()
    assert 'docs/install.md, "Tested versions"' in pyproject
    install = (REPO / "docs" / "install.md").read_text()
    table = install.split("## Tested versions", 1)[1]
    for package in ("torch", "torchvision"):
        cap = re.search(rf'"{package}>=[\d.]+,<=([\d.]+)"', pyproject).group(1)
        assert re.search(rf"^\| {package} \| {re.escape(cap)} \|$", table, re.MULTILINE), package
    for row in ("| lightning | 2.6.6 |", "| Python | 3.11 |", "| torchmetrics |"):
        assert row in table, row


def test_the_readme_is_a_front_door_of_at_most_250_lines():
    """The README says what softcal is and how to use it; the details live in docs/."""
    lines = (REPO / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 250, f"README.md has {len(lines)} lines; move detail to docs/"
