"""Checkpoints written atomically in their own directory, through Lightning's CheckpointIO.

Lightning's default writer saves to a temporary file wherever fsspec puts it (often the system
temp directory, a tmpfs) and then moves it into place. Across filesystems that move is a copy
over the old file: a disk that fills up, or a kill, mid-copy destroys the previous good
checkpoint. :class:`AtomicCheckpointIO` writes beside the destination instead and renames, with
:func:`softcal.runs.run_dirs.atomic_write_bytes`, so the previous file survives any failure.
"""

from __future__ import annotations

import io
from typing import Any

import torch
from lightning.fabric.plugins import CheckpointIO, TorchCheckpointIO

from softcal.errors import CheckpointError
from softcal.runs.run_dirs import atomic_write_bytes


class AtomicCheckpointIO(TorchCheckpointIO):
    """Every checkpoint the Trainer saves (best, last, mid-epoch) goes to a temporary file in
    the destination directory, is fsynced and renamed over the old one; a failed write (full
    disk, file-size limit) leaves the old file byte-identical and raises a one-line
    :class:`~softcal.errors.CheckpointError` naming the directory and the cause."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        if storage_options is not None or "://" in str(path):  # a URL, not a local path
            # Remote storage (s3://, ...) has no rename; Lightning's own writer handles it.
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        buffer = io.BytesIO()  # serialised in memory first, as Lightning's writer does too
        torch.save(checkpoint, buffer)
        atomic_write_bytes(path, buffer.getbuffer(), error=CheckpointError)


def with_atomic_checkpoints(plugins: Any) -> list[Any]:
    """The Trainer's ``plugins`` with :class:`AtomicCheckpointIO` added, unless the config
    already names a CheckpointIO of its own (that choice is kept)."""
    given = [] if plugins is None else list(plugins) if isinstance(plugins, list | tuple) else [plugins]
    if any(isinstance(plugin, CheckpointIO) for plugin in given):
        return given
    return [*given, AtomicCheckpointIO()]
