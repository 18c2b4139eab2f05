"""Reading a checkpoint safely and checking that it fits the model and data it is used with.

Every problem a user can meet here - a missing, truncated or foreign file, weights of another
net, a model trained on other classes or image shapes - is one :class:`CheckpointError` line
that names the file and what to do, raised before any weights are loaded where possible.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import torch

from softcal.errors import CheckpointError

#: The Classifier hyperparameters that come from the data the model was trained on.
DATA_FACTS = ("num_classes", "in_channels", "image_size", "class_names")


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


def checkpoint_hparams(ckpt: dict[str, Any], path: str | Path) -> dict[str, Any]:
    """The Classifier's saved hyperparameters; a checkpoint of another model has none of ours."""
    hparams = ckpt.get("hyper_parameters")
    needed = DATA_FACTS[:3]
    if not isinstance(hparams, dict) or any(key not in hparams for key in needed):
        raise CheckpointError(
            f"{path} holds no softcal Classifier hyperparameters ({', '.join(needed)});"
            " it was not written by scripts/train.py"
        )
    return hparams


def load_weights(model: torch.nn.Module, state_dict: dict[str, torch.Tensor], path: Path) -> None:
    """load_state_dict, with a mismatch (another net than config.yaml names) as one line.

    Checkpoints that keep T in the older ``temperature`` buffers load strictly too: the
    Classifier maps those keys onto its calibration first
    (:func:`softcal.calibration.run_calibration.upgrade_state_dict`)."""
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0][:200]
        raise CheckpointError(
            f"the weights in {path} do not fit the net that config.yaml describes ({first});"
            " is the config from the same run?"
        ) from err


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
