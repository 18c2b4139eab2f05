"""What evaluate adds to the metrics of each checkpoint: selective prediction (always), the
post-hoc calibrator comparison (``--calibrators``) and OOD detection (``--ood``).

All three start from what evaluate's own test run collected - the (confidence, correct) pairs
of :class:`softcal.calibration.selective_callback.SelectivePrediction`, whose numbers evaluate
prints among its metrics, and the logits (``state["logits"]``,
:class:`softcal.runs.split_logits.LogitsCollector`) - so their accuracy is evaluate's accuracy.
evaluate.py calls :func:`add_arguments`, :func:`check_arguments` (before any checkpoint is
loaded: a bad option costs a second, not a test run) and :func:`analyse`.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from softcal.errors import SoftcalError
from softcal.runs.run_dirs import atomic_write_json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--calibrators", metavar="all|METHOD,...", default=None,
                        help="fit post-hoc calibrators on the validation split, score them on the"
                        " test split; write calibrators.json/.md and reliability diagrams")  # fmt: skip
    parser.add_argument("--ood", metavar="SPEC", action="append", default=[],
                        help="score the test set against out-of-distribution images: uniform-noise,"
                        " gaussian-noise, an image folder or a datamodule config (e.g."
                        " fashion_mnist); repeatable; writes ood.json/.md and histograms")  # fmt: skip


def check_arguments(args: argparse.Namespace) -> None:
    """Parse ``--calibrators`` and ``--ood`` into ``args.methods`` and ``args.ood_specs``."""
    from softcal.apps.ood_sets import parse_spec

    args.methods = []
    if args.calibrators is not None:
        from softcal.apps.calibrator_comparison import parse_methods

        args.methods = parse_methods(args.calibrators)
    if args.methods and args.split != "test":
        raise SoftcalError(
            "--calibrators fits on the validation split and scores on the test split; leave out --split val"
        )
    args.ood_specs = [parse_spec(spec) for spec in args.ood]


def analyse(evaluation: Any, state: dict[str, Any], out_dir: Path,
            args: argparse.Namespace) -> tuple[list[Path], list[str]]:  # fmt: skip
    """Files written and tables to print, for one evaluated checkpoint."""
    files, tables = selective_outputs(evaluation, state, out_dir), []  # its numbers: in the metrics
    if getattr(args, "methods", None):
        from softcal.apps.calibrator_comparison import run_comparison

        more, text = run_comparison(state, evaluation, out_dir, args.methods)
        files, tables = files + more, tables + [text]
    if getattr(args, "ood_specs", None):
        from softcal.apps.ood_evaluation import run_ood

        more, text = run_ood(state, evaluation, out_dir, args.ood_specs)
        files, tables = files + more, tables + [text]
    return files, tables


def calibrated_label(model: Any) -> str:
    """How the run's calibrated probabilities are made, for a legend or a row."""
    method, t = model.calibration.method, model.calibration.temperature
    if method not in (None, "temperature"):
        return f"calibrated ({method})"
    return f"calibrated (T = {t:.3f})" if t is not None else "calibrated (nothing fitted: T = 1)"


def selective_outputs(evaluation: Any, state: dict[str, Any], out_dir: Path) -> list[Path]:
    """selective.json and risk_coverage.png, raw softmax and the run's calibrated probabilities,
    from the (confidence, correct) pairs evaluate's SelectivePrediction callback kept - the
    pairs behind the ``test/aurc ...`` metrics evaluate prints - else from the logits."""
    from softcal.calibration import figures
    from softcal.uncertainty.selective import risk_coverage_curve, selective_report

    model, kept = state["run"].model, state.get("selective") or {}
    labels = {"raw": "raw (T = 1)", "calibrated": calibrated_label(model)}
    reports, curves = {}, {}
    for stage, name in (("raw", "test"), ("calibrated", "test_calibrated")):
        pair = kept.get(name) or _confidence_and_correct(state, model, stage == "calibrated")
        confidence, correct = pair["confidence"], pair["correct"]
        report = selective_report(confidence, correct)  # NaN AUROC (all right or all wrong): null
        reports[stage] = {"label": labels[stage], **{k: None if v != v else v for k, v in report.items()}}
        curve_name = f"{labels[stage]}, AURC {100 * reports[stage]['aurc']:.3f}%"
        curves[curve_name] = risk_coverage_curve(confidence, correct)
    n = len(state["labels"])
    where = f"{evaluation.dataset} {evaluation.split} ({n})"
    record = {"checkpoint": str(evaluation.checkpoint), "dataset": evaluation.dataset,
              "split": evaluation.split, "num_samples": n, **reports}  # fmt: skip
    fig = figures.risk_coverage_figure(curves, f"Risk-coverage, {where}\n{evaluation.checkpoint.name}")
    return [atomic_write_json(out_dir / "selective.json", record),
            figures.save_png(fig, out_dir / "risk_coverage.png")]  # fmt: skip


def _confidence_and_correct(state: dict[str, Any], model: Any, calibrated: bool) -> dict[str, Any]:
    import torch

    with torch.no_grad():
        probs = model.cpu().probabilities(state["logits"], calibrated=calibrated)
    confidence, predicted = probs.max(dim=1)
    return {"confidence": confidence, "correct": predicted == state["labels"]}
