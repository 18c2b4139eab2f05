"""The three ways to train MNIST: (a) softcal's recipe, as ``scripts/train.py`` and in process,
(c) a bare PyTorch loop with the same net, data and schedule, (b) the tutorial pipeline."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback
from torch import nn

from softcal_bench.machine import PeakMemory, auto_device, sync, tensor_mib
from softcal_bench.recipe import (
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
from softcal.model.nets import DigitCNN

# --------------------------------------------------------------------------- (a) softcal


@dataclass
class ScriptRun:
    wall_s: float
    returncode: int
    acc: float | None
    peak_rss_mib: float
    log: Path
    load_after: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)  # results.json's test metrics


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


def run_train_script(
    data_root: Path, recipe: Recipe, work: Path, extra: Sequence[str] = (), name: str = "script"
) -> ScriptRun:
    """(a) as a user runs it: ``python scripts/train.py`` with the default config (plus
    ``extra`` arguments); its run directory and log go to ``work/runs-<name>``."""
    save_dir = work / f"runs-{name}"
    args = ["--trainer.logger.init_args.save_dir", str(save_dir), *recipe.cli_overrides(), *extra]
    env = {**os.environ, "SOFTCAL_DATA_ROOT": str(data_root)}
    log = work / f"train-{name}.log"
    wall, rc, peak = time_command([sys.executable, str(REPO / "scripts" / "train.py"), *args], env, log)
    metrics: dict[str, float] = {}
    for results in save_dir.glob("*/version_*/results.json"):
        metrics = json.loads(results.read_text())["metrics"]
    return ScriptRun(wall, rc, metrics.get("test/acc"), peak, log, metrics=metrics)


def time_imports() -> float:
    """Seconds a fresh interpreter needs to import torch, torchvision and lightning: the start-up
    every pipeline pays and that the in-process timings of (b) and (c) leave out."""
    code = "import torch, torchvision, lightning"
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
    return time.perf_counter() - start


def run_softcal_fit(
    data_root: Path, recipe: Recipe, work: Path, run: int = 1, callbacks: Sequence[Callback] = ()
) -> PipelineResult:
    """(a) in this process: the default recipe's fit through SoftcalCLI, epochs timed."""
    from softcal.apps.cli import SoftcalCLI

    result = PipelineResult(f"(a) softcal, Lightning fit, run {run}")
    start = time.perf_counter()
    with PeakMemory() as memory:
        args = ["--data.init_args.root", str(data_root),
                "--trainer.logger.init_args.save_dir", str(work / "runs-fit"),
                *recipe.cli_overrides()]  # fmt: skip
        cli = SoftcalCLI(args)
        timer = EpochTimer(start=start)
        cli.trainer.callbacks.extend([timer, *callbacks])
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


class BareLoop:
    """(c): the same net, data, seed, batch size and schedule as (a), with no Lightning.

    Driven one step at a time, so the interleaved measurement can run it between Lightning's
    steps; :func:`run_bare_loop` drives it alone.
    """

    def __init__(self, data_root: Path, recipe: Recipe) -> None:
        self.device = device = auto_device()
        self.dm = dm = MNISTDataModule(root=str(data_root), val_size=recipe.val_size,
                                       split_seed=recipe.seed, download=False)  # fmt: skip
        dm.setup()
        torch.manual_seed(recipe.seed)
        self.layout = torch.channels_last if recipe.channels_last else torch.contiguous_format
        self.net = net = DigitCNN(1, 10, 28, recipe.widths).to(device).to(memory_format=self.layout)
        # As Classifier.configure_optimizers: no weight decay on BatchNorm parameters or biases.
        decay = [p for p in net.parameters() if p.ndim > 1]
        no_decay = [p for p in net.parameters() if p.ndim <= 1]
        groups = [{"params": decay, "weight_decay": recipe.weight_decay},
                  {"params": no_decay, "weight_decay": 0.0}]  # fmt: skip
        self.optimizer = torch.optim.AdamW(groups, lr=recipe.lr)
        self.loader = TensorBatchLoader(*dm.splits["train"], recipe.batch_size, shuffle=True,
                                        seed=recipe.seed)  # fmt: skip
        n = len(self.loader)
        self.steps = n if recipe.max_batches is None else min(n, recipe.max_batches)
        self.scheduler = torch.optim.lr_scheduler.OneCycleLR(
            self.optimizer, max_lr=recipe.lr, total_steps=max(recipe.epochs * self.steps, 2),
            pct_start=recipe.warmup_fraction,
        )  # fmt: skip
        self.eval_batch_size = recipe.eval_batch_size
        self._batches: Iterator[tuple[torch.Tensor, torch.Tensor]] = iter(())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.contiguous(memory_format=self.layout))

    def start_epoch(self) -> None:
        self.net.train()
        self._batches = iter(self.loader)

    def step(self) -> int:
        """One optimizer step on the next batch; returns its number of samples."""
        images, labels = next(self._batches)
        images, labels = images.to(self.device), labels.to(self.device)
        loss = F.cross_entropy(self.forward(self.dm.preprocess(images, train=True)), labels)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.scheduler.step()
        return len(labels)

    def test_accuracy(self) -> float:
        self.net.eval()
        return accuracy(self.forward, self.dm.preprocess, *self.dm.splits["test"],
                        self.eval_batch_size, self.device)  # fmt: skip

    def tensor_mib(self) -> float:
        return tensor_mib(*(t for split in self.dm.splits.values() for t in split))


