"""What evaluation produces, as plain data (no Lightning needed to read it): what a pass of a
split through the net leaves (built by :mod:`softcal.evaluation.passes`, read by the analyses),
what an analysis hands back, and what a checkpoint scored."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch


class SplitLogits(NamedTuple):
    """float32 logits (N, K) and int64 labels (N,) on the CPU, in the split's order."""

    logits: torch.Tensor
    labels: torch.Tensor


class Confidences(NamedTuple):
    """Top probability (float32) and whether the top class is the label (bool), per image."""

    confidence: torch.Tensor
    correct: torch.Tensor


@dataclass
class SplitPass:
    """What one pass over a split left: ``metrics`` keyed ``<split>/...`` and
    ``<split>_calibrated/...``; ``bins`` (top-label bin sums) and ``confidences`` keyed "raw"
    and "calibrated" (the run's stored calibration; the raw softmax again when nothing is
    fitted); ``confusion`` counts the raw predictions."""

    split: str
    metrics: dict[str, float]
    logits: SplitLogits = field(repr=False)
    bins: dict[str, dict[str, torch.Tensor]] = field(repr=False)
    confusion: torch.Tensor = field(repr=False)
    confidences: dict[str, Confidences] = field(repr=False)


@dataclass
class AnalysisResult:
    """What one analysis of one checkpoint produced."""

    name: str
    #: the files written, in order
    files: list[Path]
    #: printed after the results table; None when its numbers are rows of that table
    table: str | None = None
    #: what its JSON file holds (empty when it writes none)
    record: dict[str, Any] = field(default_factory=dict)


@dataclass
class Evaluation:
    """What one checkpoint scored, and where its files went."""

    checkpoint: Path
    run_dir: Path
    split: str  # "test" or "val"; the metric keys are "<split>/..." and "<split>_calibrated/..."
    dataset: str
    temperature: float | None  # None: the checkpoint carries no fitted temperature (T = 1)
    metrics: dict[str, float]
    class_names: list[str] = field(default_factory=list)
    #: what the calibrated metrics used: "temperature", the run's stored --calibrator, or None
    calibration_method: str | None = None
    #: the calibrated column's header (``RunCalibration.label()``)
    calibration_label: str = "T = 1, not fitted"
    out_dir: Path | None = None
    files: list[Path] = field(default_factory=list)
    #: every analysis's result, in the order they ran
    analyses: list[AnalysisResult] = field(default_factory=list)
