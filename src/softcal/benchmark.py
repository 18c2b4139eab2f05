"""Benchmark: softcal's training recipe against the usual pipelines, and its data path alone.

Three ways to train MNIST, measured in one run on the same machine:

(a) softcal's default recipe: ``python scripts/train.py`` timed as a user runs it (start-up,
    data loading, training, calibration and test included), and the same fit in this process
    with a callback that times each training epoch;
(b) the tutorial way: torchvision's MNIST with PIL ``ToTensor``/``Normalize`` in a DataLoader
    with two workers, a two-conv CNN in a plain LightningModule;
(c) a bare PyTorch loop over the same in-memory tensors with the same net, seed and batch size
    as (a): the floor that (a)'s Lightning overhead is measured against.

The data-path comparison times the data alone (no model): batches of cropped, flipped and
normalised images from softcal's in-memory tensors vs a PIL pipeline in DataLoader workers.
Results go to a markdown file, one section per dataset, replaced when that dataset is re-run.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import multiprocessing
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
import yaml
from lightning.pytorch.callbacks import Callback
from torch import nn

from softcal.data import (
    CIFAR10DataModule,
    ClassificationDataModule,
    ImageFolderDataModule,
    MNISTDataModule,
    TensorBatchLoader,
)
from softcal.nets import DigitCNN
from softcal.synthetic import write_cifar_dataset, write_idx_dataset, write_image_folder

REPO = Path(__file__).resolve().parents[2]
DEFAULT_CONFIG = REPO / "configs" / "mnist.yaml"
DEFAULT_OUT = REPO / "docs" / "benchmarks.md"
DATASETS = ("mnist", "cifar10-sample", "synthetic-cifar")
TARGET_ACC = 0.99
WORKERS = 2  # the tutorial DataLoader's worker count
CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
MIB = 1024 * 1024


# --------------------------------------------------------------------------- machine and memory


def machine_info() -> dict[str, str]:
    """What the numbers were measured on: CPU, cores, RAM, library versions, date."""
    import torchvision

    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    ram = "unknown"
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                ram = f"{int(line.split()[1]) / 1024**2:.1f} GiB"
                break
    except OSError:
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return {
        "CPU": cpu,
        "cores": f"{os.cpu_count()} ({usable} usable; torch threads: {torch.get_num_threads()})",
        "RAM": ram,
        "GPU": gpu,
        "versions": f"Python {platform.python_version()}, torch {torch.__version__}, torchvision"
        f" {torchvision.__version__}, lightning {L.__version__}",
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


def load_1min() -> float | None:
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def load_average() -> str:
    """``uptime``'s load averages: other users of the CPU make every number here slower."""
    try:
        one, five, fifteen = os.getloadavg()
    except OSError:
        return "unknown"
    return f"{one:.2f}, {five:.2f}, {fifteen:.2f} (1, 5, 15 min)"


def _status_mib(field_name: str, pid: int | str = "self") -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        pass
    return None


def _pss_mib(pid: int) -> float:
    # PSS, not RSS: forked workers share the parent's pages, and RSS would count them twice.
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        pass
    return 0.0


def _child_pids() -> list[int]:
    pids: list[int] = []
    try:
        for tid in os.listdir("/proc/self/task"):
            text = Path(f"/proc/self/task/{tid}/children").read_text()
            pids += [int(p) for p in text.split()]
    except OSError:
        pass
    return pids


class PeakMemory:
    """Peak RSS of this process over a ``with`` block, plus the summed PSS of its children.

    Linux lets a process reset its own high-water mark (``/proc/self/clear_refs``), so each
    block gets an exact peak even though earlier blocks ran in the same process. Children
    (DataLoader workers) are sampled every ``interval`` seconds.
    """

    def __init__(self, interval: float = 0.2) -> None:
        self.interval = interval
        self.start_mib = self.peak_mib = self.children_peak_mib = 0.0
        self.exact = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            children = sum(_pss_mib(pid) for pid in _child_pids())
            self.children_peak_mib = max(self.children_peak_mib, children)
            self.peak_mib = max(self.peak_mib, _status_mib("VmRSS") or 0.0)

    def __enter__(self) -> PeakMemory:
        try:
            Path("/proc/self/clear_refs").write_text("5")  # 5: reset the peak RSS
            self.exact = True
        except OSError:
            self.exact = False
        self.start_mib = self.peak_mib = _status_mib("VmRSS") or 0.0
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        hwm = _status_mib("VmHWM")
        if self.exact and hwm is not None:
            self.peak_mib = hwm
        elif hwm is not None:  # no reset possible: the lifetime peak is all we know
            self.peak_mib = max(self.peak_mib, hwm)


