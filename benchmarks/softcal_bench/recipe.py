"""The training recipe every MNIST pipeline follows, and how their epochs are timed and scored."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import lightning as L
import torch
import yaml
from lightning.pytorch.callbacks import Callback

from softcal_bench.machine import sync
from softcal.data import TensorBatchLoader

REPO = Path(__file__).resolve().parents[2]
DEFAULT_CONFIG = REPO / "configs" / "mnist.yaml"
TARGET_ACC = 0.99
WORKERS = 2  # the tutorial DataLoader's worker count


# --------------------------------------------------------------------------- the recipe


@dataclass(frozen=True)
class Recipe:
    """The training settings of ``configs/mnist.yaml`` that the bare loop must mirror."""

    seed: int
    epochs: int
    batch_size: int
    eval_batch_size: int
    val_size: int
    lr: float
    weight_decay: float
    warmup_fraction: float
    widths: tuple[int, ...]
    channels_last: bool
    max_batches: int | None = None  # --tiny: stop every epoch after this many batches

    @classmethod
    def from_config(cls, path: Path = DEFAULT_CONFIG) -> Recipe:
        config = yaml.safe_load(path.read_text())
        model, data = config["model"], config["data"]["init_args"]
        if model.get("optimizer", "adamw") != "adamw" or model.get("lr_schedule") != "onecycle":
            raise ValueError(f"{path}: the bare loop mirrors AdamW + OneCycle only")
        return cls(
            seed=int(config.get("seed_everything") or 0),
            epochs=int(config["trainer"]["max_epochs"]),
            batch_size=int(data.get("batch_size", 128)),
            eval_batch_size=int(data.get("eval_batch_size", 1000)),
            val_size=int(data.get("val_size", 5000)),
            lr=float(model["lr"]),
            weight_decay=float(model["weight_decay"]),
            warmup_fraction=float(model["warmup_fraction"]),
            widths=tuple(model["net"]["init_args"]["widths"]),
            channels_last=bool(model.get("channels_last", False)),
        )

    def tiny(self) -> Recipe:
        return replace(self, epochs=1, batch_size=32, eval_batch_size=100, val_size=100,
                       max_batches=3)  # fmt: skip

    def cli_overrides(self) -> list[str]:
        """Arguments that make the CLI run this recipe where it differs from the config."""
        config = Recipe.from_config()
        flags = {"epochs": "--trainer.max_epochs", "batch_size": "--data.init_args.batch_size",
                 "eval_batch_size": "--data.init_args.eval_batch_size",
                 "val_size": "--data.init_args.val_size", "lr": "--model.lr"}  # fmt: skip
        args = []
        for name, flag in flags.items():
            if getattr(self, name) != getattr(config, name):
                args += [flag, str(getattr(self, name))]
        if self.max_batches is not None:
            args += ["--trainer.limit_train_batches", str(self.max_batches),
                     "--trainer.enable_model_summary", "false", "--model.log_figures", "false"]  # fmt: skip
        return args


# --------------------------------------------------------------------------- results


@dataclass
class EpochTiming:
    train_s: float  # first batch fetched .. last optimizer step; evaluation excluded
    samples: int
    test_acc: float | None = None
    acc_at_s: float | None = None  # seconds from the pipeline's start to that evaluation's end
    # Median time from one optimizer step's end to the next: insensitive to bursts of load from
    # other processes, which inflate the epoch time of whichever pipeline they hit.
    median_step_s: float | None = None


def median_interval(marks: Sequence[float]) -> float | None:
    """Median gap between consecutive timestamps (``marks[0]`` is the epoch's start)."""
    gaps = sorted(b - a for a, b in zip(marks, marks[1:], strict=False))
    return gaps[len(gaps) // 2] if gaps else None


@dataclass
class PipelineResult:
    name: str
    epochs: list[EpochTiming] = field(default_factory=list)
    final_acc: float | None = None
    wall_s: float | None = None
    peak_rss_mib: float | None = None
    workers_pss_mib: float | None = None
    tensor_mib: float | None = None
    load_after: float | None = None  # 1-minute load average when it finished

    @property
    def train_s(self) -> float:
        return sum(e.train_s for e in self.epochs)

    @property
    def images_per_s(self) -> float | None:
        return sum(e.samples for e in self.epochs) / self.train_s if self.epochs else None

    @property
    def median_step_s(self) -> float | None:
        steps = [e.median_step_s for e in self.epochs if e.median_step_s is not None]
        return sorted(steps)[len(steps) // 2] if steps else None

    def time_to(self, target: float) -> float | None:
        for epoch in self.epochs:
            if epoch.test_acc is not None and epoch.test_acc >= target:
                return epoch.acc_at_s
        return None


class EpochTimer(Callback):
    """Times the training part of each epoch and notes a validation metric when it arrives.

    Training time runs from ``on_train_epoch_start`` to the start of the epoch-end validation
    (or to ``on_train_epoch_end`` without one), so evaluation, figures and checkpoints stay out
    of it, exactly as the bare loop's epoch time leaves its test evaluation out.
    """

    def __init__(self, metric: str | None = None, start: float | None = None) -> None:
        self.metric = metric
        self.start = time.perf_counter() if start is None else start
        self.epochs: list[EpochTiming] = []
        self._t0 = 0.0
        self._train_end: float | None = None
        self._samples = 0
        self._acc: tuple[float, float] | None = None
        self._marks: list[float] = []

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        sync(pl_module.device)
        self._t0, self._train_end, self._samples, self._acc = time.perf_counter(), None, 0, None
        self._marks = [self._t0]

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
        batch_idx: int,
    ) -> None:  # fmt: skip
        self._samples += len(batch[1])
        self._marks.append(time.perf_counter())

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        if self._train_end is None:
            sync(pl_module.device)
            self._train_end = time.perf_counter()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or self.metric is None:
            return
        value = trainer.callback_metrics.get(self.metric)
        if value is not None:
            self._acc = (float(value), time.perf_counter() - self.start)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        sync(pl_module.device)
        end = self._train_end if self._train_end is not None else time.perf_counter()
        acc, at = self._acc if self._acc is not None else (None, None)
        step = median_interval(self._marks)
        self.epochs.append(EpochTiming(end - self._t0, self._samples, acc, at, step))


@torch.no_grad()
def accuracy(
    forward: Callable[[torch.Tensor], torch.Tensor],
    preprocess: Callable[[torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    labels: torch.Tensor,
    batch_size: int,
    device: torch.device,
) -> float:
    """Top-1 accuracy of ``forward`` over uint8 images, preprocessed as in evaluation."""
    correct = 0
    for x, y in TensorBatchLoader(images, labels, batch_size, shuffle=False):
        logits = forward(preprocess(x.to(device)))
        correct += int((logits.argmax(1).cpu() == y).sum())
    return correct / max(len(labels), 1)
