"""``evaluate.py RUN --conformal [--alpha 0.1,0.05,0.01]``: split conformal prediction sets.

Every method of :mod:`softcal.conformal` (lac, aps, aps_randomized, raps, classwise_lac) is
fitted at every alpha on the run's validation split - carved from the training set with the
run's seed, the split the temperature was fitted on (``ctx.logits("val")``) - and scored on the
test split, which it never sees. Twice: on the raw softmax and on the probabilities of the
run's stored calibration (``ctx.calibration``). The guarantee holds for both (it holds for any
score); calibration changes how large the sets are, not whether they cover.

Only the context's interface is used (``logits``, ``calibration``, ``evaluation``, ``dataset``),
so an ensemble context evaluates the same way. The randomised methods draw their uniforms from
seed :data:`SEED`: a re-run gives the same numbers.

Files: ``conformal.json`` (one record per method, alpha and probabilities: coverage, set sizes,
coverage by set size and per class, the threshold(s)), ``conformal.md`` (one table per alpha,
also printed) and figures under ``conformal/`` (:mod:`softcal.evaluation.conformal_figures`).
With ``--shift``, the coverage of the same predictors on every corrupted set
(:mod:`softcal.evaluation.conformal_shift`): ``conformal_shift`` in the JSON, a table per alpha.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from softcal.conformal import METHODS, ConformalPredictor, coverage_report, fit_conformal, parse_alphas
from softcal.conformal.quantile import min_calibration_size
from softcal.errors import SoftcalError
from softcal.evaluation.conformal_shift import shift_coverage, shift_table
from softcal.evaluation.context import EvaluationContext
from softcal.evaluation.results import AnalysisResult, SplitLogits
from softcal.runs.run_dirs import atomic_write_bytes, atomic_write_json

if TYPE_CHECKING:
    from softcal.calibration.run_calibration import RunCalibration

#: 90%, 95% and 99% coverage.
DEFAULT_ALPHAS = "0.1,0.05,0.01"
#: The seed of the randomised methods' uniforms (and of RAPS's tuning split).
SEED = 0
#: The probabilities the sets are built on: the softmax of the logits, and the run's calibration.
KINDS = ("raw", "calibrated")


def check_val_size(n_val: int, alphas: Sequence[float]) -> None:
    """Refuse alphas the validation split is too small for: with fewer than ceil(1/alpha) - 1
    images every threshold is +inf and every set holds every class - nothing to report."""
    for alpha in alphas:
        if n_val < min_calibration_size(alpha):
            raise SoftcalError(
                f"--alpha {alpha:g} needs at least {min_calibration_size(alpha)} validation images"
                f" (ceil(1/alpha) - 1) for a finite conformal threshold, the run's validation split"
                f" has {n_val}; use a larger alpha or retrain with a larger data.val_size"
            )


def _record(method: str, alpha: float, kind: str, predictor: ConformalPredictor, report: dict,
            class_names: Sequence[str]) -> dict[str, Any]:  # fmt: skip
    """One method at one alpha on one kind of probabilities, as conformal.json holds it."""
    state = predictor.state()
    infinite = int(torch.isinf(predictor.threshold).sum())
    worst = report["worst_class"]
    return {
        "method": method, "alpha": alpha, "probabilities": kind, "target_coverage": 1 - alpha,
        **{key: report[key] for key in ("coverage", "mean_set_size", "singleton_rate", "empty_rate")},
        "coverage_by_set_size": {str(size): {"count": count, "coverage": coverage}
                                 for size, (count, coverage) in report["coverage_by_set_size"].items()},
        "worst_class": worst, "worst_class_name": class_names[worst],
        "worst_class_coverage": report["worst_class_coverage"],
        "per_class_coverage": {class_names[c]: v for c, v in report["per_class_coverage"].items()},
        "threshold": state["threshold"], "infinite_thresholds": infinite,
        **{key: state[key] for key in ("n_calibration", "n_tuning", "k_reg", "lam", "seed")},
    }  # fmt: skip


Probabilities = dict[str, tuple[torch.Tensor, torch.Tensor]]


def conformal_records(probs: Probabilities, val_labels: torch.Tensor, test_labels: torch.Tensor,
                      alphas: Sequence[float], class_names: Sequence[str],
                      ) -> tuple[list[dict[str, Any]], list[torch.Tensor]]:  # fmt: skip
    """Fit every method at every alpha on each kind's validation probabilities, score on its
    test probabilities. ``probs``: kind -> (val probabilities, test probabilities). Returns the
    records (alpha, then method, then kind) and each record's test set sizes (for figures)."""
    records, sizes = [], []
    for alpha in alphas:
        for method in METHODS:
            for kind, (val, test) in probs.items():
                predictor = fit_conformal(method, alpha, val, val_labels, seed=SEED)
                sets = predictor.prediction_sets(test)
                report = coverage_report(sets, test_labels)
                records.append(_record(method, alpha, kind, predictor, report, class_names))
                sizes.append(sets.sum(dim=1))
    return records, sizes


