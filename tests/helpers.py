"""Test-only pieces that a config can name by class path (tests/ is importable from the repo)."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterable

import lightning as L
import pytest
import torch
from torch import nn

from softcal.model.nets import DigitCNN


class KillAtStep(L.Callback):
    """SIGKILL this very process once ``step`` optimizer steps are done: a crash with no
    chance to clean up, at an exact, repeatable point in the middle of an epoch. With
    ``rank``, only the process of that global rank dies (one node of several)."""

    def __init__(self, step: int, rank: int | None = None) -> None:
        self.step, self.rank = step, rank

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step >= self.step and self.rank in (None, trainer.global_rank):
            os.kill(os.getpid(), signal.SIGKILL)


class InterruptAtStep(L.Callback):
    """Raise KeyboardInterrupt (what Ctrl-C raises) once ``step`` optimizer steps are done."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step >= self.step:
            raise KeyboardInterrupt


class NaNAfter(nn.Module):
    """DigitCNN whose logits turn to NaN from the ``after``-th training forward pass on."""

    def __init__(self, in_channels: int, num_classes: int, image_size: int = 28,
                 after: int = 6) -> None:  # fmt: skip
        super().__init__()
        self.net = DigitCNN(in_channels, num_classes, image_size)
        self.after, self.calls = after, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.net(x)
        if self.training:
            self.calls += 1
            if self.calls > self.after:
                return logits * float("nan")
        return logits


class TermAtStep(L.Callback):
    """Send this process SIGTERM (what a scheduler sends before it kills a job) once ``step``
    optimizer steps are done; Lightning's signal connector takes it from there."""

    def __init__(self, step: int) -> None:
        self.step, self.sent = step, False

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step >= self.step and not self.sent:
            self.sent = True
            os.kill(os.getpid(), signal.SIGTERM)


class FileSizeLimitAtStep(L.Callback):
    """Once ``step`` optimizer steps are done, keep a copy of ``last.ckpt`` as
    ``last.ckpt.before`` and cap the size of any file this process writes at half of it
    (``RLIMIT_FSIZE``, SIGXFSZ ignored so a write fails with EFBIG): the next checkpoint runs
    out of room part-way, as on a full disk."""

    def __init__(self, step: int) -> None:
        self.step, self.done = step, False

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        import resource
        import shutil
        from pathlib import Path

        if trainer.global_step < self.step or self.done:
            return
        self.done = True
        last = Path(trainer.checkpoint_callback.dirpath) / "last.ckpt"
        shutil.copyfile(last, last.with_name("last.ckpt.before"))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        hard = resource.getrlimit(resource.RLIMIT_FSIZE)[1]
        resource.setrlimit(resource.RLIMIT_FSIZE, (last.stat().st_size // 2, hard))


class RecordTrainingImages(L.Callback):
    """Write a hash of every training image this process trained on to
    ``folder/rank<global rank>.txt`` (one per line) when training ends: which shard it got."""

    def __init__(self, folder: str) -> None:
        self.folder, self.hashes = folder, []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        import hashlib

        images = batch[0].detach().cpu().contiguous()
        self.hashes += [hashlib.sha1(image.numpy().tobytes()).hexdigest() for image in images]

    def on_train_end(self, trainer, pl_module) -> None:
        from pathlib import Path

        out = Path(self.folder) / f"rank{trainer.global_rank}.txt"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text("\n".join(self.hashes) + "\n")


@torch.no_grad()
def collect_logits(
    net: torch.nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    preprocess: Callable[[torch.Tensor], torch.Tensor],
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``net`` in eval mode over (uint8 images, labels) batches; return logits and labels."""
    was_training = net.training
    net.eval()
    all_logits, all_labels = [], []
    try:
        for images, labels in batches:
            x = preprocess(images.to(device, non_blocking=True))
            all_logits.append(net(x).float().cpu())
            all_labels.append(labels.cpu())
    finally:
        net.train(was_training)
    return torch.cat(all_logits), torch.cat(all_labels)


CALIBRATION_KEY = "calibration._extra_state"


def stored_temperature(state_dict: dict) -> float | None:
    """The T a checkpoint's state_dict stores (None: not fitted), read from the raw entry."""
    return state_dict[CALIBRATION_KEY]["temperature"]


def stored_method(state_dict: dict) -> str | None:
    """The calibration method a checkpoint's state_dict stores (None: nothing fitted)."""
    calibrator = state_dict[CALIBRATION_KEY]["calibrator"]
    return None if calibrator is None else calibrator["method"]


def slow_when(values: Iterable, slow: Iterable) -> list:
    """Parametrize values with those in ``slow`` marked slow: the quick loop (``-m "not slow"``)
    keeps the cheap cases of a test and the full suite runs them all (matrix scaling's fit, for
    one, takes seconds where the other calibrators take milliseconds)."""
    slow = set(slow)
    return [pytest.param(*(v if isinstance(v, tuple) else (v,)), marks=pytest.mark.slow) if v in slow else v
            for v in values]  # fmt: skip
