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
    if path.is_dir():
        check_not_a_folder_of_runs(path)
    raise CheckpointError(
        f"no config.yaml found beside {path}; evaluate a run directory made by scripts/train.py"
        " (or copy the run's config.yaml next to the checkpoint)"
    )


def best_checkpoint(run_dir: Path) -> Path:
    """The run's best checkpoint (as recorded by training), else its last one. The recorded
    path is absolute: a run directory copied or moved elsewhere finds the file of that name in
    its own ``checkpoints/`` first, so it never reads (or evaluates into) the original."""
    results = run_dir / "results.json"
    if results.is_file():
        recorded = json.loads(results.read_text()).get("checkpoint")
        candidates = [run_dir / "checkpoints" / Path(recorded).name, Path(recorded)] if recorded else []
        for candidate in candidates:
            if candidate.is_file():
                return candidate
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
        near = checkpoints_near(path)
        raise CheckpointError(f"{path} not found; pass a .ckpt file or a run directory{near}")
    return path


def newest_run_inside(folder: Path, checkpoint: str = "*.ckpt") -> Path | None:
    """The run directory one or two levels below ``folder`` (``runs/mnist/version_0`` under
    ``runs/mnist`` or ``runs``) whose newest ``checkpoints/<checkpoint>`` is the newest of
    all; None when no run there has one. Spelt from ``folder`` as given."""
    found = [
        ckpt for pattern in (f"*/checkpoints/{checkpoint}", f"*/*/checkpoints/{checkpoint}")
        for ckpt in folder.glob(pattern) if (ckpt.parent.parent / "config.yaml").is_file()
    ]  # fmt: skip
    newest = max(found, key=lambda ckpt: ckpt.stat().st_mtime, default=None)
    return newest.parent.parent if newest is not None else None


def check_not_a_folder_of_runs(folder: Path, checkpoint: str = "*.ckpt") -> None:
    """One line with the run the user most likely meant, when ``folder`` holds runs rather
    than being one (``runs/mnist`` for ``runs/mnist/version_0``)."""
    run = newest_run_inside(folder, checkpoint)
    if run is not None:
        raise CheckpointError(
            f"{folder} is a folder of runs, not a run; did you mean {run}? (the newest run in it"
            " with a checkpoint)"
        )


def checkpoints_near(path: Path, shown: int = 5) -> str:
    """``" (<folder> holds a.ckpt, b.ckpt)"``: the checkpoints beside a missing one, or in
    ``checkpoints/`` beside it (a path that left that folder out); "" when there are none."""
    for folder in (path.parent, path.parent / "checkpoints"):
        names = sorted(p.name for p in folder.glob("*.ckpt")) if folder.is_dir() else []
        if names:
            more = f", ... ({len(names)} in all)" if len(names) > shown else ""
            return f" ({folder} holds {', '.join(names[:shown])}{more})"
    return ""


def latest_run_with_last(save_dir: Path, name: str) -> Path | None:
    """The newest ``save_dir/name/version_*`` holding ``checkpoints/last.ckpt``."""
    runs = [p.parent.parent for p in (save_dir / name).glob("version_*/checkpoints/last.ckpt")]
    return max(runs, key=lambda p: (p / "checkpoints" / "last.ckpt").stat().st_mtime, default=None)
