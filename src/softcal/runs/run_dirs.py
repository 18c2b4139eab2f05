"""Run directories: where a run's files are, and writing them atomically.

A run directory (``runs/<experiment>/version_<n>/``) holds ``config.yaml`` (the resolved
config), TensorBoard event files, ``checkpoints/`` (best and last) and ``results.json``.
Everything that is rewritten goes through :mod:`softcal.atomic_files` (a temporary file and a
rename), so a crash mid-write leaves the previous version, never half a file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from softcal.atomic_files import atomic_write_bytes, atomic_write_json  # noqa: F401  (re-exported)
from softcal.errors import CheckpointError


def find_run_dir(path: str | Path) -> Path:
    """The run directory for a run directory, a checkpoint inside one, or its config.yaml."""
    path = Path(path)
    candidates = [path] if path.is_dir() else [path.parent, path.parent.parent]
    for candidate in candidates:
        if (candidate / "config.yaml").is_file():
            return candidate
    raise CheckpointError(
        f"no config.yaml found beside {path}; evaluate a run directory made by scripts/train.py"
        " (or copy the run's config.yaml next to the checkpoint)"
    )


def best_checkpoint(run_dir: Path) -> Path:
    """The run's best checkpoint (as recorded by training), else its last one."""
    results = run_dir / "results.json"
    if results.is_file():
        recorded = json.loads(results.read_text()).get("checkpoint")
        if recorded and Path(recorded).is_file():
            return Path(recorded)
    ckpts = sorted((run_dir / "checkpoints").glob("best*.ckpt"), key=os.path.getmtime)
    if ckpts:
        return ckpts[-1]
    last = run_dir / "checkpoints" / "last.ckpt"
    if last.is_file():
        return last
    raise CheckpointError(
        f"no checkpoint in {run_dir / 'checkpoints'}; train first (a run with"
        " --trainer.enable_checkpointing false saves none) or pass a .ckpt"
    )


def resolve_checkpoint(path: str | Path) -> Path:
    """The checkpoint a user means: a .ckpt file as given, or a run directory's best one."""
    path = Path(path)
    if path.is_dir():
        return best_checkpoint(find_run_dir(path))
    if not path.is_file():
        raise CheckpointError(f"{path} not found; pass a .ckpt file or a run directory")
    return path


def latest_run_with_last(save_dir: Path, name: str) -> Path | None:
    """The newest ``save_dir/name/version_*`` holding ``checkpoints/last.ckpt``."""
    runs = [p.parent.parent for p in (save_dir / name).glob("version_*/checkpoints/last.ckpt")]
    return max(runs, key=lambda p: (p / "checkpoints" / "last.ckpt").stat().st_mtime, default=None)
