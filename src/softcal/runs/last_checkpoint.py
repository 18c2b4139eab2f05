"""``checkpoints/last.ckpt``, kept current by a callback, and saved once more on SIGTERM."""

from __future__ import annotations

from pathlib import Path

import lightning as L
from lightning.pytorch.utilities.exceptions import SIGTERMException


class LastCheckpoint(L.Callback):
    """Keep ``checkpoints/last.ckpt`` current: at the end of every epoch and, optionally,
    every ``every_n_train_steps`` optimizer steps, so a crash loses at most that much work.

    ModelCheckpoint's own ``save_last`` defers mid-epoch saves until the monitored validation
    metric exists, which would leave a long first epoch unprotected; this callback has no such
    condition. The file goes through the Trainer's CheckpointIO, which the CLI makes
    :class:`softcal.runs.checkpoint_io.AtomicCheckpointIO`: a temporary file in the same
    directory renamed over the old one, so a kill or a full disk mid-write keeps the old file.

    SIGTERM (what schedulers send before they kill a job): Lightning's signal connector notes
    it and raises :class:`SIGTERMException` after the current training batch; this callback's
    ``on_exception`` then saves ``last.ckpt`` at that exact point, so ``--ckpt_path last``
    resumes with nothing lost. Other exceptions save nothing (a NaN loss must not overwrite
    the last good weights), and neither does a SIGTERM during validation (a half-run
    validation is not a state to resume from): the previous ``last.ckpt`` stays.
    """

    FILENAME = "last.ckpt"

    def __init__(self, every_n_train_steps: int = 0) -> None:
        """
        Args:
            every_n_train_steps: also save mid-epoch every this many steps (0: epoch ends only).
        """
        self.every_n_train_steps = every_n_train_steps
        self.last_model_path = ""
        self.saved_at: tuple[int, int] | None = None  # (global step, epoch) of the last save

    def _path(self, trainer: L.Trainer) -> Path | None:
        best = trainer.checkpoint_callback
        if best is not None and getattr(best, "dirpath", None):
            return Path(best.dirpath) / self.FILENAME
        if trainer.log_dir:
            return Path(trainer.log_dir) / "checkpoints" / self.FILENAME
        return None

    def _save(self, trainer: L.Trainer) -> None:
        if trainer.fast_dev_run or trainer.sanity_checking:
            return
        path = self._path(trainer)
        if path is not None:
            trainer.save_checkpoint(path, weights_only=False)  # full state: resumable
            self.last_model_path = str(path)
            self.saved_at = (trainer.global_step, trainer.current_epoch)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        n = self.every_n_train_steps
        if n > 0 and trainer.global_step % n == 0:
            self._save(trainer)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._save(trainer)

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if not isinstance(exception, SIGTERMException) or not trainer.training:
            return
        if self.saved_at is None or self.saved_at[0] != trainer.global_step:  # else: saved here already
            self._save(trainer)


def sigterm_message(trainer: L.Trainer) -> str:
    """The line a run stopped by SIGTERM ends with: what was saved, and how to go on."""
    saved = [c for c in trainer.callbacks if isinstance(c, LastCheckpoint) and c.saved_at is not None]
    if not saved:
        return "terminated (SIGTERM) before any checkpoint was saved; start the run again"
    step, epoch = saved[0].saved_at
    return (
        f"terminated (SIGTERM): {saved[0].last_model_path} holds step {step} (epoch {epoch});"
        " resume with --ckpt_path last (or --ckpt_path <run directory>)"
    )
