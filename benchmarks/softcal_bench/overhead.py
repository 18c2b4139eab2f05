"""Lightning's overhead per training epoch, measured interleaved in one process.

(a) fits a config's Classifier through SoftcalCLI, the whole recipe as ``train.py`` runs it.
After each of its optimizer steps, :class:`Interleave` runs one step of (c) and one of (c'):
bare PyTorch loops, each training its own copy of the same Classifier (same initial weights,
the optimizer and schedule of its own ``configure_optimizers``, the same data order and
augmentation seeds). Timed minutes apart, two runs of the same loop differ by 5-10% on a shared
VM, more than the overhead being measured; stepped alternately, every burst of load falls on all
three within milliseconds. (c') against (c) is the control: the same code twice, so its
difference is what the method cannot resolve.
"""

from __future__ import annotations

import copy
import gc
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback

from softcal_bench.machine import sync


class BareLoop:
    """(c): a copy of (a)'s model trained by hand, one step at a time."""

    def __init__(self, model: L.LightningModule) -> None:
        self.model = copy.deepcopy(model)  # taken before fit, while no trainer is attached
        self.device = torch.device("cpu")

    def attach(self, trainer: L.Trainer) -> None:
        """Called when (a)'s fit starts: its data is set up and its schedule's length known."""
        model = self.model
        self.device = trainer.strategy.root_device
        model.to(self.device)
        # (a)'s state as its training starts: anything its setup hooks computed (buffers too).
        model.load_state_dict(trainer.lightning_module.state_dict())
        model.configure_model()  # torch.compile, where the config asks for it
        model.trainer = trainer  # its configure_optimizers reads trainer.estimated_stepping_batches
        try:
            config = model.configure_optimizers()
        finally:
            model.trainer = None
        config = config if isinstance(config, dict) else {"optimizer": config}
        self.optimizer = config["optimizer"]
        self.scheduler = config.get("lr_scheduler", {}).get("scheduler")  # stepped per step
        # Batches from a shallow copy of (a)'s datamodule: the same tensors, loader settings
        # (order, flips inside the loader, device residency) and per-batch augmentation, through
        # the datamodule's own code, with a train loader of its own so (a)'s is never advanced.
        self.dm = copy.copy(trainer.datamodule)
        self.loader = self.dm.train_dataloader()
        self.autocast = trainer.precision_plugin.train_step_context  # bf16-mixed, as (a)

    def start_epoch(self) -> None:
        self.model.train()
        self.batches = iter(self.loader)

    def step(self) -> None:
        batch = tuple(t.to(self.device) for t in next(self.batches))
        # The hook that augments (a)'s batches, seeded per (run seed, epoch, batch) as for (a):
        # it counts the batches of this loop's loader, and trains while (a)'s trainer does.
        images, labels = self.dm.on_after_batch_transfer(batch, 0)
        with self.autocast():
            logits = self.model(images)
            loss = F.cross_entropy(logits, labels, label_smoothing=self.model.hparams.label_smoothing)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        if self.scheduler is not None:
            self.scheduler.step()


@dataclass
class InterleavedEpoch:
    lightning_s: float  # (a): epoch start .. validation start, minus the bare steps inside
    bare_s: tuple[float, ...]  # (c), (c'): their epoch start plus all their steps
    steps: int
    lightning_step_ms: float  # medians, the first 10% of the steps skipped (warm-up)
    bare_step_ms: tuple[float, ...]

    @property
    def overhead(self) -> float:
        """(a)'s epoch over the mean of the bare loops', minus one."""
        return self.lightning_s / statistics.mean(self.bare_s) - 1

    @property
    def control(self) -> float:
        """(c') over (c), minus one: the same loop twice, so this is the method's own noise."""
        return self.bare_s[1] / self.bare_s[0] - 1


