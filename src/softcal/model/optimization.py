"""Optimizer and learning-rate schedule of the Classifier, as plain functions of its settings."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import torch
from torch import nn

from softcal.errors import SoftcalError
from softcal.model.muon import MuonSGD

OptimizerName = Literal["adamw", "sgd", "muon"]
ScheduleName = Literal["onecycle", "cosine", "linear", "constant"]


def parameter_groups(net: nn.Module, weight_decay: float, bias_lr_scale: float,
                     lr: float, filters: dict | None = None) -> list[dict]:  # fmt: skip
    """Weights (ndim > 1) get weight decay; BatchNorm parameters and biases get none.

    Decaying a BatchNorm scale or a bias only shrinks what the next layer undoes. Frozen
    parameters (``requires_grad=False``, e.g. a fixed whitening layer) are left out.
    ``bias_lr_scale`` multiplies the learning rate of the 1-d parameters: nets whose BatchNorm
    learns only shifts train those faster (see softcal.model.whitened_cnn). ``filters``, when
    given, are the settings of a third group that takes the convolution filters (4-d) out of
    the weights' group (Muon's orthogonal group, softcal.model.muon).
    """
    weights, others, convolutions = [], [], []
    for p in net.parameters():
        if not p.requires_grad:
            continue
        if filters is not None and p.ndim == 4:
            convolutions.append(p)
        else:
            (weights if p.ndim > 1 else others).append(p)
    groups = [
        {"params": weights, "weight_decay": weight_decay, "lr": lr},
        {"params": others, "weight_decay": 0.0, "lr": lr * bias_lr_scale},
    ]
    if filters is not None:
        groups.append({"params": convolutions, **filters})
    return groups


def build_optimizer(groups: list[dict], name: OptimizerName, lr: float,
                    momentum: float) -> torch.optim.Optimizer:  # fmt: skip
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=True)
    if name == "muon":
        return MuonSGD(groups, lr=lr, momentum=momentum)
    return torch.optim.AdamW(groups, lr=lr)


def build_schedule(
    optimizer: torch.optim.Optimizer, name: ScheduleName, total: int, warmup_fraction: float,
    planned: int | None,
) -> torch.optim.lr_scheduler.LRScheduler:
    """A per-step schedule over ``total`` optimizer steps.

    * ``onecycle``: torch's OneCycleLR (cosine warm-up to the peak, cosine anneal).
    * ``cosine``: linear warm-up, then cosine decay to 0.
    * ``linear``: a triangle - linear from 0.2 x peak up to the peak, then linearly down to 0
      (the short schedule of the CIFAR-10 speed runs).
    ``planned`` is the step count of a one-cycle schedule restored from a checkpoint: it cannot
    be stretched, so a resume with other settings is refused in one line.
    """
    if name == "onecycle":
        if planned is not None and planned != total:
            raise SoftcalError(
                f"the checkpoint's one-cycle learning-rate schedule was planned for {planned}"
                f" steps, but these settings make {total} (max_epochs, batch size or"
                " limit_train_batches changed); resume with the settings of the run's"
                " config.yaml, or start a new run with more epochs to train longer"
            )
        # OneCycleLR divides by its warm-up length in steps minus one: keep that >= 1 step
        # even for the few-step runs of smoke tests.
        pct_start = min(max(warmup_fraction, 2.5 / total), 0.5)
        peaks = [group["lr"] for group in optimizer.param_groups]
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=peaks, total_steps=total,
                                                   pct_start=pct_start)  # fmt: skip
    shape = warmup_cosine if name == "cosine" else warmup_linear
    return torch.optim.lr_scheduler.LambdaLR(optimizer, shape(total, warmup_fraction))


def warmup_cosine(total: int, warmup_fraction: float) -> Callable[[int], float]:
    warmup = max(1, int(total * warmup_fraction))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return 0.5 * (1 + math.cos(progress * math.pi))

    return factor


def warmup_linear(total: int, warmup_fraction: float, start: float = 0.2) -> Callable[[int], float]:
    warmup = max(1, int(total * warmup_fraction))

    def factor(step: int) -> float:
        if step < warmup:
            return start + (1 - start) * step / warmup
        return max(0.0, (total - step) / max(1, total - warmup))

    return factor

