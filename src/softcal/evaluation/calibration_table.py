"""The calibration table of a checkpoint (always): ``metrics.json`` and its pictures.

The numbers are those of the evaluated split's pass (:meth:`EvaluationContext.tested`): the
metrics ``test_step`` logs, raw and calibrated by the run's stored calibration, which evaluate
prints as its results table. Files: ``metrics.json`` (with the diagrams' bins, ``reliability``),
``reliability_diagram.png`` (raw softmax), ``reliability_diagram_calibrated.png`` (the run's
calibration) and ``confusion_matrix.png``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from softcal.calibration.figure_data import reliability_json
from softcal.evaluation.analysis import EveryEvaluation
from softcal.evaluation.context import EvaluationContext
from softcal.evaluation.results import AnalysisResult
from softcal.runs.run_dirs import atomic_write_json


class CalibrationTable(EveryEvaluation):
    """metrics.json, reliability diagrams (raw and calibrated) and the confusion matrix."""

    name = "calibration"

    def run(self, ctx: EvaluationContext, out_dir: Path, args: argparse.Namespace) -> AnalysisResult:
        from softcal.calibration import figures  # matplotlib only when files are written

        evaluation, tested = ctx.evaluation(), ctx.tested()
        record = {
            "checkpoint": str(evaluation.checkpoint),
            "run_dir": str(evaluation.run_dir),
            "dataset": evaluation.dataset,
            "split": evaluation.split,
            "overrides": list(ctx.overrides),
            "temperature": evaluation.temperature,
            "calibration_method": evaluation.calibration_method,
            # Summed over processes: equals the split's size exactly once every sample was
            # seen once (none dropped, none duplicated by a distributed sampler).
            "num_samples": int(tested.bins["raw"]["count"].sum()),
            "metrics": evaluation.metrics,
            # the diagrams' numbers, raw and calibrated, so runs can be drawn again and overlaid
            **reliability_json(evaluation.split, tested.bins),
        }
        files = [atomic_write_json(out_dir / "metrics.json", record)]
        name = evaluation.checkpoint.name
        legends = (("raw", "", "T = 1"), ("calibrated", "_calibrated", ctx.calibration.label()))
        for stage, suffix, label in legends:
            title = f"{name}\n{ctx.where}, {label}"  # two lines: the figure is narrow
            fig = figures.reliability_diagram(**tested.bins[stage], title=title)
            files.append(figures.save_png(fig, out_dir / f"reliability_diagram{suffix}.png"))
        # The raw predictions' matrix: T never changes a predicted class, but a stored vector or
        # matrix calibrator can, so the picture says which predictions it counts.
        title = f"Confusion matrix, {ctx.where}, {name}, raw softmax"
        fig = figures.confusion_matrix_figure(tested.confusion, evaluation.class_names, title)
        files.append(figures.save_png(fig, out_dir / "confusion_matrix.png"))
        return AnalysisResult(self.name, files, None, record)


ANALYSIS = CalibrationTable()
