"""``evaluate.py RUN --ood SPEC``: does the model's confidence drop on inputs unlike its data?

The in-distribution set is the evaluated split (the test set by default) with the logits
evaluate's own test run computed; the OOD set (:mod:`softcal.apps.ood_sets`: noise, an image
folder or a datamodule config's test split) goes through the same Trainer and preprocessing.
Every score of :data:`softcal.uncertainty.ood.SCORES` (higher = more in-distribution) is
computed raw (T = 1) and calibrated (the run's fitted T), and each is scored by AUROC,
AUPR-in, AUPR-out and FPR at 95% TPR (in-distribution positive; see
:mod:`softcal.uncertainty.ood` for the exact definitions).

Files: ``ood.json`` (every number, the sets and their conversion notes), ``ood.md`` (one
markdown table per OOD set) and ``ood/<set>_<score>.png``, the histogram of each raw score on
both sets.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from softcal.apps.ood_sets import OODSet, OODSpec, load_ood_set
from softcal.runs.run_dirs import atomic_write_bytes, atomic_write_json
from softcal.uncertainty.ood import SCORES, detection_metrics, ood_scores

#: The table's columns: (metric key of detection_metrics, header).
COLUMNS = (("auroc", "AUROC"), ("aupr_in", "AUPR-in"), ("aupr_out", "AUPR-out"),
           ("fpr_at_95_tpr", "FPR@95%TPR"))  # fmt: skip


@dataclass
class Detection:
    """One OOD set scored against the in-distribution set: ``results[scaling][score][metric]``
    with scaling "raw" and, when the run has a fitted T, "calibrated"."""

    ood: OODSet
    results: dict[str, dict[str, dict[str, float]]]
    scores_in: dict[str, torch.Tensor] = field(repr=False)
    scores_out: dict[str, torch.Tensor] = field(repr=False)

    @property
    def num_scored(self) -> int:
        """OOD images scored: fewer than were made when the run's Trainer limits test batches."""
        return len(self.scores_out[SCORES[0]])


def detect(logits_in: torch.Tensor, logits_out: torch.Tensor, temperature: float | None,
           ood: OODSet) -> Detection:  # fmt: skip
    """Every score and metric, raw and (with a fitted T) calibrated."""
    raw_in, raw_out = ood_scores(logits_in), ood_scores(logits_out)
    results = {"raw": {s: detection_metrics(raw_in[s], raw_out[s]) for s in SCORES}}
    if temperature is not None:
        cal_in, cal_out = ood_scores(logits_in, temperature), ood_scores(logits_out, temperature)
        results["calibrated"] = {s: detection_metrics(cal_in[s], cal_out[s]) for s in SCORES}
    return Detection(ood, results, raw_in, raw_out)


def _label(scaling: str, temperature: float | None) -> str:
    return "T = 1" if scaling == "raw" else f"T = {temperature:.3f}"


def _cell(value: float) -> str:
    return "-" if math.isnan(value) else f"{100 * value:.2f}%"


def _rows(detection: Detection, temperature: float | None) -> list[tuple[str, str, list[str]]]:
    """(score, scaling, cells), each score's raw row then its calibrated one."""
    return [(score, _label(scaling, temperature),
             [_cell(detection.results[scaling][score][key]) for key, _ in COLUMNS])
            for score in SCORES for scaling in detection.results]  # fmt: skip


def set_title(detection: Detection, in_name: str, n_in: int) -> str:
    return f"OOD detection: {in_name} ({n_in}) vs {detection.ood.name} ({detection.num_scored})"


def text_table(detection: Detection, temperature: float | None, in_name: str, n_in: int) -> str:
    """One OOD set's table: a row per score and scaling, then the conversion notes."""
    head = f"{'score':<12}{'scaling':<12}" + "".join(f"{h:>12}" for _, h in COLUMNS)
    lines = [set_title(detection, in_name, n_in), head, "-" * len(head)]
    lines += [f"{score:<12}{label:<12}" + "".join(f"{c:>12}" for c in cells)
              for score, label, cells in _rows(detection, temperature)]  # fmt: skip
    return "\n".join(lines + [f"note: {note}" for note in detection.ood.notes])


def markdown_table(detection: Detection, temperature: float | None, in_name: str, n_in: int) -> str:
    lines = [f"**{set_title(detection, in_name, n_in)}**", "",
             "| score | scaling | " + " | ".join(h for _, h in COLUMNS) + " |",
             "| --- | --- |" + " ---: |" * len(COLUMNS)]  # fmt: skip
    lines += [f"| {score} | {label} | " + " | ".join(cells) + " |"
              for score, label, cells in _rows(detection, temperature)]  # fmt: skip
    return "\n".join(lines + [f"\n{note}" for note in detection.ood.notes]) + "\n"


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "ood"


def write_detections(detections: Sequence[Detection], out_dir: Path, about: dict[str, Any],
                     temperature: float | None, in_name: str) -> list[Path]:  # fmt: skip
    """ood.json, ood.md and a histogram per OOD set and raw score."""
    from softcal.calibration import figures  # matplotlib only when files are written

    n_in = int(about["in_distribution"]["num_images"])
    record = {**about, "temperature": temperature, "sets": [
        {"name": d.ood.name, "spec": d.ood.spec, "num_images": d.num_scored, "notes": d.ood.notes,
         **d.results} for d in detections]}  # fmt: skip
    markdown = "\n".join(markdown_table(d, temperature, in_name, n_in) for d in detections)
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
    return files


def run_ood(state: dict[str, Any], evaluation: Any, out_dir: Path,
            specs: Sequence[OODSpec]) -> tuple[list[Path], str]:  # fmt: skip
    """Score the evaluated split against every OOD set; returns the files and the tables."""
    from softcal.apps.evaluate import evaluation_trainer
    from softcal.runs.split_logits import images_logits

    run = state["run"]
    logits_in = state["logits"]
    in_name = f"{evaluation.dataset} {evaluation.split}"
    temperature = run.calibration.temperature
    detections = []
    for spec in specs:
        ood = load_ood_set(spec, run.in_channels, run.image_size, len(logits_in))
        logits_out, _ = images_logits(run, ood.images, None, lambda cbs: evaluation_trainer(run, cbs))
        detections.append(detect(logits_in, logits_out, temperature, ood))
    about = {"checkpoint": str(evaluation.checkpoint),
             "in_distribution": {"dataset": evaluation.dataset, "split": evaluation.split,
                                 "num_images": len(logits_in)}}  # fmt: skip
    files = write_detections(detections, out_dir, about, temperature, in_name)
    tables = [text_table(d, temperature, in_name, len(logits_in)) for d in detections]
    if temperature is None:
        tables.append("note: no fitted temperature: only the raw scores (T = 1)")
    return files, "\n\n".join(tables)
