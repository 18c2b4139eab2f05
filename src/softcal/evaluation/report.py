"""The tables evaluate prints of the metrics: one checkpoint's results table, or a comparison
of several checkpoints, one row each."""

from __future__ import annotations

import math
from collections.abc import Sequence

from softcal.evaluation.results import Evaluation
from softcal.runs.results_table import format_results

#: Columns of the comparison table: (metric name, calibrated?, header).
COLUMNS = (
    ("acc", False, "acc"),
    ("ece", False, "ece"),
    ("mce", False, "mce"),
    ("adaptive_ece", False, "adaptive_ece"),
    ("brier", False, "brier"),
    ("nll", False, "nll"),
    ("ece", True, "cal. ece"),
)


def results_table(e: Evaluation) -> str:
    """Training's results table (raw vs calibrated per metric), headed by the split scored."""
    title = f"{e.dataset} {e.split} split, checkpoint {e.checkpoint}"
    return format_results(e.metrics, e.calibration_label, title, split=e.split)


def comparison_title(evaluations: Sequence[Evaluation]) -> str:
    """Every dataset in the table, in order of appearance: runs may be of different data."""
    datasets = list(dict.fromkeys(e.dataset for e in evaluations))
    split = evaluations[0].split  # one --split for all
    return f"{' and '.join(datasets)}, {split} split" + ("s" if len(datasets) > 1 else "")


def comparison_table(evaluations: Sequence[Evaluation], labels: Sequence[str]) -> str:
    """One row per checkpoint; percentages for accuracy and calibration errors. A dataset
    column appears when the checkpoints were tested on different datasets."""
    several = len({e.dataset for e in evaluations}) > 1
    width = max(len("checkpoint"), *(len(label) for label in labels))
    dwidth = max(len("dataset"), *(len(e.dataset) for e in evaluations)) + 2 if several else 0
    head = f"{'checkpoint':<{width}}" + (f"{'dataset':>{dwidth}}" if several else "")
    head += "".join(f"{h:>14}" for *_, h in COLUMNS)
    lines = [head, "-" * len(head)]
    for evaluation, label in zip(evaluations, labels, strict=True):
        cells = [f"{label:<{width}}", f"{evaluation.dataset:>{dwidth}}" if several else ""]
        for name, calibrated, _ in COLUMNS:
            stage = evaluation.split + ("_calibrated" if calibrated else "")
            value = evaluation.metrics.get(f"{stage}/{name}", math.nan)
            percent = name in ("acc", "ece", "mce", "adaptive_ece")
            cells.append(f"{100 * value:>13.2f}%" if percent else f"{value:>14.4f}")
        lines.append("".join(cells))
    return "\n".join(lines)
