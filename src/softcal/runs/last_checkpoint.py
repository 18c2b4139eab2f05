"""``checkpoints/last.ckpt``, kept current by a callback."""

from __future__ import annotations

from pathlib import Path

import lightning as L


class LastCheckpoint(L.Callback):
    """Keep ``checkpoints/last.ckpt`` current: at the end of every epoch and, optionally,
    every ``every_n_train_steps`` optimizer steps, so a crash loses at most that much work.

    ModelCheckpoint's own ``save_last`` defers mid-epoch saves until the monitored validation
    metric exists, which would leave a long first epoch unprotected; this callback has no such
    condition. The file goes through Lightning's checkpoint writer, which writes a temporary
    file and moves it into place (fsspec transaction): a kill mid-write keeps the old file.
    """

    FILENAME = "last.ckpt"

    def __init__(self, every_n_train_steps: int = 0) -> None:
        """
        Args:
            every_n_train_steps: also save mid-epoch every this many steps (0: epoch ends only).
        """
        self.every_n_train_steps = every_n_train_steps
        self.last_model_path = ""

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

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        n = self.every_n_train_steps
        if n > 0 and trainer.global_step % n == 0:
            self._save(trainer)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._save(trainer)