def tensor_mib(*tensors: torch.Tensor) -> float:
    return sum(t.numel() * t.element_size() for t in tensors) / MIB


def _sync(device: torch.device) -> None:
    if device.type == "cuda":  # kernels run asynchronously: wait for them before reading a clock
        torch.cuda.synchronize(device)


def _device() -> torch.device:
    # What accelerator="auto" would pick, so the bare loop runs where the Lightning fits run.
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


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
        if self.max_batches is None:
            return []
        return [
            "--trainer.max_epochs", str(self.epochs),
            "--trainer.limit_train_batches", str(self.max_batches),
            "--trainer.enable_model_summary", "false",
            "--data.init_args.batch_size", str(self.batch_size),
            "--data.init_args.eval_batch_size", str(self.eval_batch_size),
            "--data.init_args.val_size", str(self.val_size),
            "--model.log_figures", "false",
        ]  # fmt: skip


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
        _sync(pl_module.device)
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
            _sync(pl_module.device)
            self._train_end = time.perf_counter()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or self.metric is None:
            return
        value = trainer.callback_metrics.get(self.metric)
        if value is not None:
            self._acc = (float(value), time.perf_counter() - self.start)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        _sync(pl_module.device)
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


def run_softcal_fit(data_root: Path, recipe: Recipe, work: Path) -> PipelineResult:
    """(a) in this process: the default recipe's fit through SoftcalCLI, epochs timed."""
    from softcal.cli import SoftcalCLI

    result = PipelineResult("(a) softcal, Lightning fit")
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
    device = _device()
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
            _sync(device)
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
            _sync(device)
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


# --------------------------------------------------------------------------- data path alone


@dataclass
class DataPathResult:
    name: str
    samples: int
    seconds: float
    load_s: float | None = None  # one-off: reading files into tensors / dataset objects
    tensor_mib: float | None = None

    @property
    def per_s(self) -> float:
        return self.samples / self.seconds if self.seconds > 0 else float("nan")


def softcal_epoch(dm: ClassificationDataModule, max_batches: int | None = None) -> tuple[int, float]:
    """One training epoch of softcal's data path: gather + augment + normalise, no model."""
    loader = dm.train_dataloader()
    augment = dm.crop_padding > 0 or dm.hflip
    start, samples = time.perf_counter(), 0
    for b, (images, labels) in enumerate(loader):
        if max_batches is not None and b == max_batches:
            break
        # One generator per batch, as on_after_batch_transfer seeds it during training.
        generator = torch.Generator().manual_seed(b) if augment else None
        dm.preprocess(images, train=True, generator=generator)
        samples += len(labels)
    return samples, time.perf_counter() - start


def dataloader_epoch(dataset: Any, batch_size: int, max_batches: int | None = None) -> tuple[int, float]:
    """One epoch of a map-style dataset through a shuffling DataLoader with worker processes;
    the workers' start-up is part of every epoch, as it is with the DataLoader's defaults."""
    from torch.utils.data import DataLoader

    start, samples = time.perf_counter(), 0
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=WORKERS)
    for b, (_, labels) in enumerate(loader):
        if max_batches is not None and b == max_batches:
            break
        samples += len(labels)
    del loader
    return samples, time.perf_counter() - start


def pil_train_transform(mean: Sequence[float], std: Sequence[float], crop: bool) -> Any:
    from torchvision import transforms

    steps = [transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip()] if crop else []
    return transforms.Compose([*steps, transforms.ToTensor(), transforms.Normalize(mean, std)])


def _unchecked_cifar10() -> type:
    """torchvision's CIFAR10 without its MD5 check, so it reads generated pickles as well."""
    from torchvision.datasets import CIFAR10

    class UncheckedCIFAR10(CIFAR10):
        def _check_integrity(self) -> bool:
            return True

        def _load_meta(self) -> None:
            self.classes = list(CIFAR10DataModule._default_names)
            self.class_to_idx = {c: i for i, c in enumerate(self.classes)}

    return UncheckedCIFAR10