def _percent(value: float) -> str:
    return f"{100 * value:.2f}%"


def _aligned(rows: Sequence[Sequence[str]]) -> list[str]:
    """Markdown table lines whose columns also line up in a terminal (first column left)."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(cells) + " |"

    def padded(row: Sequence[str]) -> str:
        pairs = enumerate(zip(row, widths, strict=True))
        return line([c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in pairs])

    rule = line(["-" * w if i == 0 else "-" * (w - 1) + ":" for i, w in enumerate(widths)])
    return [padded(rows[0]), rule, *(padded(row) for row in rows[1:])]


def markdown_tables(records: Sequence[dict[str, Any]], title: str) -> str:
    """One table per alpha: a row per method, coverage, mean set size and the worst class's
    coverage on the raw | calibrated probabilities; then what needs saying about the numbers."""
    lines = [f"**{title}**"]
    by_key = {(r["alpha"], r["method"], r["probabilities"]): r for r in records}
    for alpha in dict.fromkeys(r["alpha"] for r in records):
        rows = [["method", *(f"{what} {kind}" for what in ("coverage", "mean size", "worst class")
                             for kind in KINDS)]]  # fmt: skip
        for method in dict.fromkeys(r["method"] for r in records):
            cells = [by_key[alpha, method, kind] for kind in KINDS]
            worst = [f"{_percent(r['worst_class_coverage'])} ({r['worst_class_name']})" for r in cells]
            rows.append([method, *(_percent(r["coverage"]) for r in cells),
                         *(f"{r['mean_set_size']:.3f}" for r in cells), *worst])  # fmt: skip
        lines += ["", f"alpha = {alpha:g}: coverage target {_percent(1 - alpha)}", "", *_aligned(rows)]
    lines += [f"- {note}" for note in _notes(records)]
    return "\n".join(lines) + "\n"


def _notes(records: Sequence[dict[str, Any]]) -> list[str]:
    """Thresholds that are +inf: classes (or everything) in every set, and why."""
    notes = []
    for r in records:
        if r["infinite_thresholds"]:
            which = ("every class" if r["method"] != "classwise_lac"
                     else f"{r['infinite_thresholds']} classes")  # fmt: skip
            needed = min_calibration_size(r["alpha"])
            notes.append(f"{r['method']} at alpha {r['alpha']:g} ({r['probabilities']}): {which} had"
                         f" fewer than {needed} validation images - in every set")  # fmt: skip
    return [""] + notes if notes else []


class ConformalSets:
    """``--conformal``: split conformal sets fitted on validation, scored on test."""

    name = "conformal"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--conformal", action="store_true",
                            help="split conformal prediction sets of every method, fitted on the validation"
                            " split, scored on the test split; write conformal.json/.md and conformal/")
        parser.add_argument("--alpha", metavar="A,...", default=None,
                            help="--conformal's miscoverage levels, comma-separated"
                            f" (default {DEFAULT_ALPHAS})")  # fmt: skip

    def check(self, args: argparse.Namespace) -> None:
        """``--alpha`` parsed into ``args.conformal_alphas``; refused without ``--conformal``
        or with ``--split val``."""
        if args.alpha is not None and not args.conformal:
            raise SoftcalError(f"--alpha {args.alpha} sets the conformal miscoverage; add --conformal")
        alphas = parse_alphas(DEFAULT_ALPHAS if args.alpha is None else args.alpha)
        args.conformal_alphas = list(dict.fromkeys(alphas))  # each once, in the order given
        if args.conformal and args.split != "test":
            raise SoftcalError("--conformal fits on the validation split and scores on the test split;"
                               " leave out --split val")  # fmt: skip

    def wanted(self, args: argparse.Namespace) -> bool:
        return bool(args.conformal)

    def run(self, ctx: EvaluationContext, out_dir: Path, args: argparse.Namespace) -> AnalysisResult:
        """Records, tables and figures for one checkpoint, from its validation and test logits
        (each split's one pass: the test one is the pass evaluate's metrics come from)."""
        val, test = ctx.logits("val"), ctx.logits("test")
        check_val_size(len(val.labels), args.conformal_alphas)
        calibration, evaluation = ctx.calibration, ctx.evaluation()
        probs = {kind: _probabilities(calibration, val, test, kind == "calibrated") for kind in KINDS}
        records, sizes = conformal_records(probs, val.labels, test.labels, args.conformal_alphas,
                                           evaluation.class_names or _indices(test))  # fmt: skip
        title = (f"Conformal prediction sets, {ctx.dataset}: fitted on the validation split"
                 f" ({len(val.labels)}), scored on the test split ({len(test.labels)}),"
                 f" {evaluation.checkpoint.name};"
                 f" calibrated = {calibration.describe()}")  # fmt: skip
        about = {"checkpoint": str(evaluation.checkpoint), "dataset": ctx.dataset, "title": title,
                 "calibration": calibration.describe(), "seed": SEED,
                 "fitted_on": {"split": "val", "num_samples": len(val.labels)},
                 "scored_on": {"split": "test", "num_samples": len(test.labels)}}  # fmt: skip
        shifted = []
        if getattr(args, "shift_corruptions", None):  # --shift: the same predictors on each set
            val_probs = {kind: pair[0] for kind, pair in probs.items()}
            shifted = shift_coverage(ctx, args, val_probs, val.labels, SEED)
        files, record, table = write_conformal(records, sizes, out_dir, title, about, shifted)
        return AnalysisResult(self.name, files, table, record)


def _probabilities(calibration: RunCalibration, val: SplitLogits, test: SplitLogits,
                   calibrated: bool) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """(validation, test) probabilities: the raw softmax, or the run's stored calibration."""
    with torch.no_grad():
        return (calibration.probabilities(val.logits, calibrated=calibrated),
                calibration.probabilities(test.logits, calibrated=calibrated))  # fmt: skip


