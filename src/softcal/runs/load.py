"""Reopen a finished run: ``load_run(path)`` is the one way evaluate, predict and export do it.

A run is rebuilt from two files it left behind and nothing else:

* the checkpoint (read with ``weights_only=True``) gives the weights, the run's calibration
  (``calibration._extra_state``; older checkpoints' ``temperature`` buffers are mapped onto it)
  and the data facts the model was built with (classes, channels, image size);
* ``config.yaml``, the config LightningCLI resolved and saved, gives the net, the datamodule
  (for its preprocessing, class names and splits) and the Trainer settings, with the same
  types and the same ``--data.* / --model.* / --trainer.*`` overrides as training accepts.

The training data is not needed to reopen a run: the classes come from the checkpoint, so a
model can predict and be exported on a machine that never saw its dataset.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from softcal.errors import CheckpointError, SoftcalError, first_line, softcal_cause
from softcal.runs.checkpoints import (
    DATA_FACTS,
    check_checkpoint_fits,
    checkpoint_hparams,
    load_checkpoint,
    load_weights,
)
from softcal.runs.run_dirs import find_run_dir, resolve_checkpoint

if TYPE_CHECKING:
    from jsonargparse import ArgumentParser, Namespace

    from softcal.calibration.run_calibration import RunCalibration
    from softcal.data import ClassificationDataModule
    from softcal.model.module import Classifier

# Lightning (behind softcal.data and softcal.model) is imported only once the checkpoint has
# been read: a wrong path or a broken file is reported in a second, not after the imports.

#: Trainer settings that only make sense while training (the run's logger, its callbacks
#: such as checkpointing) or that name objects: a reopened run leaves them out.
#: num_nodes belongs to a launch (torchrun, srun): a multi-node run is evaluated wherever it is.
TRAINING_ONLY = ("logger", "callbacks", "plugins", "profiler", "model_registry", "num_nodes")

#: Command-line options that override a reopened run's saved config.
OVERRIDE_PREFIXES = ("--data", "--model", "--trainer", "--seed_everything")

#: How the apps describe the run argument in their --help.
RUN_HELP = "a run directory (its best checkpoint) or a .ckpt file inside one"


def run_argument_parser(prog: str, description: str) -> argparse.ArgumentParser:
    """The command line of an app that reopens one run: ``--ckpt RUN_DIR_OR_CKPT``."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--ckpt", required=True, metavar="RUN_DIR_OR_CKPT", help=RUN_HELP)
    return parser


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


def split_overrides(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """Separate ``--data.* / --model.* / --trainer.* / --seed_everything`` overrides (with
    their values) from an app's own arguments; argparse alone would take an override's value
    for a path. Returns (own arguments, overrides for :func:`load_run`)."""
    own: list[str] = []
    overrides: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        name = arg.split("=", 1)[0]
        if any(name == p or name.startswith(p + ".") for p in OVERRIDE_PREFIXES):
            overrides.append(arg)
            if "=" not in arg and i + 1 < len(argv):
                overrides.append(argv[i + 1])
                i += 1
        else:
            own.append(arg)
        i += 1
    return own, overrides


def read_config(path: Path) -> dict[str, Any]:
    """config.yaml as a dict; it must at least name the model and the data."""
    import yaml

    try:
        saved = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise CheckpointError(f"{path} is not a readable run config ({first_line(err)})") from err
    if not isinstance(saved, dict) or not isinstance(saved.get("model"), dict) or not saved.get("data"):
        raise CheckpointError(f"{path} is not a run config: it has no model and data entries")
    return saved


def run_parser() -> ArgumentParser:
    """The part of the training CLI's parser that describes a trained model.

    The same types as training (so overrides are checked the same way and ``--data
    FashionMNISTDataModule`` finds the class), the same seed link (the validation split is
    carved with the run's seed), and the model's data facts left to the checkpoint.
    """
    from jsonargparse import ArgumentParser
    from lightning.pytorch import Trainer

    from softcal.data import ClassificationDataModule
    from softcal.model.module import Classifier

    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--seed_everything", type=bool | int, default=True)
    parser.add_subclass_arguments(ClassificationDataModule, "data", required=True)
    parser.add_class_arguments(Classifier, "model", skip=set(DATA_FACTS))
    parser.add_class_arguments(Trainer, "trainer", skip=set(TRAINING_ONLY), instantiate=False,
                               fail_untyped=False)  # fmt: skip
    parser.link_arguments("seed_everything", "data.init_args.split_seed")
    return parser


def rebuild(
    path: Path, saved: dict[str, Any], overrides: Sequence[str], hparams: dict[str, Any]
) -> tuple[Namespace, Namespace]:
    """(instantiated data and model, the parsed config) from the saved config's model, data
    and trainer entries with the overrides on top; the model's data facts are the
    checkpoint's own (``hparams``), since the weights were shaped by them."""
    parser = run_parser()
    trainer = {k: v for k, v in (saved.get("trainer") or {}).items() if k not in TRAINING_ONLY}
    entries = {"model": saved["model"], "data": saved["data"], "trainer": trainer}
    if "seed_everything" in saved:
        entries["seed_everything"] = saved["seed_everything"]
    try:
        cfg = parser.parse_object(entries)
    except Exception as err:  # jsonargparse reports bad class paths and values many ways
        raise _config_error(path, err) from err
    if overrides:
        try:
            cfg = parser.parse_args(list(overrides), namespace=cfg)
        except Exception as err:
            detail = " ".join(line.strip() for line in str(err).splitlines() if line.strip())
            raise SoftcalError(f"bad override: {detail[:300]}") from err
    for key in DATA_FACTS:
        cfg.model[key] = hparams.get(key)
    try:
        return parser.instantiate(cfg), cfg
    except SoftcalError:
        raise
    except Exception as err:  # a class that fails to build: bad values, a missing module
        cause = softcal_cause(err)
        if cause is not None:
            raise cause from None  # e.g. an override's batch_size=0, wrapped by jsonargparse
        raise _config_error(path, err) from err


def _config_error(path: Path, err: BaseException) -> CheckpointError:
    return CheckpointError(f"{path} cannot be used to rebuild the model ({first_line(err)})")
