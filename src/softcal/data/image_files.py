"""The image files in a folder: one finder, one rule for hidden files, for every app that takes
folders of images (predict's FILE_OR_DIR arguments, evaluate's ``--ood FOLDER``).

An image file is a file whose suffix, in any case, is one of
:data:`softcal.data.readers.IMAGE_SUFFIXES`. Hidden entries are skipped: a file whose name
starts with "." and everything under a folder whose name does (``.git/``, ``.ipynb_checkpoints/``,
macOS's ``._photo.png`` resource forks, which carry an image suffix but are not images) - the
rule the image-folder datasets apply to their class folders and files. Only names below the
folder given are judged: a folder the user names explicitly is searched even if it is hidden.
"""

from __future__ import annotations

from pathlib import Path

from softcal.data.readers import IMAGE_SUFFIXES


def is_hidden(name: str) -> bool:
    """Whether a file or folder name is hidden by the Unix convention (a leading dot)."""
    return name.startswith(".")


def find_images(folder: Path, recursive: bool = True) -> list[Path]:
    """The image files under ``folder`` (in sub-folders too when ``recursive``), sorted by
    path, hidden files and hidden folders' contents left out; empty when there are none."""
    candidates = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(
        path
        for path in candidates
        if path.suffix.lower() in IMAGE_SUFFIXES
        and not any(is_hidden(part) for part in path.relative_to(folder).parts)
        and path.is_file()
    )
