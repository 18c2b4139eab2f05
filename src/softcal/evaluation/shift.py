"""``evaluate.py RUN --shift all``: accuracy and calibration under dataset shift (CIFAR-10-C style).

For every corruption and severity asked (``--shift all`` or a comma list of
:data:`softcal.shift.corruptions.CORRUPTIONS`; ``--shift-severities 1,2,3``, default all), the
first ``--shift-samples N`` test images (default all) are corrupted at seed 0
(:mod:`softcal.evaluation.shifted_sets`) and go through the net by
:meth:`~softcal.evaluation.context.EvaluationContext.shifted_logits` - the test split's Trainer
and preprocessing, one pass per set, kept for any later analysis of the same sets. Each set is
scored with the project's own metrics (:func:`softcal.evaluation.scored_logits.set_scores`):
accuracy, ECE, NLL and Brier, raw (T = 1) and with the run's stored calibration, which was
fitted on clean validation data - whether it still helps under shift is the question (Ovadia
et al. 2019 found it does not protect). The clean test split's first N images are the
severity-0 reference.

Files: ``shift.json`` (every set's numbers and the per-severity summary), ``shift.md``
(:mod:`softcal.evaluation.shift_report`), ``shift/ece_by_severity.png``,
``shift/accuracy_by_severity.png``, ``shift/examples.png``
(:mod:`softcal.evaluation.shift_figures`) and the same three pictures in
``tensorboard/events.out.tfevents.shift`` (tags ``shift/...``). evaluate prints the summary.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from softcal.errors import SoftcalError
from softcal.evaluation.context import EvaluationContext
from softcal.evaluation.results import AnalysisResult
from softcal.evaluation.scored_logits import set_scores
from softcal.evaluation.shift_report import markdown_report, summarise, text_table
from softcal.evaluation.shifted_sets import SEED
from softcal.runs.run_dirs import atomic_write_bytes, atomic_write_json
from softcal.shift.corruptions import parse_corruptions, parse_severities

#: The severities the example picture shows (both always: it does not depend on the sets scored).
EXAMPLE_SEVERITIES = (3, 5)


def shift_records(ctx: EvaluationContext, corruptions: Sequence[str], severities: Sequence[int],
                  samples: int | None) -> list[dict[str, Any]]:  # fmt: skip
    """The clean record (severity 0: the test split's first N images, from its one pass), then
    one per corruption and severity, in the order asked."""
    calibration, n_bins = ctx.calibration, int(ctx.run.model.hparams.calibration_bins)
    n = ctx.shifted_sets.count(samples)
    logits, labels = ctx.logits("test")
    sets = [("clean", 0, logits[:n], labels[:n])]
    sets += [(name, severity, *ctx.shifted_logits(name, severity, samples))
             for name in corruptions for severity in severities]  # fmt: skip
    return [{"corruption": name, "severity": severity, "num_images": len(labels),
             **set_scores(logits, labels, calibration, n_bins)}
            for name, severity, logits, labels in sets]  # fmt: skip


def coverage_notes(ctx: EvaluationContext, n: int) -> list[str]:
    """A note when the first ``n`` test images miss classes the split has: a split stored in
    class order (a PNG folder per class) puts one class first, and numbers of a few classes
    are no estimate of the whole test set's."""
    labels = ctx.shifted_sets.labels
    held, classes = len(labels[:n].unique()), len(labels.unique())
    if held >= classes:
        return []
    return [f"the first {n} test images hold {held} of the split's {classes} classes: these numbers"
            " describe those classes only (a split stored in class order, as image folders are, puts"
            " one class first); use a larger --shift-samples or leave it out"]  # fmt: skip


def _by_severity(records: Sequence[dict[str, Any]], metric: str, scalings: dict[str, str]) -> tuple[
    dict[str, dict[int, list[float]]], dict[str, float]
]:  # fmt: skip
    """(values[legend][severity] over the corruptions, clean[legend]) of ``metric``."""
    values: dict[str, dict[int, list[float]]] = {legend: {} for legend in scalings.values()}
    clean: dict[str, float] = {}
    for record in records:
        for stage, legend in scalings.items():
            if record["severity"] == 0:
                clean[legend] = record[stage][metric]
            else:
                values[legend].setdefault(record["severity"], []).append(record[stage][metric])
    return values, clean


def write_figures(ctx: EvaluationContext, records: Sequence[dict[str, Any]], corruptions: Sequence[str],
                  out_dir: Path, where: str) -> list[Path]:  # fmt: skip
    """The box plots and the example grid as PNGs under ``shift/`` and in TensorBoard."""
    from softcal.evaluation import shift_figures as draw  # matplotlib only when files are written

    raw, calibrated = "raw (T = 1)", f"calibrated ({ctx.calibration.label()})"
    scalings = {"raw": raw, "calibrated": calibrated}
    same_accuracy = all(r["raw"]["acc"] == r["calibrated"]["acc"] for r in records)
    figures = {
        "ece_by_severity": draw.severity_boxes(*_by_severity(records, "ece", scalings), "ECE (%)",
                                               f"ECE under shift, {where}"),
        "accuracy_by_severity": draw.severity_boxes(
            *_by_severity(records, "acc", {"raw": raw} if same_accuracy else scalings), "accuracy (%)",
            f"Accuracy under shift, {where}"),
    }  # fmt: skip
    sets = ctx.shifted_sets
    examples = {name: {s: sets.example(name, s) for s in EXAMPLE_SEVERITIES} for name in corruptions}
    title = f"{ctx.dataset} test image 0 under each corruption"
    figures["examples"] = draw.examples_figure(sets.images[0], examples, EXAMPLE_SEVERITIES, title)
    files, pixels = [], {}
    for name, fig in figures.items():
        png, pixels[f"shift/{name}"] = draw.png_and_pixels(fig)
        files.append(atomic_write_bytes(out_dir / "shift" / f"{name}.png", png))
    files.append(draw.write_tensorboard(out_dir / "tensorboard", pixels))
    return files


class ShiftAnalysis:
    """``--shift all|NAME,...`` with ``--shift-severities`` and ``--shift-samples``."""

    name = "shift"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--shift", metavar="all|CORRUPTION,...", default=None,
                            help="score the test set under the CIFAR-10-C corruptions (all 15, or a"
                            " comma list); writes shift.json/.md and figures")  # fmt: skip
        parser.add_argument("--shift-severities", metavar="all|1,2,...", default="all",
                            help="with --shift: the severities 1-5 to score (default all)")  # fmt: skip
        parser.add_argument("--shift-samples", metavar="N", type=int, default=None,
                            help="with --shift: score the first N test images of each set"
                            " (default all)")  # fmt: skip

    def check(self, args: argparse.Namespace) -> None:
        """The options parsed into ``args.shift_corruptions`` and ``args.shift_severity_list``:
        a bad name, severity or count is one line before any checkpoint is loaded."""
        asked_alone = args.shift_severities != "all" or args.shift_samples is not None
        if args.shift is None and asked_alone:
            raise SoftcalError("--shift-severities and --shift-samples go with --shift; add --shift all"
                               " or a comma list of corruptions")  # fmt: skip
        args.shift_corruptions = [] if args.shift is None else parse_corruptions(args.shift)
        args.shift_severity_list = parse_severities(args.shift_severities)
        if args.shift_samples is not None and args.shift_samples < 1:
            raise SoftcalError(f"--shift-samples {args.shift_samples}: use a positive number of test images"
                               " (leave it out for all)")  # fmt: skip

    def wanted(self, args: argparse.Namespace) -> bool:
        return bool(args.shift_corruptions)

    def run(self, ctx: EvaluationContext, out_dir: Path, args: argparse.Namespace) -> AnalysisResult:
        """Every asked set scored; shift.json, shift.md, the figures; the summary to print."""
        corruptions, severities = args.shift_corruptions, args.shift_severity_list
        if "frost" in corruptions:
            ctx.shifted_sets.frost_dir()  # the photographs' one-line error before any set is made
        records = shift_records(ctx, corruptions, severities, args.shift_samples)
        rows, n, label = summarise(records), records[0]["num_images"], ctx.calibration.label()
        where = f"{ctx.dataset} test, {n} images per set"
        title = (f"Calibration under shift: {where} ({len(corruptions)} corruptions x {len(severities)}"
                 f" severities, seed {SEED}), {ctx.run.checkpoint}")  # fmt: skip
        notes = coverage_notes(ctx, n)
        record = {"checkpoint": str(ctx.run.checkpoint), "dataset": ctx.dataset, "split": "test",
                  "samples_per_set": n, "seed": SEED, "corruptions": list(corruptions),
                  "severities": list(severities), "bins": int(ctx.run.model.hparams.calibration_bins),
                  "temperature": ctx.calibration.temperature, "calibration_method": ctx.calibration.method,
                  "calibration_label": label, "notes": notes, "records": records,
                  "summary": rows}  # fmt: skip
        markdown = markdown_report(records, rows, title, label)
        markdown += "".join(f"\nnote: {note}\n" for note in notes)
        files = [atomic_write_json(out_dir / "shift.json", record),
                 atomic_write_bytes(out_dir / "shift.md", markdown.encode())]  # fmt: skip
        files += write_figures(ctx, records, corruptions, out_dir, f"{where}, {ctx.run.checkpoint.name}")
        table = "\n".join([text_table(rows, title, label), *(f"note: {note}" for note in notes)])
        return AnalysisResult(self.name, files, table, record)

ANALYSIS = ShiftAnalysis()
