"""``evaluate.py RUN --ood SPEC``: does the model's confidence drop on inputs unlike its data?

The in-distribution set is the evaluated split (the test set by default), its logits those of
the split's one pass; the OOD set (:mod:`softcal.evaluation.ood_sets`: noise, an image folder
or a datamodule config's test split) goes through the same Trainer and preprocessing
(:meth:`~softcal.evaluation.context.EvaluationContext.images_logits`). Every score of
:data:`softcal.uncertainty.ood.SCORES` (higher = more in-distribution) is computed raw (T = 1)
and for the run's stored calibration (``ctx.calibration``), whatever its method:

* temperature scaling: every score at the fitted T (energy = T logsumexp(z / T), Liu et al.);
* vector or matrix scaling (logit transforms): msp and entropy from the calibrated
  probabilities, max_logit and energy from the calibrated logits;
* histogram binning or isotonic regression map probabilities, not logits: msp and entropy
  from their probabilities; max_logit and energy have no calibrated version and get raw rows
  only (a note under the tables says so);
* nothing fitted: raw rows only.

Each is scored by AUROC, AUPR-in, AUPR-out and FPR at 95% TPR (in-distribution positive; see
:mod:`softcal.uncertainty.ood` for the exact definitions).

Files: ``ood.json`` (every number, the sets and their conversion notes), ``ood.md`` (one
markdown table per OOD set) and ``ood/<set>_<score>.png``, the histogram of each raw score on
both sets.
"""

from __future__ import annotations

import argparse
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from softcal.errors import SoftcalError
from softcal.evaluation.context import EvaluationContext
from softcal.evaluation.ood_sets import OODSet, load_ood_set, parse_spec
from softcal.evaluation.results import AnalysisResult
from softcal.runs.run_dirs import atomic_write_bytes, atomic_write_json
from softcal.uncertainty.ood import LOGIT_SCORES, SCORES, detection_metrics, ood_scores, probability_scores

if TYPE_CHECKING:
    from softcal.calibration.run_calibration import RunCalibration

#: The table's columns: (metric key of detection_metrics, header).
COLUMNS = (("auroc", "AUROC"), ("aupr_in", "AUPR-in"), ("aupr_out", "AUPR-out"),
           ("fpr_at_95_tpr", "FPR@95%TPR"))  # fmt: skip


@dataclass
class Detection:
    """One OOD set scored against the in-distribution set: ``results[scaling][score][metric]``
    with scaling "raw" and, when the run has a fitted calibration, "calibrated" (holding the
    scores that calibration has a version of)."""

    ood: OODSet
    results: dict[str, dict[str, dict[str, float]]]
    scores_in: dict[str, torch.Tensor] = field(repr=False)
    scores_out: dict[str, torch.Tensor] = field(repr=False)

    @property
    def num_scored(self) -> int:
        """OOD images scored: fewer than were made when the run's Trainer limits test batches."""
        return len(self.scores_out[SCORES[0]])


def calibrated_scores(calibration: RunCalibration, logits: torch.Tensor) -> dict[str, torch.Tensor]:
    """The scores of the calibrated model (see the module docstring), by name; a score the
    calibration has no version of is left out."""
    if calibration.method == "temperature":
        return ood_scores(logits, calibration.temperature)  # T inside the float64 scores
    scores = probability_scores(calibration.probabilities(logits))
    try:
        transformed = calibration.calibrated_logits(logits)
    except SoftcalError:  # not a logit transform (histogram binning, isotonic regression)
        return scores
    from_logits = ood_scores(transformed)
    scores |= {name: from_logits[name] for name in LOGIT_SCORES}
    return {name: scores[name] for name in SCORES}


def detect(logits_in: torch.Tensor, logits_out: torch.Tensor, ood: OODSet,
           calibration: RunCalibration | None = None) -> Detection:  # fmt: skip
    """Every score and metric, raw and (with a fitted calibration) calibrated."""
    raw_in, raw_out = ood_scores(logits_in), ood_scores(logits_out)
    results = {"raw": {s: detection_metrics(raw_in[s], raw_out[s]) for s in SCORES}}
    if calibration is not None and calibration.fitted:
        cal_in, cal_out = (calibrated_scores(calibration, logits) for logits in (logits_in, logits_out))
        results["calibrated"] = {s: detection_metrics(cal_in[s], cal_out[s]) for s in SCORES if s in cal_in}
    return Detection(ood, results, raw_in, raw_out)


def _cell(value: float) -> str:
    return "-" if math.isnan(value) else f"{100 * value:.2f}%"


def _rows(detection: Detection, legends: Mapping[str, str]) -> list[tuple[str, str, list[str]]]:
    """(score, scaling legend, cells), each score's raw row then its calibrated one."""
    return [(score, legends[scaling], [_cell(found[score][key]) for key, _ in COLUMNS])
            for score in SCORES
            for scaling, found in detection.results.items() if score in found]  # fmt: skip


def set_title(detection: Detection, in_name: str, n_in: int) -> str:
    return f"OOD detection: {in_name} ({n_in}) vs {detection.ood.name} ({detection.num_scored})"