def run_bare_loop(data_root: Path, recipe: Recipe, name: str = "") -> PipelineResult:
    """(c) alone: every epoch timed from its first batch to its last optimizer step, then
    evaluated on the test set."""
    result = PipelineResult(f"(c) bare PyTorch loop{name}")
    start = time.perf_counter()
    with PeakMemory() as memory:
        loop = BareLoop(data_root, recipe)
        for _ in range(recipe.epochs):
            sync(loop.device)
            t0, samples = time.perf_counter(), 0
            marks = [t0]
            loop.start_epoch()
            for _ in range(loop.steps):
                samples += loop.step()
                marks.append(time.perf_counter())
            sync(loop.device)
            train_s = time.perf_counter() - t0
            acc = loop.test_accuracy()
            at = time.perf_counter() - start
            result.epochs.append(EpochTiming(train_s, samples, acc, at, median_interval(marks)))
    result.final_acc = result.epochs[-1].test_acc if result.epochs else None
    result.wall_s = time.perf_counter() - start
    result.peak_rss_mib = memory.peak_mib
    result.tensor_mib = loop.tensor_mib()
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


# --------------------------------------------------------------------------- interleaved


@dataclass
class InterleavedEpoch:
    """One training epoch of (a) with two bare loops stepping between its steps."""

    lightning_s: float  # (a): epoch start .. validation start, minus the bare steps inside
    bare_s: tuple[float, float]  # (c) and (c'): their epoch start plus all their steps
    steps: int
    lightning_step_ms: float  # medians, first 10% of the steps skipped (warm-up)
    bare_step_ms: tuple[float, float]

    @property
    def overhead(self) -> float:
        """(a)'s epoch over the mean of the two bare loops', minus one."""
        return self.lightning_s / (sum(self.bare_s) / 2) - 1

    @property
    def control(self) -> float:
        """(c') over (c), minus one: the same loop twice, so this is the method's own noise."""
        return self.bare_s[1] / self.bare_s[0] - 1


@dataclass
class InterleavedRun:
    epochs: list[InterleavedEpoch]
    lightning_acc: float | None
    bare_acc: tuple[float, float]


class Interleave(Callback):
    """Runs one step of each bare loop after every Lightning training step, in this process.

    Two pipelines timed minutes apart on a shared VM differ by 5-10% from load alone; stepped
    alternately, every burst of load falls on both within milliseconds. (a)'s time is its
    epoch's wall time minus the time spent inside the bare steps; a bare step runs between
    device syncs so GPU work is charged to the loop that queued it.
    """

    def __init__(self, loops: Sequence[BareLoop]) -> None:
        self.loops = loops
        self.epochs: list[InterleavedEpoch] = []
        self._open = False

    def _run_bare(self, device: torch.device, action: str) -> None:
        for i, loop in enumerate(self.loops):
            sync(device)
            t0 = time.perf_counter()
            getattr(loop, action)()
            sync(loop.device)
            took = time.perf_counter() - t0
            self._bare[i].append(took)
            self._inside_now += took

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._bare: list[list[float]] = [[] for _ in self.loops]
        self._inside_now = 0.0
        self._starts: list[float] = []
        self._inside: list[float] = []  # bare time inside each Lightning step's interval
        sync(pl_module.device)
        self._t0 = time.perf_counter()
        self._run_bare(pl_module.device, "start_epoch")
        self._open = True

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:  # fmt: skip
        self._starts.append(time.perf_counter())
        self._inside.append(self._inside_now)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule,
                           outputs: Any, batch: Any, batch_idx: int) -> None:  # fmt: skip
        self._run_bare(pl_module.device, "step")

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._close(pl_module)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._close(pl_module)

    def _close(self, pl_module: L.LightningModule) -> None:
        if not self._open:
            return
        self._open = False
        sync(pl_module.device)
        wall = time.perf_counter() - self._t0
        starts = [*self._starts, self._t0 + wall]
        inside = [*self._inside, self._inside_now]
        # Step k of (a): from its batch-start hook to the next one, minus the bare steps between.
        steps = [(starts[k + 1] - starts[k]) - (inside[k + 1] - inside[k])
                 for k in range(len(self._starts))]  # fmt: skip
        skip = len(steps) // 10
        bare_steps = [times[1:] for times in self._bare]  # [0] is start_epoch
        self.epochs.append(InterleavedEpoch(
            lightning_s=wall - self._inside_now,
            bare_s=(sum(self._bare[0]), sum(self._bare[1])),
            steps=len(steps),
            lightning_step_ms=1000 * statistics.median(steps[skip:]),
            bare_step_ms=(1000 * statistics.median(bare_steps[0][skip:]),
                          1000 * statistics.median(bare_steps[1][skip:])),
        ))  # fmt: skip


def interleaved_overhead(
    data_root: Path, recipe: Recipe, work: Path, repeats: int = 3
) -> list[InterleavedRun]:
    """Lightning's overhead per training epoch: (a)'s fit with the two bare loops (c) and (c')
    stepping between its steps, the whole recipe long, ``repeats`` times (each fit in a fresh
    set of objects; a collection of the garbage of the last one can land in any of them).
    (c') against (c) is the control: the same code twice, so its difference is what the method
    cannot resolve."""
    runs = []
    for repeat in range(repeats):
        loops = (BareLoop(data_root, recipe), BareLoop(data_root, recipe))
        interleave = Interleave(loops)
        a = run_softcal_fit(data_root, recipe, work / f"interleaved{repeat}", callbacks=[interleave])
        accs = (loops[0].test_accuracy(), loops[1].test_accuracy())
        runs.append(InterleavedRun(interleave.epochs, a.final_acc, accs))
    return runs


def median_per_epoch(runs: Sequence[InterleavedRun], measure: str = "overhead") -> list[float]:
    """Each epoch's median over the repeats of an InterleavedEpoch property."""
    n_epochs = min((len(run.epochs) for run in runs), default=0)
    return [statistics.median(getattr(run.epochs[k], measure) for run in runs)
            for k in range(n_epochs)]  # fmt: skip
