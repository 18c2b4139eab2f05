"""The three ways to train MNIST: (a) softcal's recipe, as ``scripts/train.py`` and in process,
(c) a bare PyTorch loop with the same net, data and schedule, (b) the tutorial pipeline."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from softcal.bench.machine import PeakMemory, auto_device, sync, tensor_mib
from softcal.bench.recipe import (
    REPO,
    WORKERS,
    EpochTimer,
    EpochTiming,
    PipelineResult,
    Recipe,
    accuracy,
    median_interval,
)
from softcal.data import MNISTDataModule, TensorBatchLoader
from softcal.nets import DigitCNN

# --------------------------------------------------------------------------- (a) softcal


@dataclass
class ScriptRun:
    wall_s: float
    returncode: int
    acc: float | None
    peak_rss_mib: float
    log: Path
    load_after: float | None = None


# Runs the command and reports its wall time and peak RSS. A small interpreter in between is
# needed: Linux carries the parent's peak RSS into a child's ru_maxrss across fork + exec, so
# a child of this (large) process would report at least this process's size.
_MEASURE = """
import json, resource, subprocess, sys, time
start = time.perf_counter()
rc = subprocess.call(sys.argv[2:])
wall = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
with open(sys.argv[1], "w") as out:
    json.dump({"rc": rc, "wall_s": wall, "peak_kib": peak}, out)
"""


def time_command(command: Sequence[str], env: dict[str, str], log: Path) -> tuple[float, int, float]:
    """Wall time, exit code and peak RSS (MiB) of one command, its output kept in ``log``."""
    report = log.with_suffix(".json")
    with open(log, "w") as out:
        subprocess.run([sys.executable, "-c", _MEASURE, str(report), *command], cwd=REPO,
                       env=env, stdout=out, stderr=subprocess.STDOUT, check=True)  # fmt: skip
    measured = json.loads(report.read_text())
    return measured["wall_s"], measured["rc"], measured["peak_kib"] / 1024


def run_train_script(data_root: Path, recipe: Recipe, work: Path) -> ScriptRun:
    """(a) as a user runs it: ``python scripts/train.py`` with the default config."""
    save_dir = work / "runs-script"
    args = ["--trainer.logger.init_args.save_dir", str(save_dir), *recipe.cli_overrides()]
    env = {**os.environ, "SOFTCAL_DATA_ROOT": str(data_root)}
    log = work / "train-script.log"
    wall, rc, peak = time_command([sys.executable, str(REPO / "scripts" / "train.py"), *args], env, log)
    acc = None
    for results in save_dir.glob("*/version_*/results.json"):
        acc = json.loads(results.read_text())["metrics"].get("test/acc")
    return ScriptRun(wall, rc, acc, peak, log)


def time_imports() -> float:
    """Seconds a fresh interpreter needs to import torch, torchvision and lightning: the start-up
    every pipeline pays and that the in-process timings of (b) and (c) leave out."""
    code = "import torch, torchvision, lightning"
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
    return time.perf_counter() - start


def run_softcal_fit(data_root: Path, recipe: Recipe, work: Path, run: int = 1) -> PipelineResult:
    """(a) in this process: the default recipe's fit through SoftcalCLI, epochs timed."""
    from softcal.cli import SoftcalCLI

    result = PipelineResult(f"(a) softcal, Lightning fit, run {run}")
    start = time.perf_counter()
    with PeakMemory() as memory:
        args = ["--data.init_args.root", str(data_root),
                "--trainer.logger.init_args.save_dir", str(work / "runs-fit"),
                *recipe.cli_overrides()]  # fmt: skip
        cli = SoftcalCLI(args)
        timer = EpochTimer(start=start)
        cli.trainer.callbacks.append(timer)
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
        result.wall_s = time.perf_counter() - start
        dm, model = cli.datamodule, cli.model
        dm.setup("test")
        model.eval()
        result.final_acc = accuracy(model, dm.preprocess, *dm.splits["test"],
                                    recipe.eval_batch_size, model.device)  # fmt: skip
    result.epochs = timer.epochs
    result.peak_rss_mib = memory.peak_mib
    result.tensor_mib = tensor_mib(*(t for split in dm.splits.values() for t in split))
    return result


