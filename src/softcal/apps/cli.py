"""The command line: LightningCLI over the Classifier and any ClassificationDataModule.

It only wires things together: the config (``--config``, default ``configs/mnist.yaml``), the
data facts linked into the model, the callbacks every run gets, and ``--ckpt_path`` resolved
to a run directory. What happens with the pieces is :mod:`softcal.apps.train`.
"""

from __future__ import annotations

import re
import sys
from argparse import ArgumentError
from pathlib import Path
from typing import Any, Literal

from lightning.pytorch import Callback, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint, ProgressBar, TQDMProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from softcal.allocator import FreezeStartupObjects, keep_freed_memory
from softcal.apps.config_files import default_config, resolve_config
from softcal.calibration.callbacks import CalibrationFigures, FitCalibration
from softcal.checks import check_epochs
from softcal.data import ClassificationDataModule, default_data_root
from softcal.errors import SoftcalError, softcal_cause
from softcal.model.module import Classifier
from softcal.runs.checkpoint_io import with_atomic_checkpoints
from softcal.runs.dashboard import RunDashboard
from softcal.runs.last_checkpoint import LastCheckpoint
from softcal.runs.run_dirs import latest_run_with_last

#: ``--calibrator`` values: softcal.calibration.calibrators.METHODS, spelled out for the parser.
CalibratorName = Literal["temperature", "vector", "matrix", "histogram", "isotonic"]


def with_config(args: list[str]) -> list[str]:
    """Resolve every ``--config`` value (a path, or a packaged config's name); prepend the
    default config when none is named."""
    args, named = list(args), False
    for i, arg in enumerate(args):
        if arg == "--config" and i + 1 < len(args):
            args[i + 1], named = str(resolve_config(args[i + 1])), True
        elif arg.startswith("--config="):
            args[i], named = f"--config={resolve_config(arg.split('=', 1)[1])}", True
    return args if named else ["--config", str(default_config()), *args]


class SoftcalCLI(LightningCLI):
    """LightningCLI with the data facts linked into the model and a checkpoint policy."""

    def __init__(self, args: list[str] | None = None, **kwargs: Any) -> None:
        if args is None:  # from the command line: rewrite argv (LightningCLI reads it itself)
            sys.argv[1:] = with_config(sys.argv[1:])
        else:
            args = with_config(list(args))
        self.command_line = [sys.argv[0], *(sys.argv[1:] if args is None else args)]  # TEXT tab
        try:
            super().__init__(
                model_class=Classifier,
                datamodule_class=ClassificationDataModule,
                subclass_mode_data=True,
                run=False,
                args=args,
                save_config_kwargs={"overwrite": True},  # a resumed run rewrites the same file
                parser_kwargs={
                    "description": "Train an image classifier and measure calibration.",
                    "exit_on_error": False,  # we print one line instead of the whole usage
                },
                **kwargs,
            )
        except ArgumentError as err:
            # jsonargparse explains unknown keys and wrong types well, over several lines.
            detail = " ".join(line.strip() for line in str(err).splitlines() if line.strip())
            raise SoftcalError(f"bad config or argument: {detail} (see --help)") from err
        except ValueError as err:  # jsonargparse wraps what a constructor raises in its own error
            cause = softcal_cause(err)
            if cause is None:
                raise
            raise cause from None  # the constructor's one line (e.g. batch_size=0), not the wrapper

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_class_arguments(ModelCheckpoint, "checkpoint", instantiate=False)
        parser.add_class_arguments(LastCheckpoint, "last_checkpoint", instantiate=False)
        parser.set_defaults({
            "checkpoint.monitor": "val/acc",
            "checkpoint.mode": "max",
            "checkpoint.save_last": False,  # last.ckpt is LastCheckpoint's job
            "checkpoint.filename": "best-epoch{epoch:02d}-step{step}",
            "checkpoint.auto_insert_metric_name": False,
        })  # fmt: skip
        parser.add_argument("--ckpt_path", type=str | None, default=None,
                            help="resume from a checkpoint, a run directory, or 'last' (the"
                                 " newest run of this experiment with a last.ckpt)")  # fmt: skip
        parser.add_argument("--calibrate", type=bool, default=True,
                            help="fit a temperature on the validation logits at each validation")  # fmt: skip
        parser.add_argument("--calibrator", type=CalibratorName, default="temperature",
                            help="the calibration the run stores and its calibrated metrics, predict"
                                 " and export use; fitted next to T at each validation (T is always"
                                 " fitted and reported)")  # fmt: skip
        parser.add_argument("--figures", type=bool, default=True,
                            help="reliability diagrams, confidence histograms and confusion"
                                 " matrices in TensorBoard at every validation and at test")  # fmt: skip
        parser.add_argument("--progress_refresh_rate", type=int, default=50,
                            help="progress bar updates every N steps (each costs time)")  # fmt: skip
        parser.add_argument("--keep_freed_memory", type=bool, default=True,
                            help="keep freed memory in the C heap for the next step instead of"
                                 " mapping it afresh (glibc; see softcal.allocator)")  # fmt: skip
        # The data knows its classes and image shape; the model is told, never configured twice.
        for name in ("num_classes", "in_channels", "class_names"):
            parser.link_arguments(f"data.{name}", f"model.{name}", apply_on="instantiate")
        parser.link_arguments("data.image_size", "model.image_size",
                              compute_fn=lambda size: int(size[0]), apply_on="instantiate")  # fmt: skip
        # One seed drives initialisation, the train/val split and the shuffling order.
        parser.link_arguments("seed_everything", "data.init_args.split_seed")

    def before_instantiate_classes(self) -> None:
        """Resolve ``--ckpt_path`` so a resumed run writes into its own run directory, and the
        data root, so the saved config.yaml names the data actually used (not ``null``)."""
        calibrator = self.config.get("calibrator") or "temperature"
        if not self.config.get("calibrate", True) and calibrator != "temperature":
            # Nothing would be fitted, and the run's HPARAMS row would name a method it never used.
            raise SoftcalError(
                f"--calibrator {calibrator} needs --calibrate true: with --calibrate false no"
                " calibrator is fitted; drop one of the two options"
            )
        self.resume_path = resolve_resume(self.config.get("ckpt_path"), self.config.trainer.get("logger"))
        if self.config.get("keep_freed_memory", True):
            keep_freed_memory()  # before the datasets and the net allocate anything
        data_args = self.config.data.get("init_args")
        if data_args is not None and "root" in data_args and not data_args["root"]:
            data_args["root"] = str(default_data_root().resolve())

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        """The Trainer with the config's callbacks plus the ones every softcal run gets."""
        config = {**self.config_init.get("trainer", {}), **kwargs}
        check_epochs(config.get("max_epochs"), config.get("max_steps"))
        given = config.get("callbacks") or []
        config["callbacks"] = [*(given if isinstance(given, list) else [given]), *self.run_callbacks(config)]
        config["plugins"] = with_atomic_checkpoints(config.get("plugins"))  # every .ckpt: atomic
        if self.save_config_callback and not config.get("fast_dev_run", False):
            config["callbacks"].append(
                self.save_config_callback(self.parser, self.config, **self.save_config_kwargs))
        try:
            return self.trainer_class(**config)
        except MisconfigurationException as err:
            raise trainer_settings_error(err) from err

    def run_callbacks(self, trainer_config: dict[str, Any]) -> list[Callback]:
        settings = self.config_init
        callbacks: list[Callback] = []
        if trainer_config.get("enable_checkpointing") is not False:
            callbacks += [ModelCheckpoint(**settings.checkpoint), LastCheckpoint(**settings.last_checkpoint)]
        if settings.get("calibrate", True):
            callbacks.append(FitCalibration(settings.get("calibrator") or "temperature"))
        if settings.get("figures", True):
            callbacks.append(CalibrationFigures(self.model.hparams.calibration_bins))
        given = trainer_config.get("callbacks") or []
        if trainer_config.get("enable_progress_bar", True) is not False and not any(
            isinstance(c, ProgressBar) for c in (given if isinstance(given, list) else [given])
        ):
            callbacks.append(TQDMProgressBar(refresh_rate=settings.get("progress_refresh_rate", 50)))
        # HPARAMS row, comparison charts, the run's story in TEXT (issue 13)
        callbacks.append(RunDashboard(self.config.as_dict(), self.command_line, trainer_config.get("logger")))
        callbacks.append(FreezeStartupObjects())
        return callbacks


