"""Run directories: where a run's files are, and writing them atomically.

A run directory (``runs/<experiment>/version_<n>/``) holds ``config.yaml`` (the resolved
config), TensorBoard event files, ``checkpoints/`` (best and last) and ``results.json``.
Everything that is rewritten goes through a temporary file and a rename, so a crash mid-write
leaves the previous version, never half a file.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from typing import Any

from softcal.errors import CheckpointError, SoftcalError


def atomic_write_bytes(path: str | Path, data: bytes | memoryview,
                       error: type[SoftcalError] = SoftcalError) -> Path:  # fmt: skip
    """Replace ``path`` by ``data`` so that any reader, and any crash, sees the old file or the
    new one, never a mixture: a temporary file in the SAME directory (a rename across
    filesystems would be a copy over the old file), fsynced, renamed over ``path``, and the
    directory fsynced so the rename itself survives a power loss.

    On an OSError (a full disk, a file-size limit, no permission) the temporary file is
    removed, ``path`` is left untouched and ``error`` is raised with one line naming the
    directory and the cause.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # O_EXCL with a unique name: two processes never share a temporary file.
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        handle = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except OSError as err:
        raise _write_error(error, path, err) from err
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise _write_error(error, path, err) from err
    _fsync_directory(path.parent)
    return path


def _write_error(error: type[SoftcalError], path: Path, err: OSError) -> SoftcalError:
    cause = f"{err.strerror} (errno {err.errno})" if err.strerror else str(err) or type(err).__name__
    return error(
        f"cannot write {path.name} in {path.parent}: {cause}; make room there or write elsewhere"
        f" (an existing {path.name} is left as it was)"
    )


def _fsync_directory(directory: Path) -> None:
    """Make a rename in ``directory`` durable. Best effort: the new file is already in place,
    and some systems cannot open (Windows) or fsync (some network filesystems) a directory."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


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
