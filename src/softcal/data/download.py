"""Fetching a dataset with torchvision, and the one-line error when its files are still missing.

Every dataset with named files goes through these two functions, so a failed or disabled
download reads the same for all of them: where the files belong, which ones are missing, why
they were not downloaded, and how to point softcal at a copy.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from softcal.errors import DataError


def torchvision_download(dataset_cls: Any, root: Path) -> str | None:
    """Let torchvision fetch both splits into ``root``; None when it worked, else why not.

    The reason is one line of at most 200 characters: no network, a proxy or a full disk all
    end the same way, as the "not found" error of :func:`not_found` rather than a traceback.
    """
    try:
        for train in (True, False):
            dataset_cls(str(root), train=train, download=True)
    except Exception as err:  # any failure is reported by not_found, none is fatal here
        return f"{type(err).__name__}: {err}".splitlines()[0][:200]
    return None


def why_missing(download: bool, download_error: str | None) -> str:
    """The bracketed reason in the "not found" message."""
    if download_error:
        return f"download failed: {download_error}"
    if not download:
        return "download is off"
    return "not downloaded by this process"  # e.g. another rank's download failed


def not_found(name: str, folder: Path, files: Sequence[str], reason: str) -> DataError:
    """The error for a dataset whose ``files`` are not in ``folder``."""
    return DataError(
        f"{name} not found: looked in {folder.resolve()} for {', '.join(files)}"
        f" ({reason}). Put the files there, or point data.root / SOFTCAL_DATA_ROOT at a folder"
        f" that has them."
    )
