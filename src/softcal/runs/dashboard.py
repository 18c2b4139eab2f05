"""TensorBoard that compares runs: the HPARAMS row, one chart per comparison, the run's story.

:class:`RunDashboard` writes, into the run's own event files (no sub-run):

    HPARAMS         the same columns for every run (softcal.runs.run_hparams) and this run's
                    hyperparameters, when training starts; the metric columns are scalar tags
                    (test/*, test_calibrated/*, final/*) so they show the latest values, and
                    a resumed run, being the same directory, keeps its one row
    CUSTOM SCALARS  train vs val loss and accuracy, raw vs calibrated ECE/NLL/Brier at test,
                    val ECE and temperature per epoch, each on one chart
    TEXT            the command line and the resolved config.yaml when training starts, the
                    results table exactly as printed when the run ends (:meth:`finish`)

A run that fails before training starts (data not found, a bad checkpoint) removes the run
directory its logger created, so no empty run appears in TensorBoard; a run that fails later
keeps everything it logged.
"""

from __future__ import annotations

import re
import shlex
import shutil
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.compat.proto.summary_pb2 import Summary
from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2, summary_v2

from softcal.runs.run_hparams import experiment_infos, hparam_values

#: The custom-scalars layout: category -> chart title -> tags drawn on that one chart.
CHARTS: dict[str, dict[str, list[str]]] = {
    "train vs val": {
        "loss: train vs val": ["train/loss", "val/loss"],
        "accuracy: train vs val": ["train/acc", "val/acc"],
    },
    "calibration": {
        "test ECE: raw vs calibrated": ["test/ece", "test_calibrated/ece"],
        "test NLL: raw vs calibrated": ["test/nll", "test_calibrated/nll"],
        "test Brier: raw vs calibrated": ["test/brier", "test_calibrated/brier"],
        "val ECE per epoch": ["val/ece"],
        "val temperature per epoch": ["val/temperature"],
    },
}


def custom_scalars_layout() -> dict[str, dict[str, list[Any]]]:
    """:data:`CHARTS` in SummaryWriter.add_custom_scalars' form; the tags are regular
    expressions there, so each is anchored and escaped (test/ece must not match test/mce)."""
    return {
        category: {title: ["Multiline", [f"^{re.escape(tag)}$" for tag in tags]]
                   for title, tags in charts.items()}
        for category, charts in CHARTS.items()
    }  # fmt: skip


def fenced(text: str) -> str:
    """Markdown that TensorBoard's TEXT tab shows verbatim, in a fixed-width font."""
    return f"```\n{text}\n```"