def text_table(detection: Detection, legends: Mapping[str, str], in_name: str, n_in: int) -> str:
    """One OOD set's table: a row per score and scaling, then the conversion notes."""
    width = max(12, *(len(legends[scaling]) + 2 for scaling in detection.results))
    head = f"{'score':<12}{'scaling':<{width}}" + "".join(f"{h:>12}" for _, h in COLUMNS)
    lines = [set_title(detection, in_name, n_in), head, "-" * len(head)]
    lines += [f"{score:<12}{legend:<{width}}" + "".join(f"{c:>12}" for c in cells)
              for score, legend, cells in _rows(detection, legends)]  # fmt: skip
    return "\n".join(lines + [f"note: {note}" for note in detection.ood.notes])


def markdown_table(detection: Detection, legends: Mapping[str, str], in_name: str, n_in: int) -> str:
    lines = [f"**{set_title(detection, in_name, n_in)}**", "",
             "| score | scaling | " + " | ".join(h for _, h in COLUMNS) + " |",
             "| --- | --- |" + " ---: |" * len(COLUMNS)]  # fmt: skip
    lines += [f"| {score} | {legend} | " + " | ".join(cells) + " |"
              for score, legend, cells in _rows(detection, legends)]  # fmt: skip
    return "\n".join(lines + [f"\n{note}" for note in detection.ood.notes]) + "\n"


def calibration_note(calibration: RunCalibration, detections: Sequence[Detection]) -> str | None:
    """What the tables leave out for this calibration, in one line; None when nothing."""
    if not calibration.fitted:
        return "no fitted temperature: only the raw scores (T = 1)"
    missing = [s for s in SCORES if s not in detections[0].results["calibrated"]]
    if missing:
        return (f"{calibration.label()} maps probabilities, not logits: {' and '.join(missing)} have"
                " no calibrated version (raw rows only)")
    return None


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "ood"


def write_detections(detections: Sequence[Detection], out_dir: Path, about: dict[str, Any],
                     legends: Mapping[str, str], notes: Sequence[str]) -> tuple[
    list[Path], dict[str, Any]
]:  # fmt: skip
    """ood.json, ood.md (``notes`` at its end) and a histogram per OOD set and raw score;
    returns (files, record). ``about`` holds the checkpoint, the in-distribution set and the
    calibration."""
    from softcal.calibration import figures  # matplotlib only when files are written

    in_set = about["in_distribution"]
    in_name, n_in = f"{in_set['dataset']} {in_set['split']}", int(in_set["num_images"])
    record = {**about, "sets": [
        {"name": d.ood.name, "spec": d.ood.spec, "num_images": d.num_scored, "notes": d.ood.notes,
         **d.results} for d in detections]}  # fmt: skip
    markdown = "\n".join([*(markdown_table(d, legends, in_name, n_in) for d in detections),
                          *(f"{note}\n" for note in notes)])  # fmt: skip
    files = [atomic_write_json(out_dir / "ood.json", record),
             atomic_write_bytes(out_dir / "ood.md", markdown.encode())]  # fmt: skip
    used: set[str] = set()
    for d in detections:
        slug = _slug(d.ood.name)
        while slug in used:  # two sets of one name (e.g. two folders called "test")
            slug += "_"
        used.add(slug)
        for score in SCORES:
            title = f"{score} (T = 1): {in_name} vs {d.ood.name}"
            fig = figures.score_histogram_figure(d.scores_in[score], d.scores_out[score], score, title,
                                                 labels=(in_name, d.ood.name))  # fmt: skip
            files.append(figures.save_png(fig, out_dir / "ood" / f"{slug}_{score}.png"))
    return files, record


class OODDetection:
    """``--ood SPEC`` (repeatable): the evaluated split against each OOD set."""

    name = "ood"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--ood", metavar="SPEC", action="append", default=[],
                            help="score the test set against out-of-distribution images: uniform-noise,"
                            " gaussian-noise, an image folder or a datamodule config (e.g."
                            " fashion_mnist); repeatable; writes ood.json/.md and histograms")  # fmt: skip

    def check(self, args: argparse.Namespace) -> None:
        """``--ood`` values parsed into ``args.ood_specs``: a bad one is one line, at once."""
        args.ood_specs = [parse_spec(spec) for spec in args.ood]

    def wanted(self, args: argparse.Namespace) -> bool:
        return bool(args.ood_specs)

    def run(self, ctx: EvaluationContext, out_dir: Path, args: argparse.Namespace) -> AnalysisResult:
        """Score the evaluated split against every OOD set; the files and the tables."""
        logits_in, run, calibration = ctx.logits().logits, ctx.run, ctx.calibration
        detections = []
        for spec in args.ood_specs:
            ood = load_ood_set(spec, run.in_channels, run.image_size, len(logits_in))
            detections.append(detect(logits_in, ctx.images_logits(ood.images), ood, calibration))
        in_set = {"dataset": ctx.dataset, "split": ctx.split, "num_images": len(logits_in)}
        about = {"checkpoint": str(run.checkpoint), "in_distribution": in_set, "temperature":
                 calibration.temperature, "calibration_method": calibration.method}  # fmt: skip
        legends = {"raw": "T = 1", "calibrated": calibration.label()}
        note = calibration_note(calibration, detections)
        notes = [note] if note else []
        files, record = write_detections(detections, out_dir, about, legends, notes)
        tables = [text_table(d, legends, ctx.where, len(logits_in)) for d in detections]
        return AnalysisResult(self.name, files, "\n\n".join(tables + [f"note: {n}" for n in notes]), record)


ANALYSIS = OODDetection()