# --------------------------------------------------------------------------- (c) bare loop


def run_bare_loop(data_root: Path, recipe: Recipe, name: str = "") -> PipelineResult:
    """(c) the same net, data, seed, batch size and schedule as (a), with no Lightning."""
    result = PipelineResult(f"(c) bare PyTorch loop{name}")
    device = auto_device()
    start = time.perf_counter()
    with PeakMemory() as memory:
        dm = MNISTDataModule(root=str(data_root), val_size=recipe.val_size, split_seed=recipe.seed,
                             download=False)  # fmt: skip
        dm.setup()
        torch.manual_seed(recipe.seed)
        net = DigitCNN(1, 10, 28, recipe.widths).to(device)
        layout = torch.channels_last if recipe.channels_last else torch.contiguous_format
        net = net.to(memory_format=layout)
        # As Classifier.configure_optimizers: no weight decay on BatchNorm parameters or biases.
        decay = [p for p in net.parameters() if p.ndim > 1]
        no_decay = [p for p in net.parameters() if p.ndim <= 1]
        groups = [{"params": decay, "weight_decay": recipe.weight_decay},
                  {"params": no_decay, "weight_decay": 0.0}]  # fmt: skip
        optimizer = torch.optim.AdamW(groups, lr=recipe.lr)
        loader = TensorBatchLoader(*dm.splits["train"], recipe.batch_size, shuffle=True,
                                   seed=recipe.seed)  # fmt: skip
        steps = len(loader) if recipe.max_batches is None else min(len(loader), recipe.max_batches)
        scheduler = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=recipe.lr, total_steps=max(recipe.epochs * steps, 2),
            pct_start=recipe.warmup_fraction,
        )  # fmt: skip

        def forward(x: torch.Tensor) -> torch.Tensor:
            return net(x.contiguous(memory_format=layout))

        for _ in range(recipe.epochs):
            net.train()
            sync(device)
            t0, samples = time.perf_counter(), 0
            marks = [t0]
            for b, (images, labels) in enumerate(loader):
                if b == steps:
                    break
                images, labels = images.to(device), labels.to(device)
                loss = F.cross_entropy(forward(dm.preprocess(images, train=True)), labels)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
                samples += len(labels)
                marks.append(time.perf_counter())
            sync(device)
            train_s = time.perf_counter() - t0
            net.eval()
            acc = accuracy(forward, dm.preprocess, *dm.splits["test"], recipe.eval_batch_size,
                           device)  # fmt: skip
            at = time.perf_counter() - start
            result.epochs.append(EpochTiming(train_s, samples, acc, at, median_interval(marks)))
    result.final_acc = result.epochs[-1].test_acc if result.epochs else None
    result.wall_s = time.perf_counter() - start
    result.peak_rss_mib = memory.peak_mib
    result.tensor_mib = tensor_mib(*(t for split in dm.splits.values() for t in split))
    return result


# --------------------------------------------------------------------------- (b) tutorial