def _indices(split: SplitLogits) -> list[str]:
    return [str(c) for c in range(split.logits.shape[1])]


def write_conformal(records: list[dict[str, Any]], sizes: list[torch.Tensor], out_dir: Path, title: str,
                    about: dict[str, Any], shifted: Sequence[dict[str, Any]] = ()) -> tuple[
    list[Path], dict[str, Any], str
]:  # fmt: skip
    """conformal.json, conformal.md and the figures; (files, record, printed table). With
    ``shifted`` records (``--shift``), their section ``conformal_shift`` and its table too."""
    from softcal.evaluation import conformal_figures  # matplotlib only when files are written

    record = {**about, "methods": list(METHODS), "alphas": list(dict.fromkeys(r["alpha"] for r in records)),
              "records": records}  # fmt: skip
    table = markdown_tables(records, title)
    if shifted:
        record["conformal_shift"] = list(shifted)
        table = f"{table.rstrip()}\n\n{shift_table(shifted)}"
    files = [atomic_write_json(out_dir / "conformal.json", record),
             atomic_write_bytes(out_dir / "conformal.md", table.encode())]  # fmt: skip
    files += conformal_figures.write_figures(records, sizes, out_dir / "conformal", about)
    return files, record, table.rstrip("\n")


ANALYSIS = ConformalSets()