def cifar_memory_probe(root: str, batch_size: int, max_batches: int | None) -> dict[str, float]:
    """Runs in a fresh process: peak RSS of reading CIFAR pickles and one augmented epoch."""
    baseline = _status_mib("VmRSS") or 0.0  # torch and softcal imported, nothing read yet
    dm = CIFAR10DataModule(root=root, batch_size=batch_size, download=False,
                           val_size=0.1)  # fmt: skip
    dm.setup("fit")
    samples, seconds = softcal_epoch(dm, max_batches)
    # VmHWM, not ru_maxrss: the latter starts at the spawning parent's peak (see _MEASURE).
    peak = _status_mib("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    tensors = tensor_mib(*(t for split in dm.splits.values() for t in split))
    return {"baseline_mib": baseline, "peak_mib": peak, "tensor_mib": tensors,
            "samples": samples, "seconds": seconds}  # fmt: skip


def run_memory_probe(root: Path, batch_size: int, max_batches: int | None) -> dict[str, float]:
    # spawn, not fork: a fresh interpreter, so the peak is the data path's and nothing else's.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        return pool.submit(cifar_memory_probe, str(root), batch_size, max_batches).result()


def benchmark_data_path(
    kind: str, data_root: Path, work: Path, tiny: bool
) -> tuple[list[DataPathResult], dict[str, float] | None]:
    """softcal's TensorBatchLoader + preprocess(train=True) vs a PIL pipeline in DataLoader
    workers, CIFAR-sized images with crop (padding 4) and flip, batch 256."""
    from torchvision import datasets

    batch_size, max_batches = 256, (3 if tiny else None)
    results: list[DataPathResult] = []
    if kind == "synthetic-cifar":
        root = work / "synthetic-cifar"
        n_train = 512 if tiny else 50_000
        write_cifar_dataset(root, 10, n_train=n_train, n_test=100)
        probe = run_memory_probe(root, batch_size, max_batches)
        start = time.perf_counter()
        dm: ClassificationDataModule = CIFAR10DataModule(root=str(root), batch_size=batch_size,
                                                         download=False, val_size=0.1)  # fmt: skip
        dm.setup("fit")
        load_s = time.perf_counter() - start
        start = time.perf_counter()
        pil_set = _unchecked_cifar10()(
            str(root),
            train=True,
            download=False,
            transform=pil_train_transform(CIFAR_MEAN, CIFAR_STD, True),
        )
        pil_load_s = time.perf_counter() - start
        pil_name = "torchvision CIFAR10 + PIL crop/flip/ToTensor/Normalize, DataLoader(2)"
        pil_mib = (pil_set.data.nbytes + 8 * len(pil_set.targets)) / MIB
    else:  # cifar10-sample: real CIFAR-10 PNGs in class folders
        folder = (data_root / "cifar10-sample").resolve()
        if tiny:
            folder = write_image_folder(work / "cifar10-sample", tuple(f"c{i}" for i in range(10)),
                                        n_train=300, n_test=20)  # fmt: skip
        cache = work / "cache"

        def folder_dm() -> ImageFolderDataModule:
            return ImageFolderDataModule(folder=str(folder), cache_dir=str(cache),
                                         batch_size=batch_size, mean=CIFAR_MEAN, std=CIFAR_STD,
                                         download=False)  # fmt: skip

        start = time.perf_counter()
        folder_dm().setup("fit")  # first load: decodes every PNG and writes the cache
        cold_s = time.perf_counter() - start
        start = time.perf_counter()
        dm = folder_dm()
        dm.setup("fit")  # what every later run does: one cached tensor file
        load_s = time.perf_counter() - start
        results.append(DataPathResult("softcal first load (decode PNGs, write cache)", 0, 0.0,
                                      load_s=cold_s))  # fmt: skip
        start = time.perf_counter()
        pil_set = datasets.ImageFolder(
            str(folder / "train"), transform=pil_train_transform(CIFAR_MEAN, CIFAR_STD, True)
        )
        pil_load_s = time.perf_counter() - start
        pil_name = "torchvision ImageFolder + PIL crop/flip/ToTensor/Normalize, DataLoader(2)"
        pil_mib = None
        probe = None
    samples, seconds = softcal_epoch(dm, max_batches)
    mib = tensor_mib(*(t for split in dm.splits.values() for t in split))
    results.insert(0, DataPathResult("softcal TensorBatchLoader + preprocess(train=True)",
                                     samples, seconds, load_s, mib))  # fmt: skip
    samples, seconds = dataloader_epoch(pil_set, batch_size, max_batches)
    results.append(DataPathResult(pil_name, samples, seconds, pil_load_s, pil_mib))
    return results, probe


def mnist_data_path(data_root: Path, recipe: Recipe) -> list[DataPathResult]:
    """MNIST's data path alone: softcal's (no augmentation for digits) vs the tutorial's."""
    from torchvision import datasets

    start = time.perf_counter()
    dm = MNISTDataModule(root=str(data_root), batch_size=recipe.batch_size,
                         val_size=recipe.val_size, download=False)  # fmt: skip
    dm.setup("fit")
    load_s = time.perf_counter() - start
    samples, seconds = softcal_epoch(dm, recipe.max_batches)
    ours = DataPathResult(f"softcal TensorBatchLoader + preprocess, batch {recipe.batch_size}",
                          samples, seconds, load_s,
                          tensor_mib(*(t for s in dm.splits.values() for t in s)))  # fmt: skip
    start = time.perf_counter()
    pil_set = datasets.MNIST(
        str(data_root),
        train=True,
        download=False,
        transform=pil_train_transform((0.1307,), (0.3081,), crop=False),
    )
    pil_load_s = time.perf_counter() - start
    samples, seconds = dataloader_epoch(pil_set, 256, recipe.max_batches)
    theirs = DataPathResult("torchvision MNIST + PIL ToTensor/Normalize, DataLoader(2), batch 256",
                            samples, seconds, pil_load_s,
                            tensor_mib(pil_set.data, pil_set.targets))  # fmt: skip
    return [ours, theirs]


# --------------------------------------------------------------------------- markdown


def _fmt(value: float | None, spec: str = ".1f", unit: str = "") -> str:
    return "n/a" if value is None else f"{value:{spec}}{unit}"


def md_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("met" if ok else "**missed**")


def machine_block(info: dict[str, str], load_before: str, load_after: str, tiny: bool) -> str:
    lines = [f"- {key}: {value}" for key, value in info.items()]
    lines.append(f"- load average before: {load_before}; after: {load_after}")
    if tiny:
        lines.append("- **--tiny smoke run on a few batches of generated data: the numbers mean"
                     " nothing**")  # fmt: skip
    return "\n".join(lines)


def lightning_overhead(a: PipelineResult, cs: Sequence[PipelineResult]) -> dict[str, Any]:
    """(a)'s training time over the bare loop's: per epoch, in total and per median step.

    The bare loop runs before and after (a) and the two are averaged, so a load that rises or
    falls steadily during the measurement cancels out instead of landing on one side.
    """

    def mean(values: Iterable[float]) -> float:
        values = list(values)
        return sum(values) / len(values)

    cs = [c for c in cs if c.epochs]
    if not a.epochs or not cs:
        return {"per_epoch": [], "total": None, "step": None}
    per_epoch = [
        ea.train_s / mean(c.epochs[k].train_s for c in cs) - 1
        for k, ea in enumerate(a.epochs)
        if all(k < len(c.epochs) for c in cs)
    ]
    total = a.train_s / mean(c.train_s for c in cs) - 1
    steps = [c.median_step_s for c in cs if c.median_step_s]
    step = a.median_step_s / mean(steps) - 1 if a.median_step_s and steps else None
    return {"per_epoch": per_epoch, "total": total, "step": step}  # fmt: skip


def mnist_markdown(
    script: ScriptRun, startup_s: float, a: PipelineResult, b: PipelineResult,
    cs: Sequence[PipelineResult], data_path: list[DataPathResult], machine: str,
) -> str:  # fmt: skip
    target = f"{100 * TARGET_ACC:.1f}%"
    lines = ["## MNIST: softcal vs the tutorial pipeline vs a bare loop", "", machine, ""]
    lines.append(
        f"`python scripts/train.py` (default config, as a user runs it; output in a temporary run"
        f" directory): **{script.wall_s:.1f} s wall**, test accuracy"
        f" **{_fmt(script.acc and 100 * script.acc, '.2f', '%')}**, peak RSS"
        f" {script.peak_rss_mib:.0f} MiB, exit code {script.returncode}, 1-minute load average"
        f" {_fmt(script.load_after, '.2f')} when it finished. Start-up of a fresh"
        f" interpreter importing torch, torchvision and lightning: {startup_s:.1f} s."
    )
    lines += ["", "### Training", ""]
    rows = []
    for r in (a, b, *cs):
        epochs = " / ".join(f"{e.train_s:.1f}" for e in r.epochs)
        accs = " / ".join(_fmt(e.test_acc and 100 * e.test_acc, ".2f", "%") for e in r.epochs)
        tta = r.time_to(TARGET_ACC)
        rows.append([
            r.name, _fmt(r.images_per_s, ",.0f"), epochs or "n/a",
            _fmt(r.median_step_s and 1000 * r.median_step_s, ".1f"), accs if r.epochs else "n/a",
            _fmt(r.final_acc and 100 * r.final_acc, ".2f", "%"),
            ("not reached" if tta is None and r is not a else _fmt(tta, ".1f", " s")),
            _fmt(r.wall_s, ".1f", " s"), _fmt(r.peak_rss_mib, ".0f", " MiB")
            + (f" + workers {r.workers_pss_mib:.0f} MiB PSS" if r.workers_pss_mib else ""),
            _fmt(r.tensor_mib, ".1f", " MiB"), _fmt(r.load_after, ".2f"),
        ])  # fmt: skip
    lines.append(md_table(
        ["pipeline", "train images/s", "epoch train time (s)", "median step (ms)",
         "test acc per epoch",
         "final test acc", f"time to {target}", "wall in process", "peak RSS", "data tensors", "load at end"],
        rows,
    ))  # fmt: skip
    lines += ["", "- (a) per-epoch test accuracy is not measured (it validates on its own"
              " held-out split); its time to accuracy is the `train.py` wall time above.",
              "- (b) and (c): time from building the datasets to the end of the first epoch-end"
              " test evaluation at or above the target, in this process, so without the"
              " interpreter start-up that `train.py`'s wall time includes.",
              "- Epoch train time: from the epoch's first batch to its last optimizer step;"
              " evaluation, checkpoints and figures excluded. Median step: the median time"
              " from one optimizer step to the next, data and hooks included.",
              "- (c) runs once before and once after (a), same seed: the pair brackets (a)"
              " in time, so a load that drifts during the run is averaged out.",
              "- Peak RSS: this process's high-water mark, reset before each pipeline (includes"
              " the interpreter, torch and Lightning already loaded)."]  # fmt: skip
    lines += ["", "### Data path alone (no model), one training epoch", ""]
    lines.append(md_table(
        ["data path", "samples/s", "epoch (s)", "one-off load (s)", "tensors in memory"],
        [[d.name, _fmt(d.per_s, ",.0f"), _fmt(d.seconds, ".2f"), _fmt(d.load_s, ".2f"),
          _fmt(d.tensor_mib, ".1f", " MiB")] for d in data_path],
    ))  # fmt: skip
    # ---- comparisons and targets
    overhead = lightning_overhead(a, cs)
    total, step = overhead["total"], overhead["step"]
    tta_b = b.time_to(TARGET_ACC)
    met_acc = script.acc is not None and script.acc >= TARGET_ACC and script.returncode == 0
    speedup = tta_b / script.wall_s if tta_b is not None and met_acc else None
    fair = (tta_b + startup_s) / script.wall_s if speedup is not None else None
    a_met = a.final_acc is not None and a.final_acc >= TARGET_ACC and a.wall_s
    in_process = tta_b / a.wall_s if tta_b is not None and a_met else None
    lines += ["", "### Comparisons and targets", ""]
    per_epoch = ", ".join(f"epoch {i + 1}: {100 * o:+.1f}%"
                          for i, o in enumerate(overhead["per_epoch"]))  # fmt: skip
    rows = [
        [f"`train.py` >= {target} test accuracy in <= 45 s wall",
         f"{script.wall_s:.1f} s, {_fmt(script.acc and 100 * script.acc, '.2f', '%')}",
         _verdict(met_acc and script.wall_s <= 45)],
        ["Lightning overhead per epoch, (a) vs (c), <= 5%",
         f"training time {_fmt(total and 100 * total, '+.1f', '%')} ({per_epoch or 'n/a'});"
         f" median step {_fmt(step and 100 * step, '+.1f', '%')} (robust to bursts of load)",
         _verdict(None if total is None else total <= 0.05)],
        [f"time to {target}: (b) / (a) >= 1.8x",
         (f"{speedup:.2f}x ({tta_b:.1f} s / {script.wall_s:.1f} s); {fair:.2f}x when (b) is"
          f" charged the same {startup_s:.1f} s start-up" if speedup and fair else
          f"n/a: (b) {'did not reach' if tta_b is None else 'reached'} {target}, (a)"
          f" {'reached' if met_acc else 'did not reach'} it"),
         _verdict(None if speedup is None else speedup >= 1.8)],
        [f"the same, both in this process: (b) / (a)'s fit ({_fmt(a.wall_s, '.1f', ' s')},"
         f" final accuracy {_fmt(a.final_acc and 100 * a.final_acc, '.2f', '%')})",
         _fmt(in_process, ".2f", "x"), "info"],
    ]  # fmt: skip
    if len(data_path) == 2:
        ratio = data_path[0].per_s / data_path[1].per_s
        rows.append(["data path samples/s, softcal vs tutorial (MNIST, no augmentation)",
                     f"{ratio:.1f}x", "info"])  # fmt: skip
    lines.append(md_table(["target", "measured", "verdict"], rows))
    return "\n".join(lines) + "\n"


def data_path_markdown(
    kind: str, results: list[DataPathResult], probe: dict[str, float] | None, machine: str
) -> str:
    title = {"synthetic-cifar": "generated CIFAR-10-sized data (pickles, 50,000 x 3 x 32 x 32)",
             "cifar10-sample": "the real CIFAR-10 sample (PNG folders)"}[kind]  # fmt: skip
    lines = [f"## Data path alone: {title}", "", machine, "",
             "Random crop (padding 4) + horizontal flip + normalise, batch 256, one training"
             " epoch, no model.", ""]  # fmt: skip
    lines.append(md_table(
        ["data path", "samples", "samples/s", "epoch (s)", "one-off load (s)", "tensors in memory"],
        [[d.name, f"{d.samples:,}" if d.samples else "-",
          _fmt(d.per_s, ",.0f") if d.samples else "-",
          _fmt(d.seconds, ".2f") if d.samples else "-", _fmt(d.load_s, ".2f"),
          _fmt(d.tensor_mib, ".1f", " MiB")] for d in results],
    ))  # fmt: skip
    timed = [d for d in results if d.samples]
    ratio = timed[0].per_s / timed[-1].per_s if len(timed) == 2 else None
    rows = [["softcal samples/s >= 10x the PIL DataLoader's", _fmt(ratio, ".1f", "x"),
             _verdict(None if ratio is None else ratio >= 10)]]  # fmt: skip
    if probe is not None:
        lines += ["", "Peak memory of softcal's data path in a fresh process (read the pickles,"
                  " split train/val, one augmented epoch):", ""]  # fmt: skip
        lines.append(md_table(
            ["RSS after imports", "peak RSS", "increase", "uint8 tensors held"],
            [[f"{probe['baseline_mib']:.0f} MiB", f"{probe['peak_mib']:.0f} MiB",
              f"{probe['peak_mib'] - probe['baseline_mib']:.0f} MiB",
              f"{probe['tensor_mib']:.1f} MiB"]],
        ))  # fmt: skip
        rows.append(["CIFAR-10-sized data path peak memory < 1.5 GB",
                     f"{probe['peak_mib'] * MIB / 1e9:.2f} GB", _verdict(probe["peak_mib"] * MIB
                                                                   < 1.5e9)])  # fmt: skip
    lines += ["", md_table(["target", "measured", "verdict"], rows)]
    return "\n".join(lines) + "\n"


HEADER = """# Benchmarks

Written by `python scripts/benchmark.py` (see `src/softcal/benchmark.py` for what each number
means). Each section below is replaced when its dataset is benchmarked again
(`--dataset mnist`, `--dataset synthetic-cifar`, `--dataset cifar10-sample`). Timings on a
shared machine move with its load: the load average is recorded with each section.
"""


def write_section(path: Path, key: str, body: str) -> None:
    """Put ``body`` between this key's markers in ``path``, keeping every other section."""
    begin, end = f"<!-- benchmark:{key} -->", f"<!-- /benchmark:{key} -->"
    text = path.read_text() if path.is_file() else HEADER
    block = f"{begin}\n{body.rstrip()}\n{end}"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + block + rest.split(end, 1)[1]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


# --------------------------------------------------------------------------- command line


def find_data_root(explicit: str | None) -> Path:
    """``--data-root``, else ``$SOFTCAL_DATA_ROOT``, else ``data/``, else ``../shared/data``."""
    if explicit:
        return Path(explicit)
    candidates = [os.environ.get("SOFTCAL_DATA_ROOT"), "data", str(REPO / "data"),
                  str(REPO.parent / "shared" / "data")]  # fmt: skip
    for candidate in filter(None, candidates):
        if (Path(candidate) / "MNIST" / "raw").is_dir():
            return Path(candidate)
    return Path(candidates[0] or "data")


def benchmark_mnist(data_root: Path, work: Path, tiny: bool) -> str:
    recipe = Recipe.from_config()
    if tiny:
        data_root = work / "data"
        write_idx_dataset(data_root, "MNIST", n_train=600, n_test=200)
        recipe = recipe.tiny()
    info, load_before = machine_info(), load_average()
    print(f"[benchmark] MNIST from {data_root}; load {load_before}", flush=True)
    startup_s = 0.0 if tiny else time_imports()  # a fresh interpreter costs seconds: not in tiny
    print("[benchmark] (a) python scripts/train.py ...", flush=True)
    script = run_train_script(data_root, recipe, work)
    script.load_after = load_1min()
    print(f"[benchmark]     {script.wall_s:.1f} s, acc {script.acc}", flush=True)
    if script.returncode != 0:
        print(script.log.read_text()[-3000:], file=sys.stderr)
    print("[benchmark] (c) bare loop ...", flush=True)
    cs = [run_bare_loop(data_root, recipe, ", run 1 (before (a))")]
    cs[0].load_after = load_1min()
    print("[benchmark] (a) Lightning fit in process ...", flush=True)
    a = run_softcal_fit(data_root, recipe, work)
    a.load_after = load_1min()
    print("[benchmark] (c) bare loop, second run ...", flush=True)
    cs.append(run_bare_loop(data_root, recipe, ", run 2 (after (a))"))
    cs[1].load_after = load_1min()
    print("[benchmark] (b) tutorial pipeline ...", flush=True)
    b = run_tutorial(data_root, recipe)
    b.load_after = load_1min()
    print("[benchmark] data path alone ...", flush=True)
    data_path = mnist_data_path(data_root, recipe)
    machine = machine_block(info, load_before, load_average(), tiny)
    return mnist_markdown(script, startup_s, a, b, cs, data_path, machine)


def benchmark_cifar(kind: str, data_root: Path, work: Path, tiny: bool) -> str:
    info, load_before = machine_info(), load_average()
    print(f"[benchmark] data path, {kind}; load {load_before}", flush=True)
    results, probe = benchmark_data_path(kind, data_root, work, tiny)
    machine = machine_block(info, load_before, load_average(), tiny)
    return data_path_markdown(kind, results, probe, machine)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--dataset",
        nargs="+",
        choices=DATASETS,
        default=["mnist", "synthetic-cifar"],
        help="mnist: the training comparison; synthetic-cifar / cifar10-sample:"
        " the CIFAR-sized data path alone (default: mnist synthetic-cifar)",
    )
    parser.add_argument(
        "--tiny",
        action="store_true",
        help="a few batches of generated data: a smoke test in seconds",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="markdown file to update")
    parser.add_argument("--data-root", default=None,
                        help="folder with MNIST/raw and cifar10-sample (default:"
                             " $SOFTCAL_DATA_ROOT, data/, ../shared/data)")  # fmt: skip
    args = parser.parse_args(argv)
    data_root = find_data_root(args.data_root)
    work = Path(tempfile.mkdtemp(prefix="softcal-bench-"))
    try:
        for kind in dict.fromkeys(args.dataset):  # each once, in the order given
            if kind == "mnist":
                body = benchmark_mnist(data_root, work, args.tiny)
            else:
                body = benchmark_cifar(kind, data_root, work, args.tiny)
            write_section(args.out, kind, body)
            print("\n" + body, flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"[benchmark] written to {args.out}")
    return 0
