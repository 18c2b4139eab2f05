"""``evaluate.py RUN --calibrators all``: every post-hoc calibrator, fitted on validation, scored on test.

The table follows Guo et al. 2017 (Table 1), one row per method: accuracy, ECE, MCE, adaptive
ECE, classwise ECE, NLL and Brier, with the uncalibrated softmax first. Each calibrator is
fitted on the logits of the run's validation split - carved from the training set with the
run's seed, exactly the split training fitted T on - and never sees the test split; the test
logits only go through the fitted calibrators' ``forward``. The numbers are computed by
:func:`softcal.calibration.metrics.calibration_metrics`, the very metrics training and evaluate
report, so the "uncalibrated" row equals evaluate's raw test metrics and the "temperature" row
its calibrated ones (up to the refit of T).

Files: ``calibrators.json`` (every number, each fit's description and each diagram's bins),
``calibrators.md`` (the table in markdown) and ``calibrators/reliability_<method>.png``.
"""

from __future__ import annotations

import argparse
import math
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

# ALL_METHODS_FOR_COMPARISON: the methods a run can store plus unregularised matrix scaling,
# shown to make the case for regularisation.
from softcal.calibration.calibrators import ALL_METHODS_FOR_COMPARISON, make_calibrator
from softcal.calibration.figure_data import reliability_json
from softcal.errors import SoftcalError
from softcal.evaluation.context import EvaluationContext
from softcal.evaluation.results import AnalysisResult
from softcal.runs.run_dirs import atomic_write_bytes, atomic_write_json

#: The table's columns: (metric key of calibration_metrics, header, shown as a percentage).
COLUMNS = (
    ("acc", "accuracy", True),
    ("ece", "ECE", True),
    ("mce", "MCE", True),
    ("adaptive_ece", "adaptive ECE", True),
    ("classwise_ece", "classwise ECE", True),
    ("nll", "NLL", False),
    ("brier", "Brier", False),
)

#: The first row: the model's own softmax, nothing fitted.
UNCALIBRATED = "uncalibrated"


@dataclass
class MethodScore:
    """One row of the table: a method, what its fit found, its test metrics and bin sums."""

    method: str
    description: str
    metrics: dict[str, float]
    bins: dict[str, torch.Tensor] = field(repr=False)


def parse_methods(text: str) -> list[str]:
    """``all`` or a comma list of method names, in the order given, without repeats."""
    if text.strip() == "all":
        return list(ALL_METHODS_FOR_COMPARISON)
    methods = list(dict.fromkeys(m.strip() for m in text.split(",") if m.strip()))
    unknown = [m for m in methods if m not in ALL_METHODS_FOR_COMPARISON]
    if unknown or not methods:
        raise SoftcalError(
            f"--calibrators {text}: unknown method {', '.join(unknown) or '(none given)'}; use all"
            f" or a comma list of {', '.join(ALL_METHODS_FOR_COMPARISON)}"
        )
    return methods


def score_probabilities(probs: torch.Tensor, labels: torch.Tensor, n_bins: int) -> tuple[
    dict[str, float], dict[str, torch.Tensor]
]:  # fmt: skip
    """Every calibration metric of the probabilities, and the top-label bin sums for a diagram."""
    # torchmetrics takes seconds to import: only when a comparison is made
    from softcal.calibration.metrics import TopLabelBins, calibration_metrics

    metrics = calibration_metrics(probs.shape[1], "", n_bins)
    metrics.update(probs, labels)
    bins = TopLabelBins(n_bins)
    bins.update(probs, labels)
    return {k: float(v) for k, v in metrics.compute().items()}, bins.compute()


def compare_calibrators(
    methods: Sequence[str], val: tuple[torch.Tensor, torch.Tensor],
    test: tuple[torch.Tensor, torch.Tensor], n_bins: int = 15,
) -> list[MethodScore]:  # fmt: skip
    """Fit each method on ``val`` (logits, labels), score it on ``test``; uncalibrated first."""
    (val_logits, val_labels), (test_logits, test_labels) = val, test
    k = test_logits.shape[1]
    metrics, bins = score_probabilities(torch.softmax(test_logits.float(), dim=1), test_labels, n_bins)
    rows = [MethodScore(UNCALIBRATED, "softmax of the logits, nothing fitted", metrics, bins)]
    for method in methods:
        calibrator = make_calibrator(method, k).fit(val_logits, val_labels)
        with torch.no_grad():
            probs = calibrator(test_logits).float()
        metrics, bins = score_probabilities(probs, test_labels, n_bins)
        rows.append(MethodScore(method, calibrator.describe(), metrics, bins))
    return rows


def _cell(value: float, percent: bool) -> str:
    if math.isnan(value):
        return "-"
    return f"{100 * value:.2f}%" if percent else f"{value:.4f}"


