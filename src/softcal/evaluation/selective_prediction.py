"""Selective prediction of a checkpoint (always): ``selective.json`` (with the curves' points,
``risk_coverage``) and ``risk_coverage.png``.

The (confidence, correct) pairs are those of the evaluated split's pass - the top probability
of the raw softmax and of the run's stored calibration (``ctx.calibration``, whatever its
method), kept by :class:`softcal.calibration.callbacks.CalibrationFigures` from the very
probabilities the metrics come from. Its ``test/aurc ...`` rows are in evaluate's results table,
so selective.json repeats the printed numbers exactly. :func:`selective_outputs` takes the
pairs themselves: tests feed it pairs of logits they made up.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from softcal.calibration.figure_data import risk_coverage_json
from softcal.evaluation.analysis import EveryEvaluation
from softcal.evaluation.context import EvaluationContext
from softcal.evaluation.results import AnalysisResult, Confidences
from softcal.runs.run_dirs import atomic_write_json
from softcal.uncertainty.selective import risk_coverage_curve, selective_report


class SelectivePredictionAnalysis(EveryEvaluation):
    """AURC, E-AURC, risks at 80/90/95% coverage and misclassification AUROC, raw and calibrated."""

    name = "selective"

    def run(self, ctx: EvaluationContext, out_dir: Path, args: argparse.Namespace) -> AnalysisResult:
        legends = {"raw": "raw (T = 1)", "calibrated": f"calibrated ({ctx.calibration.label()})"}
        about = {"checkpoint": ctx.run.checkpoint, "dataset": ctx.dataset, "split": ctx.split}
        files, record = selective_outputs(ctx.tested().confidences, legends, about, out_dir)
        return AnalysisResult(self.name, files, None, record)


def selective_outputs(pairs: Mapping[str, Confidences], legends: Mapping[str, str], about: Mapping[str, Any],
                      out_dir: Path) -> tuple[list[Path], dict[str, Any]]:  # fmt: skip
    """selective.json and risk_coverage.png from the "raw" and "calibrated" pairs; ``about``
    names the ``checkpoint`` (a Path), ``dataset`` and ``split``. Returns (files, record)."""
    from softcal.calibration import figures  # matplotlib only when files are written

    reports, curves = {}, {}
    for stage in ("raw", "calibrated"):
        confidence, correct = pairs[stage]
        report = selective_report(confidence, correct)  # NaN AUROC (all right or all wrong): null
        reports[stage] = {"label": legends[stage], **{k: None if v != v else v for k, v in report.items()}}
        curves[stage] = risk_coverage_curve(confidence, correct)
    n = len(pairs["raw"].confidence)
    checkpoint = Path(about["checkpoint"])
    # the figure's curves, thinned, so runs can be drawn again and overlaid
    record = {"checkpoint": str(checkpoint), "dataset": about["dataset"], "split": about["split"],
              "num_samples": n, **reports, **risk_coverage_json(about["split"], curves)}  # fmt: skip
    where = f"{about['dataset']} {about['split']} ({n})"
    named = {f"{legends[stage]}, AURC {100 * reports[stage]['aurc']:.3f}%": curves[stage] for stage in curves}
    fig = figures.risk_coverage_figure(named, f"Risk-coverage, {where}\n{checkpoint.name}")
    files = [atomic_write_json(out_dir / "selective.json", record),
             figures.save_png(fig, out_dir / "risk_coverage.png")]  # fmt: skip
    return files, record


ANALYSIS = SelectivePredictionAnalysis()
