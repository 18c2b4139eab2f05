"""``evaluate.py RUN --conformal --shift ...``: how the conformal guarantee breaks under shift.

Split conformal prediction promises coverage 1 - alpha when the test images are exchangeable
with the validation images the thresholds were fitted on. A corrupted test set is not: here the
same predictors (fitted on the clean validation split, every method, alpha and kind of
probabilities) are applied to each corrupted set the shift analysis made
(``ctx.shifted_logits``, so no set is made or passed twice), and their coverage is reported per
corruption and severity, with the mean and the minimum over corruptions per severity.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch

from softcal.conformal import METHODS, fit_conformal
from softcal.evaluation.context import EvaluationContext

if TYPE_CHECKING:
    from softcal.calibration.run_calibration import RunCalibration


def _coverage(sets: torch.Tensor, labels: torch.Tensor) -> float:
    """The share of images whose set holds their label."""
    return float(sets[torch.arange(len(labels)), labels].double().mean())


#: (corruption, severity) -> ({kind: probabilities}, labels)
ShiftedProbabilities = dict[tuple[str, int], tuple[dict[str, torch.Tensor], torch.Tensor]]


def shifted_probabilities(ctx: EvaluationContext, args: argparse.Namespace, calibration: RunCalibration,
                          kinds: Sequence[str]) -> ShiftedProbabilities:  # fmt: skip
    """Every corrupted set asked, as probabilities of each kind, with its labels."""
    found = {}
    for corruption in args.shift_corruptions:
        for severity in args.shift_severity_list:
            logits = ctx.shifted_logits(corruption, severity, args.shift_samples)
            with torch.no_grad():
                probs = {kind: calibration.probabilities(logits.logits, calibrated=kind == "calibrated")
                         for kind in kinds}  # fmt: skip
            found[(corruption, severity)] = (probs, logits.labels)
    return found


def shift_coverage(ctx: EvaluationContext, args: argparse.Namespace, val_probs: Mapping[str, torch.Tensor],
                   val_labels: torch.Tensor, seed: int) -> list[dict[str, Any]]:  # fmt: skip
    """One record per method, alpha, kind and severity: mean and minimum coverage over the
    corruptions, and each corruption's coverage."""
    shifted = shifted_probabilities(ctx, args, ctx.calibration, list(val_probs))
    records = []
    for alpha in args.conformal_alphas:
        for method in METHODS:
            for kind, val in val_probs.items():
                predictor = fit_conformal(method, alpha, val, val_labels, seed=seed)
                by_severity: dict[int, dict[str, float]] = {}
                for (corruption, severity), (probs, labels) in shifted.items():
                    sets = predictor.prediction_sets(probs[kind])
                    by_severity.setdefault(severity, {})[corruption] = _coverage(sets, labels)
                for severity, covered in sorted(by_severity.items()):
                    values = list(covered.values())
                    records.append({"method": method, "alpha": alpha, "probabilities": kind,
                                    "severity": severity, "target_coverage": 1 - alpha,
                                    "mean_coverage": sum(values) / len(values),
                                    "min_coverage": min(values), "by_corruption": covered})  # fmt: skip
    return records


def shift_table(records: Sequence[Mapping[str, Any]]) -> str:
    """Markdown: per alpha, a row per method, mean coverage raw | calibrated per severity."""
    severities = sorted({r["severity"] for r in records})
    cell = {(r["alpha"], r["method"], r["probabilities"], r["severity"]): r["mean_coverage"] for r in records}
    lines = ["**Coverage under shift**: the thresholds fitted on the clean validation split, applied to"
             " the corrupted test sets; mean over the corruptions, raw | calibrated", ""]  # fmt: skip
    for alpha in dict.fromkeys(r["alpha"] for r in records):
        lines += [f"alpha = {alpha}: target {100 * (1 - alpha):.2f}%", "",
                  "| method | " + " | ".join(f"severity {s}" for s in severities) + " |",
                  "| --- |" + " ---: |" * len(severities)]  # fmt: skip
        for method in METHODS:
            cells = [f"{100 * cell[(alpha, method, 'raw', s)]:.2f}% | "
                     f"{100 * cell.get((alpha, method, 'calibrated', s), float('nan')):.2f}%"
                     .replace(" | ", " / ") for s in severities]  # fmt: skip
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)