def resolve_resume(ckpt_path: str | None, logger: Any) -> str | None:
    """The checkpoint ``--ckpt_path`` means (a file, a run directory or ``last``), pointing the
    TensorBoard logger at that run's own directory so the resumed run continues it."""
    if not ckpt_path:
        return None
    init = logger.get("init_args") if hasattr(logger, "get") else None
    path = Path(ckpt_path)
    if ckpt_path == "last":
        if init is None:
            raise SoftcalError("--ckpt_path last needs a TensorBoard logger to find the run")
        run_dir = latest_run_with_last(Path(init["save_dir"]), init["name"])
        if run_dir is None:
            where = Path(init["save_dir"]) / init["name"]
            raise SoftcalError(f"--ckpt_path last: no run in {where} has checkpoints/last.ckpt")
        path = run_dir / "checkpoints" / "last.ckpt"
    elif path.is_dir():
        path = path / "checkpoints" / "last.ckpt"
    if not path.is_file():
        raise SoftcalError(f"checkpoint {path} not found; pass a .ckpt, a run directory or last")
    run_dir = path.parent.parent
    if init is not None and path.parent.name == "checkpoints":
        # Continue in the same run directory: same TensorBoard run, same checkpoints folder.
        init["save_dir"] = str(run_dir.parent.parent)
        init["name"] = run_dir.parent.name
        init["version"] = run_dir.name
    return str(path)


#: Words in Lightning's message that mark an accelerator or device problem: the only kind that
#: "use another accelerator, or fewer devices" fixes.
_DEVICE_WORDS = re.compile(r"accelerator|\bgpus?\b|cuda|\bmps\b|\btpu|\bdevices?\b", re.IGNORECASE)


def trainer_settings_error(err: MisconfigurationException) -> SoftcalError:
    """One line for a Trainer that refuses its settings; Lightning's first line names them."""
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    if _DEVICE_WORDS.search(first):  # e.g. accelerator: gpu on a machine without one
        return SoftcalError(
            f"trainer settings do not fit this machine: {first} - use"
            " --trainer.accelerator cpu (or auto), or fewer --trainer.devices"
        )
    return SoftcalError(
        f"invalid trainer settings: {first} - change the setting it names"
        " (--print_config shows the resolved config)"
    )
