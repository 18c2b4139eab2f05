"""Reopen a finished run: ``load_run(path)`` is the one way evaluate, predict and export do it.

A run is rebuilt from two files it left behind and nothing else:

* the checkpoint (read with ``weights_only=True``) gives the weights, the run's calibration
  (``calibration._extra_state``; older checkpoints' ``temperature`` buffers are mapped onto it)
  and the data facts the model was built with (classes, channels, image size);
* ``config.yaml``, the config LightningCLI resolved and saved, gives the net, the datamodule
  (for its preprocessing, class names and splits) and the Trainer settings, with the same
  types and the same ``--data.* / --model.* / --trainer.*`` overrides as training accepts
  (the parser is :func:`softcal.runs.run_config.run_parser`, built as training builds it).

The training data is not needed to reopen a run: the classes come from the checkpoint, so a
model can predict and be exported on a machine that never saw its dataset.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from softcal.runs.checkpoints import check_checkpoint_fits, checkpoint_hparams, load_checkpoint, load_weights
from softcal.runs.run_config import read_config, rebuild, split_overrides
from softcal.runs.run_dirs import find_run_dir, resolve_checkpoint

# split_overrides: the apps that call load_run import it from here with it
__all__ = ["RUN_HELP", "LoadedRun", "load_run", "read_config", "rebuild", "split_overrides"]

if TYPE_CHECKING:
    from softcal.calibration.run_calibration import RunCalibration
    from softcal.data import ClassificationDataModule
    from softcal.model.module import Classifier

# Lightning (behind softcal.data and softcal.model) is imported only once the checkpoint has
# been read: a wrong path or a broken file is reported in a second, not after the imports.
# The config's schema and parser are softcal.runs.run_config's, shared with training.

#: How the apps describe the run argument in their --help.
RUN_HELP = "a run directory (its best checkpoint) or a .ckpt file inside one"


@dataclass
class LoadedRun:
    """A trained Classifier (weights loaded, eval mode, CPU) and everything around it."""

    model: Classifier
    #: instantiated, not set up: ``preprocess``, ``class_names`` and ``setup()`` for splits
    datamodule: ClassificationDataModule
    checkpoint: Path
    run_dir: Path
    #: config.yaml as the run saved it (before overrides)
    config: dict[str, Any] = field(repr=False)
    #: Trainer keyword arguments from the config, overrides applied, TRAINING_ONLY left out
    trainer: dict[str, Any] = field(repr=False)

    @property
    def calibration(self) -> RunCalibration:
        """The run's calibration (method, T, how to apply it, its name): the model's own."""
        return self.model.calibration

    @property
    def class_names(self) -> list[str]:
        names = self.model.hparams.get("class_names")
        return [str(n) for n in names] if names else [str(i) for i in range(self.num_classes)]

    @property
    def num_classes(self) -> int:
        return int(self.model.hparams.num_classes)

    @property
    def in_channels(self) -> int:
        return int(self.model.hparams.in_channels)

    @property
    def image_size(self) -> tuple[int, int]:
        size = int(self.model.hparams.image_size)
        return size, size

    def uncalibrated_warning(self, what: str) -> str | None:
        """A warning line when the run has no fitted calibration, else None."""
        if self.calibration.fitted:
            return None
        return (f"warning: {self.checkpoint.name} has no fitted temperature (trained with"
                f" --calibrate false?); {what} are uncalibrated (T = 1)")  # fmt: skip


def load_run(
    path: str | Path, overrides: Sequence[str] = (), *, check_classes: bool = False
) -> LoadedRun:
    """Reopen a run directory (its best checkpoint) or a .ckpt inside one.

    ``overrides`` are command-line style (``--data.root DIR``, ``--trainer.accelerator cpu``,
    ``--data softcal.data.FashionMNISTDataModule``). The data must take the checkpoint's image
    shape; with ``check_classes`` (evaluation, which compares labels) it must also have the
    checkpoint's classes. Every problem is one SoftcalError line, raised before weights load.
    """
    checkpoint = resolve_checkpoint(path)
    ckpt = load_checkpoint(checkpoint)
    hparams = checkpoint_hparams(ckpt, checkpoint)
    run_dir = find_run_dir(checkpoint)
    saved = read_config(run_dir / "config.yaml")
    built, cfg = rebuild(run_dir / "config.yaml", saved, overrides, hparams)
    check_checkpoint_fits(checkpoint, hparams, built.data, classes=check_classes)
    model: Classifier = built.model
    load_weights(model, ckpt["state_dict"], checkpoint)
    model.eval()
    return LoadedRun(
        model=model,
        datamodule=built.data,
        checkpoint=checkpoint.resolve(),
        run_dir=run_dir,
        config=saved,
        trainer=cfg.trainer.as_dict(),
    )