def text_table(rows: Sequence[MethodScore], title: str) -> str:
    """The comparison as fixed-width text, then one line per fit saying what it found."""
    width = max(len("method"), *(len(r.method) for r in rows)) + 2
    head = f"{'method':<{width}}" + "".join(f"{h:>15}" for _, h, _ in COLUMNS)
    lines = [title, head, "-" * len(head)]
    for row in rows:
        cells = "".join(f"{_cell(row.metrics.get(k, math.nan), p):>15}" for k, _, p in COLUMNS)
        lines.append(f"{row.method:<{width}}{cells}")
    lines += ["", "fitted on the validation split:"]
    lines += [f"  {row.method}: {row.description}" for row in rows[1:]]
    return "\n".join(lines)


def markdown_table(rows: Sequence[MethodScore], title: str) -> str:
    """The same table in markdown (numbers as in the text table), for a README or a report."""
    lines = [f"**{title}**", "", "| method | " + " | ".join(h for _, h, _ in COLUMNS) + " |",
             "| --- |" + " ---: |" * len(COLUMNS)]  # fmt: skip
    for row in rows:
        cells = " | ".join(_cell(row.metrics.get(k, math.nan), p) for k, _, p in COLUMNS)
        lines.append(f"| {row.method} | {cells} |")
    lines += ["", *(f"- {row.method}: {row.description}" for row in rows[1:])]
    return "\n".join(lines) + "\n"


def write_comparison(rows: Sequence[MethodScore], out_dir: Path, title: str,
                     about: dict[str, Any]) -> tuple[list[Path], dict[str, Any]]:  # fmt: skip
    """calibrators.json, calibrators.md and one reliability diagram per row; (files, record)."""
    from softcal.calibration import figures  # matplotlib only when files are written

    record = {**about, "title": title, "columns": [k for k, _, _ in COLUMNS],
              "methods": [{"method": r.method, "description": r.description, "metrics": r.metrics}
                          for r in rows],
              # each diagram's bins, keyed by method: the scalings compared on the test split
              **reliability_json("test", {r.method: r.bins for r in rows})}  # fmt: skip
    markdown = markdown_table(rows, title).encode()
    files = [atomic_write_json(out_dir / "calibrators.json", record),
             atomic_write_bytes(out_dir / "calibrators.md", markdown)]  # fmt: skip
    # The table's one-line title is wider than the figure: wrapped, it is not cut off.
    wrapped = textwrap.fill(title, 60, break_on_hyphens=False)
    for row in rows:
        fig = figures.reliability_diagram(**row.bins, title=f"{wrapped}\n{row.description}")
        files.append(figures.save_png(fig, out_dir / "calibrators" / f"reliability_{row.method}.png"))
    return files, record


class CalibratorComparison:
    """``--calibrators all|METHOD,...``: fit each on the validation split, score on the test split."""

    name = "calibrators"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--calibrators", metavar="all|METHOD,...", default=None,
                            help="fit post-hoc calibrators on the validation split, score them on the"
                            " test split; write calibrators.json/.md and reliability diagrams")  # fmt: skip

    def check(self, args: argparse.Namespace) -> None:
        """``--calibrators`` parsed into ``args.methods``; refused with ``--split val``."""
        args.methods = [] if args.calibrators is None else parse_methods(args.calibrators)
        if args.methods and args.split != "test":
            raise SoftcalError("--calibrators fits on the validation split and scores on the test"
                               " split; leave out --split val")  # fmt: skip

    def wanted(self, args: argparse.Namespace) -> bool:
        return bool(args.methods)

    def run(self, ctx: EvaluationContext, out_dir: Path, args: argparse.Namespace) -> AnalysisResult:
        """The comparison for one checkpoint: its validation and test logits, each from the
        split's one pass (the test one is the pass evaluate's metrics come from)."""
        val, test = ctx.logits("val"), ctx.logits("test")
        n_bins = int(ctx.run.model.hparams.calibration_bins)
        rows = compare_calibrators(args.methods, val, test, n_bins)
        name = ctx.run.checkpoint.name
        title = (f"Post-hoc calibrators, {ctx.dataset}: fitted on the validation split"
                 f" ({len(val.labels)}), scored on the test split ({len(test.labels)}), {name}")  # fmt: skip
        about = {"checkpoint": str(ctx.run.checkpoint), "dataset": ctx.dataset,
                 "fitted_on": {"split": "val", "num_samples": len(val.labels)},
                 "scored_on": {"split": "test", "num_samples": len(test.labels)}, "bins": n_bins}  # fmt: skip
        files, record = write_comparison(rows, out_dir, title, about)
        return AnalysisResult(self.name, files, text_table(rows, title), record)


ANALYSIS = CalibratorComparison()