class TutorialNet(nn.Sequential):
    """The usual two-conv MNIST CNN: conv 32 and conv 64 (3x3, BatchNorm), 2x2 max-pool, a
    128-unit hidden layer."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, image_size: int = 28) -> None:
        side = (image_size - 4) // 2  # two unpadded 3x3 convs, then one pooling
        super().__init__(
            nn.Conv2d(in_channels, 32, 3), nn.BatchNorm2d(32), nn.ReLU(),
            nn.Conv2d(32, 64, 3), nn.BatchNorm2d(64), nn.ReLU(),
            nn.MaxPool2d(2), nn.Flatten(),
            nn.Linear(64 * side * side, 128), nn.ReLU(), nn.Linear(128, num_classes),
        )  # fmt: skip


class TutorialModule(L.LightningModule):
    """A plain LightningModule as tutorials write it: loss logged per step, accuracy per epoch."""

    def __init__(self, max_lr: float = 0.01, weight_decay: float = 0.01) -> None:
        super().__init__()
        self.net = TutorialNet()
        self.max_lr, self.weight_decay = max_lr, weight_decay

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        acc = (self(x).argmax(1) == y).float().mean()
        self.log("test_acc", acc, batch_size=len(y))  # weighted by batch size: exact accuracy

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.AdamW(self.parameters(), lr=self.max_lr,
                                      weight_decay=self.weight_decay)  # fmt: skip
        scheduler = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=self.max_lr, total_steps=int(self.trainer.estimated_stepping_batches)
        )
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }


def run_tutorial(data_root: Path, recipe: Recipe, batch_size: int = 256) -> PipelineResult:
    """(b) torchvision MNIST + PIL transforms + DataLoader(2 workers) + a plain LightningModule.

    Evaluated on the test set at every epoch end (as its validation set, the tutorial habit).
    Logger, checkpointing and progress bar are off, which only makes it faster.
    """
    from torch.utils.data import DataLoader
    from torchvision import datasets, transforms

    result = PipelineResult("(b) tutorial: torchvision + PIL + DataLoader(2)")
    start = time.perf_counter()
    with PeakMemory() as memory:
        transform = transforms.Compose([transforms.ToTensor(),
                                        transforms.Normalize((0.1307,), (0.3081,))])  # fmt: skip
        train_set = datasets.MNIST(str(data_root), train=True, transform=transform, download=False)
        test_set = datasets.MNIST(str(data_root), train=False, transform=transform, download=False)
        train_loader = DataLoader(train_set, batch_size=batch_size, shuffle=True,
                                  num_workers=WORKERS)  # fmt: skip
        test_loader = DataLoader(test_set, batch_size=1000, num_workers=WORKERS)
        torch.manual_seed(recipe.seed)
        model = TutorialModule()
        timer = EpochTimer(metric="test_acc", start=start)
        trainer = L.Trainer(
            max_epochs=recipe.epochs, accelerator="auto", devices=1, logger=False,
            enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
            num_sanity_val_steps=0, callbacks=[timer],
            limit_train_batches=recipe.max_batches or 1.0,
        )  # fmt: skip
        trainer.fit(model, train_loader, test_loader)
    result.wall_s = time.perf_counter() - start
    result.epochs = timer.epochs
    result.final_acc = timer.epochs[-1].test_acc if timer.epochs else None
    result.peak_rss_mib = memory.peak_mib
    result.workers_pss_mib = memory.children_peak_mib
    result.tensor_mib = tensor_mib(train_set.data, train_set.targets, test_set.data, test_set.targets)
    return result


# --------------------------------------------------------------------------- paired A/B


@dataclass
class PairedSteps:
    """Median step times of (c) and (a) in alternating short runs, one pair per round."""

    bare_ms: list[float]
    lightning_ms: list[float]
    steps: int

    @property
    def ratios(self) -> list[float]:
        return [a / c for a, c in zip(self.lightning_ms, self.bare_ms, strict=True)]

    @property
    def overhead(self) -> float | None:
        """Median over rounds of (a)'s step time over its neighbouring (c)'s, minus one."""
        ratios = sorted(self.ratios)
        if not ratios:
            return None
        mid = len(ratios) // 2
        median = ratios[mid] if len(ratios) % 2 else (ratios[mid - 1] + ratios[mid]) / 2
        return median - 1


def paired_step_times(
    data_root: Path, recipe: Recipe, work: Path, rounds: int = 6, steps: int = 160
) -> PairedSteps:
    """Lightning's per-step overhead, measured so that this VM's noise cancels: short runs of
    the bare loop and of the Lightning fit back to back, ``rounds`` times; each pair's ratio of
    median step times compares two runs seconds apart, and the median over pairs drops the
    rounds that a burst of load hit. Whole-epoch times of single runs vary by 5-10% here."""
    short = replace(recipe, epochs=1, max_batches=steps)
    bare, fit = [], []
    for round_ in range(rounds):
        c = run_bare_loop(data_root, short)
        a = run_softcal_fit(data_root, short, work / f"paired{round_}")
        if c.epochs and a.epochs and c.epochs[0].median_step_s and a.epochs[0].median_step_s:
            bare.append(1000 * c.epochs[0].median_step_s)
            fit.append(1000 * a.epochs[0].median_step_s)
    return PairedSteps(bare, fit, steps)
