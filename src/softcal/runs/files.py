"""Run directories and the files in them, written atomically.

A run directory (``runs/<experiment>/version_<n>/``) holds ``config.yaml`` (the resolved
config), TensorBoard event files, ``checkpoints/`` (best and last), ``temperature.json`` and
``results.json``. Everything that is rewritten goes through a temporary file and a rename, so a
crash mid-write leaves the previous version, never half a file.
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path
from typing import Any

import torch

from softcal.errors import CheckpointError


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    return path


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def atomic_torch_save(obj: Any, path: str | Path) -> Path:
    import io

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return atomic_write_bytes(path, buffer.getvalue())


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a Lightning checkpoint safely (``weights_only=True``: no arbitrary code runs).

    Every failure becomes one CheckpointError line: missing, truncated, not a checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} not found; pass a .ckpt file or a run directory")
    with open(path, "rb") as handle:
        magic = handle.read(4)
    if magic[:4] != b"PK\x03\x04":  # torch.save writes a zip archive
        raise CheckpointError(
            f"{path} is not a checkpoint (not a torch.save archive); pass a .ckpt written by"
            " scripts/train.py"
        )
    if not zipfile.is_zipfile(path):  # the zip directory sits at the end: gone if cut short
        raise CheckpointError(
            f"{path} is truncated (its archive has no end); the run was killed while writing"
            " it or the copy is incomplete - use another checkpoint from the run"
        )
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for truncated or foreign files
        text = str(err)
        if "Weights only load failed" in text:
            reason = "it holds objects that safe loading (weights_only=True) refuses to run"
        else:
            reason = text.strip().splitlines()[0][:160] if text.strip() else type(err).__name__
        raise CheckpointError(
            f"{path} cannot be read as a checkpoint ({reason}); it is truncated, corrupt or"
            " not written by softcal - use another checkpoint from the run"
        ) from err
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise CheckpointError(f"{path} is not a Lightning checkpoint (no 'state_dict' in it)")
    return ckpt


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


def latest_run_with_last(save_dir: Path, name: str) -> Path | None:
    """The newest ``save_dir/name/version_*`` holding ``checkpoints/last.ckpt``."""
    runs = [p.parent.parent for p in (save_dir / name).glob("version_*/checkpoints/last.ckpt")]
    return max(runs, key=lambda p: (p / "checkpoints" / "last.ckpt").stat().st_mtime, default=None)


# --------------------------------------------------------------------------- using a checkpoint


def resolve_checkpoint(path: str | Path) -> Path:
    """The checkpoint a user means: a .ckpt file as given, or a run directory's best one."""
    path = Path(path)
    if path.is_dir():
        return best_checkpoint(find_run_dir(path))
    if not path.is_file():
        raise CheckpointError(f"{path} not found; pass a .ckpt file or a run directory")
    return path


def open_run_checkpoint(path: str | Path) -> tuple[Path, dict[str, Any], dict[str, Any], Path]:
    """(checkpoint file, its contents, the Classifier's hparams, its run directory) for a run
    directory or a .ckpt inside one; every problem is one CheckpointError line, raised before
    any slow import."""
    checkpoint = resolve_checkpoint(path)
    ckpt = load_checkpoint(checkpoint)  # weights_only: a checkpoint cannot run code
    return checkpoint, ckpt, checkpoint_hparams(ckpt, checkpoint), find_run_dir(checkpoint)


def load_weights(model: torch.nn.Module, state_dict: dict[str, torch.Tensor], path: Path) -> None:
    """load_state_dict, with a mismatch (another net than config.yaml names) as one line."""
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0][:200]
        raise CheckpointError(
            f"the weights in {path} do not fit the net that config.yaml describes ({first});"
            " is the config from the same run?"
        ) from err


def checkpoint_hparams(ckpt: dict[str, Any], path: str | Path) -> dict[str, Any]:
    """The Classifier's saved hyperparameters; a checkpoint of another model has none of ours."""
    hparams = ckpt.get("hyper_parameters")
    needed = ("num_classes", "in_channels", "image_size")
    if not isinstance(hparams, dict) or any(key not in hparams for key in needed):
        raise CheckpointError(
            f"{path} holds no softcal Classifier hyperparameters ({', '.join(needed)});"
            " it was not written by scripts/train.py"
        )
    return hparams


def _short(names: list[str], limit: int = 6) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def check_checkpoint_fits(
    path: str | Path, hparams: dict[str, Any], datamodule: Any, classes: bool = True
) -> None:
    """Raise one CheckpointError line if the data's classes or image shape differ from the
    checkpoint's. ``classes=False`` checks only the input shape (prediction needs no labels).

    Run before loading weights: a wrong dataset would otherwise surface as a size-mismatch
    traceback from load_state_dict, or worse, as silently meaningless numbers.
    """
    size = int(hparams["image_size"])
    trained = f"{hparams['in_channels']}x{size}x{size}"
    data_size = tuple(int(s) for s in datamodule.image_size)
    data = f"{datamodule.in_channels}x{data_size[0]}x{data_size[1]}"
    name = getattr(datamodule, "name", type(datamodule).__name__)
    if trained != data:
        raise CheckpointError(
            f"{path} takes {trained} (channels x height x width) images but the data"
            f" ({name}) has {data}; use the data the model was trained on (check the data.*"
            " settings and overrides)"
        )
    if not classes:
        return
    saved_names = [str(n) for n in hparams.get("class_names") or []]
    data_names = [str(n) for n in datamodule.class_names]
    wrong_names = bool(saved_names) and saved_names != data_names
    if int(hparams["num_classes"]) != len(data_names) or wrong_names:
        raise CheckpointError(
            f"{path} was trained on {hparams['num_classes']} classes ({_short(saved_names)}) but"
            f" the data ({name}) has {len(data_names)} ({_short(data_names)}); its metrics on"
            " this data would be meaningless"
        )
