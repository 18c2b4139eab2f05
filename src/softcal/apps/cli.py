"""The command line: LightningCLI over the Classifier and any ClassificationDataModule.

It only wires things together: the command line as typed made LightningCLI's
(:mod:`softcal.apps.command_line`: configs and their bases, the options' aliases), the
config's schema beyond model, data and trainer (:mod:`softcal.runs.run_config`, which also
reopens runs), the callbacks every run gets, built from their config groups, and
``--ckpt_path`` resolved to a run directory. What happens with the pieces is
:mod:`softcal.apps.train`.
"""

from __future__ import annotations

import re
import sys
from argparse import ArgumentError
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lightning.pytorch import Callback, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint, ProgressBar, TQDMProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from softcal.allocator import FreezeStartupObjects, keep_freed_memory
from softcal.apps.command_line import command_line
from softcal.apps.train_help import EPILOG, USAGE, TrainHelpFormatter, print_help, title_groups
from softcal.calibration.callbacks import CalibrationFigures, FitCalibration
from softcal.checks import check_epochs
from softcal.data import ClassificationDataModule, default_data_root
from softcal.errors import SoftcalError, softcal_cause
from softcal.model.module import Classifier
from softcal.runs.checkpoint_io import with_atomic_checkpoints
from softcal.runs.config_problems import config_problem
from softcal.runs.dashboard import RunDashboard
from softcal.runs.final_validation import FinalValidation
from softcal.runs.last_checkpoint import LastCheckpoint
from softcal.runs.run_config import add_training_arguments, check_training_config
from softcal.runs.run_dirs import check_not_a_folder_of_runs, checkpoints_near, latest_run_with_last


class SoftcalCLI(LightningCLI):
    """LightningCLI with the data facts linked into the model and a checkpoint policy."""

    def __init__(self, args: list[str] | None = None, extra_callbacks: Sequence[Callback] = (),
                 **kwargs: Any) -> None:  # fmt: skip
        self.extra_callbacks = list(extra_callbacks)  # after every run's own (see run_callbacks)
        if args is None:  # from the command line: rewrite argv (LightningCLI reads it itself)
            sys.argv[1:] = command_line(sys.argv[1:])
        else:
            args = command_line(args)
        self.command_line = [sys.argv[0], *(sys.argv[1:] if args is None else args)]  # TEXT tab
        try:
            super().__init__(
                model_class=Classifier,
                datamodule_class=ClassificationDataModule,
                subclass_mode_data=True,
                run=False,
                args=args,
                save_config_kwargs={"overwrite": True},  # a resumed run rewrites the same file
                # The model's own optimizer and schedule (--model.optimizer, --model.lr_schedule)
                # are the only ones: LightningCLI's --optimizer/--lr_scheduler would replace them.
                auto_configure_optimizers=False,
                parser_kwargs={
                    "description": "Train an image classifier and measure calibration.",
                    "exit_on_error": False,  # we print one line instead of the whole usage
                    "formatter_class": TrainHelpFormatter,  # one screen (softcal.apps.train_help)
                    "usage": USAGE,
                    "epilog": EPILOG,
                },
                **kwargs,
            )
        except ArgumentError as err:  # jsonargparse's lines, one line, "did you mean" added
            detail = config_problem(err, getattr(self, "parser", None))
            raise SoftcalError(f"bad config or argument: {detail} (see --help)") from err
        except ValueError as err:  # jsonargparse wraps what a constructor raises in its own error
            cause = softcal_cause(err)
            if cause is None:
                raise
            raise cause from None  # the constructor's one line (e.g. batch_size=0), not the wrapper

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        """The callbacks' groups, the run's options and the links: the run config's schema."""
        add_training_arguments(parser)
        title_groups(parser)

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        """``--help`` shows the values the configs given set (the default config's when none
        is given), which needs the command line parsed first; see softcal.apps.train_help."""
        argv = list(sys.argv[1:] if args is None else args)
        if "-h" in argv or "--help" in argv:
            print_help(parser, [a for a in argv if a not in ("-h", "--help")])
        super().parse_arguments(parser, args)

    def before_instantiate_classes(self) -> None:
        """Resolve ``--ckpt_path`` so a resumed run writes into its own run directory, and the
        data root, so the saved config.yaml names the data actually used (not ``null``)."""
        check_training_config(self.config)
        self.resume_path = resolve_resume(self.config.get("ckpt_path"), self.config.trainer.get("logger"))
        if self.config.get("keep_freed_memory", True):
            keep_freed_memory()  # before the datasets and the net allocate anything
        data_args = self.config.data.get("init_args")
        if data_args is not None and "root" in data_args and not data_args["root"]:
            data_args["root"] = str(default_data_root().resolve())

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        """The Trainer with the config's callbacks plus the ones every softcal run gets."""
        self.record_measured_statistics()  # before the config is handed to be saved
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

    def record_measured_statistics(self) -> None:
        """``mean: auto`` / ``std: auto`` (an image folder's own statistics, measured when its
        datamodule was built) become the numbers in the config that config.yaml saves, so a
        reopened run normalises as training did without reading the training folder."""
        args = self.config.data.get("init_args")
        for key in ("mean", "std"):
            if args is not None and args.get(key) == "auto":
                args[key] = list(getattr(self.datamodule, key))

    def run_callbacks(self, trainer_config: dict[str, Any]) -> list[Callback]:
        settings = self.config_init
        callbacks: list[Callback] = []
        if trainer_config.get("enable_checkpointing") is not False:
            callbacks += [ModelCheckpoint(**settings.checkpoint), LastCheckpoint(**settings.last_checkpoint)]
        # each from its config group (calibration:, figures:); disabled ones do nothing. AURC,
        # E-AURC and risk at coverage are the module's own test metrics; their figure is drawn
        # by CalibrationFigures with the others.
        # the final weights are validated (and calibrated), mid-epoch too; optionally only they
        callbacks.append(FinalValidation(every_epoch=settings.get("validate_every_epoch", True)))
        callbacks.append(FitCalibration(**settings.calibration))
        callbacks.append(CalibrationFigures(**settings.figures, n_bins=self.model.hparams.calibration_bins))
        given = trainer_config.get("callbacks") or []
        if trainer_config.get("enable_progress_bar", True) is not False and not any(
            isinstance(c, ProgressBar) for c in (given if isinstance(given, list) else [given])
        ):
            callbacks.append(TQDMProgressBar(refresh_rate=settings.get("progress_refresh_rate", 50)))
        # HPARAMS row, comparison charts, the run's story in TEXT
        callbacks.append(RunDashboard(self.config.as_dict(), self.command_line, trainer_config.get("logger")))
        callbacks.append(FreezeStartupObjects())
        return [*callbacks, *self.extra_callbacks]


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
        if not (path / "config.yaml").is_file():
            check_not_a_folder_of_runs(path, "last.ckpt")  # runs/mnist for runs/mnist/version_0
        path = path / "checkpoints" / "last.ckpt"
    if not path.is_file():
        raise SoftcalError(f"checkpoint {path} not found; pass a .ckpt, a run directory or last"
                           f"{checkpoints_near(path)}")  # fmt: skip
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
