"""``python scripts/benchmark.py --views RUN [RUN ...]``: what each set of test-time views buys.

Training does not depend on the views a net averages at test time (``WhitenedCNN``'s
``flip_average`` and ``translate_average``), so one trained run answers for all of them: each
run is reopened once per view set, its validation and test splits passed through the net, a
temperature fitted on the validation logits of those views, and the test split scored raw and
calibrated. The time is the test pass's, per 10,000 images, at the evaluation batch size the
runs' configs give unless an override sets another.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from softcal.calibration.metrics import ExpectedCalibrationError
from softcal.calibration.temperature import fit_temperature
from softcal.errors import SoftcalError
from softcal.evaluation.context import QUIET, EvaluationContext
from softcal.runs.load import load_run
from softcal_bench.report import md_table

#: name -> (flip_average, translate_average), fewest views first
VIEW_SETS = {"image": (False, False), "mirror": (True, False), "shifts": (False, True),
             "mirror + shifts": (True, True)}  # fmt: skip
VIEW_COUNTS = {"image": 1, "mirror": 2, "shifts": 3, "mirror + shifts": 6}


@dataclass
class ViewScore:
    run: str
    views: str
    acc: float
    ece_raw: float
    ece_calibrated: float
    nll_raw: float
    nll_calibrated: float
    temperature: float
    seconds_per_10k: float


def run_label(config: dict) -> str:
    """``cifar10, seed 0``: the run's name and seed as its saved config gives them (no paths)."""
    logger = (config.get("trainer") or {}).get("logger") or {}
    name = (logger.get("init_args") or {}).get("name", "run") if isinstance(logger, dict) else "run"
    return f"{name}, seed {config.get('seed_everything')}"


def view_overrides(views: str) -> list[str]:
    flip, translate = VIEW_SETS[views]
    return ["--model.net.init_args.flip_average", str(flip).lower(),
            "--model.net.init_args.translate_average", str(translate).lower()]  # fmt: skip


def ece(logits: torch.Tensor, labels: torch.Tensor) -> float:
    metric = ExpectedCalibrationError(15)
    metric.update(logits.softmax(dim=1), labels)
    return float(metric.compute())


def score(run: Path, views: str, overrides: Sequence[str]) -> ViewScore:
    """One run under one view set: the temperature from its validation split, scores on test."""
    loaded = load_run(run, [*view_overrides(views), *overrides])
    context = EvaluationContext(loaded, "test", [*QUIET, *overrides])
    started = time.perf_counter()
    test = context.logits("test")
    seconds = time.perf_counter() - started
    val = context.logits("val")
    temperature = fit_temperature(val.logits, val.labels)
    if temperature is None:
        raise SoftcalError(f"{run}: no temperature could be fitted to the {views} logits")
    scaled = test.logits / temperature
    return ViewScore(
        run=run_label(loaded.config),
        views=views,
        acc=float((test.logits.argmax(dim=1) == test.labels).float().mean()),
        ece_raw=ece(test.logits, test.labels),
        ece_calibrated=ece(scaled, test.labels),
        nll_raw=float(F.cross_entropy(test.logits, test.labels)),
        nll_calibrated=float(F.cross_entropy(scaled, test.labels)),
        temperature=temperature,
        seconds_per_10k=seconds * 10_000 / len(test.labels),
    )


def measure_views(runs: Sequence[Path], overrides: Sequence[str] = ()) -> list[ViewScore]:
    scores = []
    for run in runs:
        for views in VIEW_SETS:
            print(f"[benchmark] {run}: {views} ...", flush=True)
            scores.append(score(run, views, overrides))
    return scores


def views_markdown(scores: Sequence[ViewScore]) -> str:
    """A row per run and view set, then each view set's mean over the runs and its change
    against the mirror alone (the configs' previous default)."""
    header = ["run", "views", "test acc", "ECE raw", "ECE calibrated", "NLL raw", "NLL calibrated",
              "T", "test pass per 10k images"]  # fmt: skip
    rows = [[s.run, f"{s.views} ({VIEW_COUNTS[s.views]})", f"{100 * s.acc:.2f}%", f"{100 * s.ece_raw:.2f}%",
             f"{100 * s.ece_calibrated:.2f}%", f"{s.nll_raw:.4f}", f"{s.nll_calibrated:.4f}",
             f"{s.temperature:.3f}", f"{s.seconds_per_10k:.1f} s"]
            for s in scores]  # fmt: skip
    mean = {}
    for views in VIEW_SETS:
        group = [s for s in scores if s.views == views]
        keys = ("acc", "ece_raw", "ece_calibrated", "nll_calibrated", "seconds_per_10k")
        mean[views] = {k: sum(getattr(s, k) for s in group) / len(group) for k in keys}
    base = mean["mirror"]
    summary = [[f"{views} ({VIEW_COUNTS[views]})", f"{100 * m['acc']:.2f}%",
                f"{100 * (m['acc'] - base['acc']):+.2f}", f"{100 * m['ece_raw']:.2f}%",
                f"{100 * m['ece_calibrated']:.2f}%", f"{m['nll_calibrated']:.4f}",
                f"{m['seconds_per_10k']:.1f} s"] for views, m in mean.items()]  # fmt: skip
    return "\n\n".join([
        f"Each run reopened once per view set; T fitted on its validation split for those views. Mean"
        f" over the {len(scores) // len(VIEW_SETS)} run(s), and the accuracy change against the mirror"
        " alone (points):",
        md_table(["views", "test acc", "vs mirror", "ECE raw", "ECE calibrated", "NLL calibrated",
                  "test pass per 10k images"], summary),
        "Per run:",
        md_table(header, rows),
    ])  # fmt: skip
