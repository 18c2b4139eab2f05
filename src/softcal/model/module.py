"""The LightningModule: one shared step for every stage.

    logits = net(images)              the net's output head gives logits
    loss   = cross_entropy(logits, y) the training objective
    probs  = softmax(logits)          what the raw metrics are computed from, and
    probs  = calibration(logits)      what the calibrated metrics and predictions use

Each evaluation step computes these probabilities once, scores its stages' metrics with them
and returns them (``{"logits", "labels", "probabilities": {stage: probs}}``), so callbacks
(figures) never compute them again. The test stages also rank every prediction: AURC, E-AURC,
risk at coverage and misclassification AUROC (softcal.uncertainty.selective_metrics) are in
the same MetricCollection as the calibration metrics; validation is scored without them.

``self.calibration`` is the run's one calibration object
(:class:`softcal.calibration.run_calibration.RunCalibration`): temperature scaling by default,
or the ``--calibrator`` the run chose. It is "not fitted" until the
:class:`softcal.calibration.callbacks.FitCalibration` callback fits it on validation logits,
and it is part of the state_dict, so every checkpoint carries the calibration of its own
weights. Metrics are logged once per epoch; per-step logging costs real time on small nets.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MetricCollection

from softcal.calibration.metrics import calibration_metrics
from softcal.calibration.run_calibration import RunCalibration, upgrade_state_dict
from softcal.checks import above, at_least, check_options, in_range
from softcal.data.loader import Batch
from softcal.errors import NonFiniteLossError
from softcal.model.nets import DigitCNN
from softcal.model.optimization import (
    OptimizerName,
    ScheduleName,
    build_optimizer,
    build_schedule,
    parameter_groups,
)
from softcal.model.training_totals import TrainingTotals
from softcal.uncertainty.selective_metrics import selective_metrics, without_undefined

#: Builds a net from (in_channels, num_classes, image_size); configs name a class from
#: softcal.model.nets (or any importable nn.Module with that signature) and its other arguments.
NetFactory = Callable[[int, int, int], nn.Module]


def check_hyperparameters(h: Any) -> None:
    """Reject values no run can use, naming the option (see softcal.checks)."""
    check_options("model", {
        "lr": (h.lr, above(0), "0.01"),
        "weight_decay": (h.weight_decay, at_least(0), "5e-4"),
        "momentum": (h.momentum, in_range(0, 1), "0.9"),
        "bias_lr_scale": (h.bias_lr_scale, above(0), "1.0"),
        "warmup_fraction": (h.warmup_fraction, in_range(0, 1), "0.25"),
        "label_smoothing": (h.label_smoothing, in_range(0, 1), "0.1"),
        "calibration_bins": (h.calibration_bins, at_least(1), "15"),
        "whitening_samples": (h.whitening_samples, at_least(1), "5000"),
        "muon_lr": (h.muon_lr, above(0), "0.1"),
        "muon_momentum": (h.muon_momentum, in_range(0, 1), "0.6"),
        "num_classes": (h.num_classes, at_least(2), "10"),  # from the data: one class is no task
    })  # fmt: skip


def stage_metrics(k: int, bins: int) -> nn.ModuleDict:
    """One MetricCollection per stage ("train" cannot be a ModuleDict key: nn.Module.train)."""
    return nn.ModuleDict({
        "fit": MetricCollection({"totals": TrainingTotals()}, prefix="train/"),
        "val": calibration_metrics(k, "val/", bins),
        "test": calibration_metrics(k, "test/", bins, selective_metrics()),
        "test_calibrated": calibration_metrics(k, "test_calibrated/", bins, selective_metrics()),
    })  # fmt: skip


class Classifier(L.LightningModule):
    def __init__(
        self,
        net: NetFactory = DigitCNN,
        num_classes: int = 10,
        in_channels: int = 1,
        image_size: int = 28,
        class_names: Sequence[str] | None = None,
        optimizer: OptimizerName = "adamw",
        lr: float = 0.01,
        weight_decay: float = 5e-4,
        momentum: float = 0.9,
        bias_lr_scale: float = 1.0,
        lr_schedule: ScheduleName = "onecycle",
        warmup_fraction: float = 0.25,
        label_smoothing: float = 0.0,
        calibration_bins: int = 15,
        channels_last: bool = False,
        compile: bool = False,
        whitening_samples: int = 5000,
        muon_lr: float = 0.1,
        muon_momentum: float = 0.6,
    ) -> None:
        """
        Args:
            net: the architecture (``class_path`` + ``init_args`` in the config); called with
                (in_channels, num_classes, image_size), which the CLI takes from the data.
            num_classes, in_channels, image_size, class_names: filled in from the datamodule.
            optimizer: ``adamw`` (decoupled weight decay), ``sgd`` (Nesterov momentum) or ``muon``
                (softcal.model.muon: SGD, the filters of convolutions feeding BatchNorm by Muon).
            lr: peak learning rate.
            weight_decay: applied to weights only, never to BatchNorm parameters or biases.
            momentum: SGD momentum.
            bias_lr_scale: learning-rate multiplier for BatchNorm parameters and biases.
            lr_schedule: ``onecycle``, ``cosine``, ``linear`` (triangle) or ``constant``; the
                first three are per step (softcal.model.optimization).
            warmup_fraction: share of all steps spent warming up.
            label_smoothing: 0 by default; smoothing changes the very confidence we measure.
            calibration_bins: equal-width confidence bins for ECE/MCE.
            channels_last: NHWC memory layout (faster convs on recent CPUs and GPUs).
            compile: wrap the net in ``torch.compile`` (GPU runs; slow to start on CPU).
            whitening_samples: training images a net with ``fit_whitening`` (a data-dependent
                first layer) is fitted on when training starts.
            muon_lr, muon_momentum: the filters' peak step and momentum with ``muon`` (scheduled
                like ``lr``; ``onecycle`` cycles every group's momentum, this one's too).
        """
        super().__init__()
        self.save_hyperparameters(ignore=["net"])
        check_hyperparameters(self.hparams)  # one line for impossible values, not a traceback later
        self.net = net(in_channels, num_classes, image_size)
        if channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)
        self._compiled: nn.Module | None = None
        self._planned_steps: int | None = None  # a resumed one-cycle schedule's length
        self.calibration = RunCalibration(num_classes)
        # Checkpoints written before RunCalibration keep T in buffers: mapped when loaded.
        self.register_load_state_dict_pre_hook(self._upgrade_calibration_keys)
        self.metrics = stage_metrics(num_classes, calibration_bins)

    # ------------------------------------------------------------------ calibration
    def probabilities(self, logits: torch.Tensor, calibrated: bool = True) -> torch.Tensor:
        """The run's calibrated probabilities (``self.calibration``); with ``calibrated=False``,
        or nothing fitted, the raw softmax."""
        return self.calibration.probabilities(logits, calibrated)

    def _upgrade_calibration_keys(self, module: nn.Module, state_dict: dict[str, Any], prefix: str,
                                  *args: Any) -> None:  # fmt: skip
        upgrade_state_dict(state_dict, prefix, int(self.hparams.num_classes))

    # ------------------------------------------------------------------ model
    def configure_model(self) -> None:
        if self.hparams.compile and self._compiled is None:
            # Kept outside the module tree so checkpoints store the plain net's weights.
            self.__dict__["_compiled"] = torch.compile(self.net)

    def on_fit_start(self) -> None:
        # A net with a data-dependent first layer (WhitenedCNN) gets it from the training split
        # before the first step; a resumed run restores the same values from its checkpoint.
        fit = getattr(self.net, "fit_whitening", None)
        datamodule = getattr(self.trainer, "datamodule", None)
        if callable(fit) and not self.net.whitening_fitted and hasattr(datamodule, "training_sample"):
            fit(datamodule.training_sample(self.hparams.whitening_samples).to(self.device))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits for a batch of preprocessed images."""
        if self.hparams.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        net = self._compiled if self._compiled is not None else self.net
        return net(images)

    # ------------------------------------------------------------------ steps
    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        images, labels = batch
        logits = self(images).float()
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

    def _evaluate(self, batch: Batch, stages: Sequence[str]) -> dict[str, Any]:
        images, labels = batch
        logits = self(images).float()
        self.log(f"{stages[0]}/loss", F.cross_entropy(logits, labels),
                 on_step=False, on_epoch=True, batch_size=len(labels), sync_dist=True)  # fmt: skip
        raw = torch.softmax(logits, dim=1)
        probabilities: dict[str, torch.Tensor] = {}
        for stage in stages:
            # Nothing fitted: the calibrated stage is scored on the raw softmax (the same tensor).
            calibrated = stage.endswith("calibrated") and self.calibration.fitted
            probabilities[stage] = self.calibration.probabilities(logits) if calibrated else raw
            self.metrics[stage].update(probabilities[stage], labels)
        # What callbacks (calibration fitting, figures) work from: nothing is computed twice.
        returned = {stage: probs.detach() for stage, probs in probabilities.items()}
        return {"logits": logits.detach(), "labels": labels, "probabilities": returned}

    def validation_step(self, batch: Batch, batch_idx: int) -> dict[str, Any]:
        return self._evaluate(batch, ["val"])

    def test_step(self, batch: Batch, batch_idx: int) -> dict[str, Any]:
        return self._evaluate(batch, ["test", "test_calibrated"])

    def predict_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        images = batch[0] if isinstance(batch, (tuple, list)) else batch
        return self.probabilities(self(images))

    def on_validation_epoch_end(self) -> None:
        self._finish_stage("val")

    def on_test_epoch_end(self) -> None:
        self._finish_stage("test")
        self._finish_stage("test_calibrated")

    def _finish_stage(self, stage: str) -> None:
        if not self.trainer.sanity_checking:  # two batches of noise: not logged
            # A selective metric with no value (AUROC when every prediction is right) is left out.
            self.log_dict(without_undefined(self.metrics[stage].compute(), self.metrics[stage]))
        self.metrics[stage].reset()

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self) -> Any:
        hp = self.hparams
        filters = None
        if hp.optimizer == "muon":
            filters = {"lr": hp.muon_lr, "momentum": hp.muon_momentum, "weight_decay": 0.0,
                       "orthogonal": True}  # fmt: skip
        groups = parameter_groups(self.net, hp.weight_decay, hp.bias_lr_scale, hp.lr, filters)
        optimizer = build_optimizer(groups, hp.optimizer, hp.lr, hp.momentum)
        if hp.lr_schedule == "constant":
            return optimizer
        total = max(int(self.trainer.estimated_stepping_batches), 3)
        planned = self._planned_steps if hp.lr_schedule == "onecycle" else None
        schedule = build_schedule(optimizer, hp.lr_schedule, total, hp.warmup_fraction, planned)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
