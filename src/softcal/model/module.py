"""The LightningModule: one shared step for every stage.

    logits = net(images)              the net's output head gives logits
    loss   = cross_entropy(logits, y) the training objective
    probs  = softmax(logits / T)      what every metric and every prediction is computed from

T is the temperature: 1 while training, fitted on validation data afterwards
(:func:`softcal.calibration.fit_temperature`) and stored as a buffer, so it travels in the
checkpoint. Metrics are logged once per epoch; per-step logging costs real time on small nets.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, Literal

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import Metric, MetricCollection
from torchmetrics.classification import MulticlassConfusionMatrix

from softcal.calibration.metrics import TopLabelBins, calibration_metrics
from softcal.errors import NonFiniteLossError, SoftcalError
from softcal.model.nets import DigitCNN

#: Builds a net from (in_channels, num_classes, image_size); configs name a class from
#: softcal.model.nets (or any importable nn.Module with that signature) and its other arguments.
NetFactory = Callable[[int, int, int], nn.Module]

Batch = tuple[torch.Tensor, torch.Tensor]


class TrainingTotals(Metric):
    """Training loss and accuracy of one epoch, as three sums updated once per step.

    One metric instead of MulticlassAccuracy plus a hand-kept loss sum: three small in-place
    ops per step (measured alone: 29 us against 55 us for the accuracy metric; inside a real
    step both cost about 0.2 ms on the 2-core CPU, where every small op is slower). The sums are
    saved in checkpoints (``persistent``), so an epoch resumed mid-way still reports its loss
    and accuracy over all its batches, and they add up across processes under DDP.
    """

    full_state_update = False
    loss_sum: torch.Tensor
    correct: torch.Tensor
    count: torch.Tensor

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("loss_sum", torch.zeros(()), dist_reduce_fx="sum", persistent=True)
        self.add_state("correct", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum",
                       persistent=True)  # fmt: skip
        self.add_state("count", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum",
                       persistent=True)  # fmt: skip

    def update(self, logits: torch.Tensor, labels: torch.Tensor, loss: torch.Tensor) -> None:
        """``loss`` is the batch mean, as cross_entropy returns it."""
        # In place: assigning to a metric attribute goes through two __setattr__ layers.
        self.loss_sum.add_(loss, alpha=labels.numel())
        self.correct.add_((logits.argmax(dim=1) == labels).sum())
        self.count.add_(labels.numel())

    def compute(self) -> dict[str, torch.Tensor]:
        count = self.count.clamp(min=1)
        return {"loss": self.loss_sum / count, "acc": self.correct / count}


class Classifier(L.LightningModule):
    def __init__(
        self,
        net: NetFactory = DigitCNN,
        num_classes: int = 10,
        in_channels: int = 1,
        image_size: int = 28,
        class_names: Sequence[str] | None = None,
        optimizer: Literal["adamw", "sgd"] = "adamw",
        lr: float = 0.01,
        weight_decay: float = 5e-4,
        momentum: float = 0.9,
        lr_schedule: Literal["onecycle", "cosine", "constant"] = "onecycle",
        warmup_fraction: float = 0.25,
        label_smoothing: float = 0.0,
        calibration_bins: int = 15,
        channels_last: bool = False,
        compile: bool = False,
        log_figures: bool = True,
    ) -> None:
        """
        Args:
            net: the architecture (``class_path`` + ``init_args`` in the config); called with
                (in_channels, num_classes, image_size), which the CLI takes from the data.
            num_classes, in_channels, image_size, class_names: filled in from the datamodule.
            optimizer: ``adamw`` (decoupled weight decay) or ``sgd`` (Nesterov momentum).
            lr: peak learning rate.
            weight_decay: applied to weights only, never to BatchNorm parameters or biases.
            momentum: SGD momentum.
            lr_schedule: ``onecycle`` (warm-up then anneal, per step), ``cosine`` (per step,
                with the same warm-up) or ``constant``.
            warmup_fraction: share of all steps spent warming up.
            label_smoothing: 0 by default; smoothing changes the very confidence we measure.
            calibration_bins: equal-width confidence bins for ECE/MCE and the diagrams.
            channels_last: NHWC memory layout (faster convs on recent CPUs and GPUs).
            compile: wrap the net in ``torch.compile`` (GPU runs; slow to start on CPU).
            log_figures: reliability diagram, confidence histogram and confusion matrix
                images in TensorBoard at every validation epoch and at test.
        """
        super().__init__()
        self.save_hyperparameters(ignore=["net"])
        self.net = net(in_channels, num_classes, image_size)
        if channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)
        self._compiled: nn.Module | None = None
        self._planned_steps: int | None = None  # a resumed one-cycle schedule's length
        # The calibration temperature; 1 means "raw softmax". A buffer, so checkpoints carry it.
        self.register_buffer("temperature", torch.ones(()))
        k, bins = num_classes, calibration_bins
        # One MetricCollection per stage ("train" cannot be a ModuleDict key: nn.Module.train).
        self.metrics = nn.ModuleDict({
            "fit": MetricCollection({"totals": TrainingTotals()}, prefix="train/"),
            "val": calibration_metrics(k, "val/", bins),
            "test": calibration_metrics(k, "test/", bins),
            "test_calibrated": calibration_metrics(k, "test_calibrated/", bins),
        })  # fmt: skip
        # State for pictures only: bin sums for reliability diagrams, counts for confusion.
        self.figure_state = nn.ModuleDict({
            stage: nn.ModuleDict({"bins": TopLabelBins(bins),
                                  "confusion": MulticlassConfusionMatrix(k)})
            for stage in ("val", "test", "test_calibrated")
        })  # fmt: skip

    # ------------------------------------------------------------------ model
    def configure_model(self) -> None:
        if self.hparams.compile and self._compiled is None:
            # Kept outside the module tree so checkpoints store the plain net's weights.
            self.__dict__["_compiled"] = torch.compile(self.net)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits for a batch of preprocessed images."""
        if self.hparams.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        net = self._compiled if self._compiled is not None else self.net
        return net(images)

    def probabilities(self, logits: torch.Tensor, calibrated: bool = True) -> torch.Tensor:
        """softmax(logits / T); with ``calibrated=False``, T = 1."""
        logits = logits.float()
        if calibrated:
            logits = logits / self.temperature
        return torch.softmax(logits, dim=1)

    # ------------------------------------------------------------------ steps
    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        images, labels = batch
        logits = self(images)
        loss = F.cross_entropy(logits, labels, label_smoothing=self.hparams.label_smoothing)
        # One host sync per step on a GPU (any finiteness test that can stop training needs
        # one); on a CPU .item() is free, where torch.isfinite cost a kernel call.
        value = loss.item()
        if not math.isfinite(value):
            raise NonFiniteLossError(
                f"training loss is {value} at step {self.global_step} (epoch"
                f" {self.current_epoch}, batch {batch_idx}); lower model.lr or check the data."
                " Nothing from this step was saved: the last checkpoint holds the last good"
                " weights"
            )
        self.metrics["fit"].update(logits.detach(), labels, loss.detach())
        return loss

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # A one-cycle schedule is planned for a fixed number of steps, and the one restored
        # from a checkpoint cannot run past its end; configure_optimizers (called next) checks.
        schedulers = checkpoint.get("lr_schedulers") or [{}]
        self._planned_steps = schedulers[0].get("total_steps")

    def on_train_epoch_start(self) -> None:
        # A checkpoint saved at an epoch's end still holds that epoch's totals. Lightning does
        # not call this hook again when a run resumes inside an epoch, so the totals restored
        # from a mid-epoch checkpoint carry on and the epoch's numbers cover all its batches.
        self.metrics["fit"].reset()

    def on_train_epoch_end(self) -> None:
        self.log_dict(self.metrics["fit"].compute())  # train/loss, train/acc

    def _evaluate(self, batch: Batch, stages: Sequence[str]) -> None:
        images, labels = batch
        logits = self(images)
        self.log(f"{stages[0]}/loss", F.cross_entropy(logits.float(), labels),
                 on_step=False, on_epoch=True, batch_size=len(labels), sync_dist=True)  # fmt: skip
        for stage in stages:
            probs = self.probabilities(logits, calibrated=stage.endswith("calibrated"))
            self.metrics[stage].update(probs, labels)
            self.figure_state[stage]["bins"].update(probs, labels)
            self.figure_state[stage]["confusion"].update(probs, labels)

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self._evaluate(batch, ["val"])

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        self._evaluate(batch, ["test", "test_calibrated"])

    def predict_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        images = batch[0] if isinstance(batch, (tuple, list)) else batch
        return self.probabilities(self(images))

    def on_validation_epoch_end(self) -> None:
        self._finish_stage("val")

    def on_test_epoch_end(self) -> None:
        self._finish_stage("test")
        self._finish_stage("test_calibrated")

    def _finish_stage(self, stage: str) -> None:
        state = self.figure_state[stage]
        if self.trainer.sanity_checking:  # two batches of noise: neither logged nor drawn
            self.metrics[stage].reset()
            for metric in state.values():
                metric.reset()
            return
        self.log_dict(self.metrics[stage].compute())
        self.metrics[stage].reset()
        bins = state["bins"].compute()
        confusion = state["confusion"].compute()
        for metric in state.values():
            metric.reset()
        if self.hparams.log_figures:
            self._log_figures(stage, bins, confusion)

    def _log_figures(self, stage: str, bins: dict[str, torch.Tensor], confusion: torch.Tensor):
        experiment = getattr(self.logger, "experiment", None)
        if self.global_rank != 0 or not hasattr(experiment, "add_image"):
            return
        from softcal.calibration import figures  # matplotlib is imported only when pictures are made

        where = f"{stage} (epoch {self.current_epoch}, step {self.global_step})"
        images = {
            "reliability_diagram": figures.reliability_diagram(
                **bins, title=f"Reliability diagram, {where}"),
            "confidence_histogram": figures.confidence_histogram(
                **bins, title=f"Confidence histogram, {where}"),
            "confusion_matrix": figures.confusion_matrix_figure(
                confusion, self.hparams.class_names or [], title=f"Confusion matrix, {where}"),
        }  # fmt: skip
        for name, fig in images.items():
            experiment.add_image(f"{stage}/{name}", figures.to_rgb_array(fig),
                                 self.global_step, dataformats="HWC")  # fmt: skip

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self) -> Any:
        hp = self.hparams
        decay, no_decay = [], []
        for p in self.net.parameters():
            (decay if p.ndim > 1 else no_decay).append(p)
        groups = [{"params": decay, "weight_decay": hp.weight_decay},
                  {"params": no_decay, "weight_decay": 0.0}]  # fmt: skip
        if hp.optimizer == "sgd":
            opt = torch.optim.SGD(groups, lr=hp.lr, momentum=hp.momentum, nesterov=True)
        else:
            opt = torch.optim.AdamW(groups, lr=hp.lr)
        if hp.lr_schedule == "constant":
            return opt
        total = max(int(self.trainer.estimated_stepping_batches), 3)
        if hp.lr_schedule == "onecycle":
            planned = self._planned_steps
            if planned is not None and planned != total:
                raise SoftcalError(
                    f"the checkpoint's one-cycle learning-rate schedule was planned for {planned}"
                    f" steps, but these settings make {total} (max_epochs, batch size or"
                    " limit_train_batches changed); resume with the settings of the run's"
                    " config.yaml, or start a new run with more epochs to train longer"
                )
            # OneCycleLR divides by its warm-up length in steps minus one: keep that >= 1 step
            # even for the few-step runs of smoke tests.
            pct_start = min(max(hp.warmup_fraction, 2.5 / total), 0.5)
            sched = torch.optim.lr_scheduler.OneCycleLR(
                opt, max_lr=hp.lr, total_steps=total, pct_start=pct_start
            )
        else:
            sched = torch.optim.lr_scheduler.LambdaLR(opt, _warmup_cosine(total, hp.warmup_fraction))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def _warmup_cosine(total: int, warmup_fraction: float) -> Callable[[int], float]:
    warmup = max(1, int(total * warmup_fraction))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return 0.5 * (1 + torch.cos(torch.tensor(progress * torch.pi)).item())

    return factor