class Interleave(Callback):
    """Runs one step of each bare loop after every Lightning training step.

    (a)'s time is its epoch's wall time minus the time spent inside the bare steps; a bare step
    runs between device syncs so GPU work is charged to the loop that queued it. A loop is any
    object with ``device``, ``attach(trainer)``, ``start_epoch()`` and ``step()`` (a
    :class:`BareLoop`); ``clock`` is injectable so that this accounting can be tested exactly.
    """

    def __init__(self, loops: Sequence[Any], clock: Callable[[], float] = time.perf_counter) -> None:
        self.loops, self.clock = loops, clock
        self.epochs: list[InterleavedEpoch] = []
        self._open = False

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        for loop in self.loops:
            loop.attach(trainer)

    def _run_bare(self, device: torch.device, action: str) -> None:
        for times, loop in zip(self._bare, self.loops, strict=True):
            sync(device)
            t0 = self.clock()
            getattr(loop, action)()
            sync(loop.device)
            times.append(self.clock() - t0)
            self._inside_now += times[-1]

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._bare: list[list[float]] = [[] for _ in self.loops]
        self._inside_now = 0.0
        self._starts: list[float] = []
        self._inside: list[float] = []  # bare time spent before each Lightning step began
        sync(pl_module.device)
        self._t0 = self.clock()
        self._run_bare(pl_module.device, "start_epoch")
        self._open = True

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:  # fmt: skip
        self._starts.append(self.clock())
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
        end = self.clock()
        starts, inside = [*self._starts, end], [*self._inside, self._inside_now]
        # Step k of (a): from its batch-start hook to the next one, minus the bare steps between.
        steps = [(starts[k + 1] - starts[k]) - (inside[k + 1] - inside[k])
                 for k in range(len(self._starts))]  # fmt: skip
        skip = len(steps) // 10  # and [0] of each bare list is its start_epoch, not a step
        self.epochs.append(InterleavedEpoch(
            lightning_s=end - self._t0 - self._inside_now,
            bare_s=tuple(sum(times) for times in self._bare),
            steps=len(steps),
            lightning_step_ms=1000 * statistics.median(steps[skip:]),
            bare_step_ms=tuple(1000 * statistics.median(times[1 + skip:]) for times in self._bare),
        ))  # fmt: skip


@dataclass
class InterleavedRun:
    epochs: list[InterleavedEpoch]
    test_acc: tuple[float, ...]  # (a), (c), (c') after training
    same_weights: tuple[bool, ...]  # (c), (c'): trained to exactly (a)'s weights


@torch.no_grad()
def final_accuracy(model: L.LightningModule, dm: Any) -> float:
    """Top-1 accuracy of the final weights on the test split, preprocessed as in evaluation."""
    model.eval()
    correct = sum(int((model(dm.preprocess(x.to(model.device))).argmax(1).cpu() == y.cpu()).sum())
                  for x, y in dm.test_dataloader())  # fmt: skip
    return correct / max(len(dm.splits["test"][1]), 1)


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    """Bit for bit; Lightning moves (a) back to the CPU when its fit ends, the bare loops stay."""
    return all(torch.equal(p, q.to(p.device)) for p, q in zip(a.parameters(), b.parameters(), strict=True))


def run_interleaved(cli_args: Sequence[str], repeats: int) -> list[InterleavedRun]:
    """(a) with (c) and (c') interleaved, ``repeats`` times, each in a fresh set of objects."""
    from softcal.apps.cli import SoftcalCLI

    runs = []
    for _ in range(repeats):
        gc.collect()  # the last repeat's garbage, collected here rather than inside a timed step
        cli = SoftcalCLI(list(cli_args))
        loops = [BareLoop(cli.model), BareLoop(cli.model)]
        interleave = Interleave(loops)
        cli.trainer.callbacks.append(interleave)
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
        cli.datamodule.setup("test")
        models = [cli.model, *(loop.model for loop in loops)]
        accs = tuple(final_accuracy(m, cli.datamodule) for m in models)
        same = tuple(same_weights(cli.model, m) for m in models[1:])
        runs.append(InterleavedRun(interleave.epochs, accs, same))
    return runs


def median_per_epoch(runs: Sequence[InterleavedRun], measure: str = "overhead") -> list[float]:
    """Each epoch's median over the repeats of an InterleavedEpoch property."""
    n_epochs = min((len(run.epochs) for run in runs), default=0)
    return [statistics.median(getattr(run.epochs[k], measure) for run in runs)
            for k in range(n_epochs)]  # fmt: skip
