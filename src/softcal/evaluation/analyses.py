"""Every analysis evaluate runs, listed once, in the order they run and print.

Adding one (a shift, ensemble or conformal analysis) takes a module under
``softcal.evaluation`` with an object that has the :class:`~softcal.evaluation.analysis.Analysis`
shape - a ``name``, ``add_arguments``, ``check``, ``wanted`` and ``run(ctx, out_dir, args)``
returning an :class:`~softcal.evaluation.results.AnalysisResult` - and one line in
:data:`ANALYSES`. evaluate needs no change: it parses whatever options the analyses add, and
prints and lists whatever they return.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from softcal.evaluation import (
    calibration_table,
    calibrator_comparison,
    conformal_sets,
    ood_detection,
    selective_prediction,
    shift,
)
from softcal.evaluation.analysis import Analysis
from softcal.evaluation.context import EvaluationContext
from softcal.evaluation.results import AnalysisResult

#: The analyses, in the order they run; their files are listed and their tables printed so.
ANALYSES: tuple[Analysis, ...] = (
    calibration_table.ANALYSIS,  # metrics.json, reliability diagrams, confusion matrix
    selective_prediction.ANALYSIS,  # selective.json, risk_coverage.png
    calibrator_comparison.ANALYSIS,  # --calibrators: calibrators.json/.md, calibrators/
    ood_detection.ANALYSIS,  # --ood: ood.json/.md, ood/
    shift.ANALYSIS,  # --shift: shift.json/.md, shift/, tensorboard/
    conformal_sets.ANALYSIS,  # --conformal: conformal.json/.md, conformal/
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Every analysis's own options."""
    for analysis in ANALYSES:
        analysis.add_arguments(parser)


def check_arguments(args: argparse.Namespace) -> None:
    """Every analysis's check of its options, before any checkpoint is loaded."""
    for analysis in ANALYSES:
        analysis.check(args)


def run_analyses(ctx: EvaluationContext, out_dir: Path, args: argparse.Namespace) -> list[AnalysisResult]:
    """The wanted analyses of one checkpoint, in order."""
    return [analysis.run(ctx, out_dir, args) for analysis in ANALYSES if analysis.wanted(args)]