class RunDashboard(L.Callback):
    """HParams row, comparison charts and text for one training run (rank 0 writes).

    Args:
        config: the resolved config in nested form (what config.yaml holds); the HPARAMS row
            is read from it.
        command_line: shown in the TEXT tab.
        logger: the run's TensorBoardLogger, given before the Trainer creates its directory,
            so a run that fails before training removes only a directory it created itself.
    """

    def __init__(self, config: Mapping[str, Any], command_line: Sequence[str], logger: Any) -> None:
        self.config = dict(config)
        self.command_line = list(command_line)
        self.started_at = time.monotonic()
        self.earlier_wall_time = 0.0  # seconds run by earlier processes of a resumed run
        self.training_started = False
        # The run directory and its parents that do not exist yet: this process creates them.
        self.created: list[Path] = []
        if isinstance(logger, TensorBoardLogger) and logger.log_dir:
            path = Path(logger.log_dir)
            while not path.exists() and path != path.parent:
                self.created.append(path)
                path = path.parent

    # ------------------------------------------------------------------ wall time
    def wall_time(self) -> float:
        """Seconds this run has taken: this process so far plus the processes it resumes."""
        return self.earlier_wall_time + time.monotonic() - self.started_at

    def state_dict(self) -> dict[str, Any]:  # saved in every checkpoint, restored on resume
        return {"wall_time_s": self.wall_time()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.earlier_wall_time = float(state_dict.get("wall_time_s", 0.0))

    # ------------------------------------------------------------------ hooks
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.training_started = True
        # trainer.log_dir broadcasts from rank 0: every rank must ask, or DDP's collectives hang.
        log_dir = Path(trainer.log_dir or ".")
        writer = _writer(trainer)
        if writer is None:
            return
        hparams, metrics = experiment_infos()
        experiment = api_pb2.Experiment(hparam_infos=hparams, metric_infos=metrics)
        writer.file_writer.add_summary(_hparams_summary(metadata.EXPERIMENT_TAG, experiment=experiment))
        # The trial id is the run's own name: runs with equal hyperparameters stay two rows.
        run_name = "/".join(log_dir.parts[-2:])  # <experiment>/version_N
        writer.file_writer.add_summary(summary_v2.hparams_pb(self.hparams(trainer), trial_id=run_name))
        writer.add_custom_scalars(custom_scalars_layout())
        step = trainer.global_step
        writer.add_text("run/command", fenced(shlex.join(self.command_line)), step)
        config_file = log_dir / "config.yaml"
        if config_file.is_file():  # written by LightningCLI's SaveConfigCallback at setup
            writer.add_text("run/config", fenced(config_file.read_text()), step)
        writer.flush()

    def hparams(self, trainer: L.Trainer) -> dict[str, str | float | bool]:
        """This run's HPARAMS row."""
        config = self.config
        facts: dict[str, Any] = {
            "accelerator": type(trainer.accelerator).__name__.removesuffix("Accelerator").lower(),
            "devices": trainer.num_devices,
            "precision": str(trainer.precision),
        }
        name = getattr(trainer.datamodule, "name", None)
        if name:
            facts["dataset"] = name
        return hparam_values(config, **facts)

    def finish(self, trainer: L.Trainer, results: Mapping[str, Any], table: str, best_epoch: int) -> None:
        """The end of a successful run: the final scalars (``best_epoch``: the epoch of the
        tested weights, 0-based as in best-epochNN-*.ckpt), the results table as printed, and
        the session's end (status: success)."""
        writer = _writer(trainer)
        if writer is None:
            return
        step = trainer.global_step
        if results.get("temperature") is not None:  # not fitted: the cell stays empty
            writer.add_scalar("final/temperature", float(results["temperature"]), step)
        writer.add_scalar("final/best_epoch", best_epoch, step)
        writer.add_scalar("final/wall_time_s", self.wall_time(), step)
        writer.add_text("run/results", fenced(table), step)
        end = plugin_data_pb2.SessionEndInfo(status=api_pb2.STATUS_SUCCESS, end_time_secs=time.time())
        writer.file_writer.add_summary(_hparams_summary(metadata.SESSION_END_INFO_TAG, session_end_info=end))
        writer.flush()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule,
                     exception: BaseException) -> None:  # fmt: skip
        """Before training started: remove the run directory this process created (it holds
        nothing to look at). Later: keep it; the session's end is not written, so a resumed
        run that succeeds is marked a success."""
        if self.training_started or not trainer.is_global_zero or not self.created:
            return
        for logger in trainer.loggers:  # close the event file before its directory goes
            logger.finalize("failed")
        shutil.rmtree(self.created[0], ignore_errors=True)
        for parent in self.created[1:]:  # e.g. runs/<experiment>/, if nothing else is in it
            if parent.is_dir() and not any(parent.iterdir()):
                parent.rmdir()


def finish_dashboard(trainer: L.Trainer, results: Mapping[str, Any], table: str, best_epoch: int) -> None:
    """Tell the run's :class:`RunDashboard` (if it has one) that the run ended with these
    results and this printed table, having tested the weights of epoch ``best_epoch``."""
    for callback in trainer.callbacks:
        if isinstance(callback, RunDashboard):
            callback.finish(trainer, results, table, best_epoch)


def _hparams_summary(tag: str, **data: Any) -> Summary:
    """One hparams-plugin record (what tensorboard's summary_v2 writes for the session start),
    built here because the API has no tensorflow-free writer for the experiment and the end."""
    summary = Summary()
    plugin_data = metadata.create_summary_metadata(plugin_data_pb2.HParamsPluginData(**data))
    summary.value.add(tag=tag, metadata=plugin_data, tensor=metadata.NULL_TENSOR)
    return summary


def _writer(trainer: L.Trainer) -> Any:
    """The run's SummaryWriter on rank 0; None without a TensorBoard logger."""
    if not trainer.is_global_zero:
        return None
    logger = next((lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)), None)
    return logger.experiment if logger is not None else None
