"""predict's ``--conformal-alpha``: each image's prediction set, from the thresholds the run stored.

The thresholds are those :class:`~softcal.calibration.run_calibration.RunCalibration` fitted on
the calibrated validation probabilities with the checkpoint's own weights
(:mod:`softcal.calibration.conformal_thresholds`); the sets threshold the very probabilities
predict prints. Nothing is refitted here: predict never sees labelled data. A run that stored
none (a checkpoint from before thresholds were stored, one saved mid-epoch, a run trained with
``--calibrate false``) or an alpha it did not store is one line naming what to do instead.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

import torch

from softcal.calibration.conformal_thresholds import STORED_METHODS
from softcal.conformal import ConformalPredictor
from softcal.conformal.inputs import check_alpha
from softcal.conformal.quantile import min_calibration_size
from softcal.errors import SoftcalError

if TYPE_CHECKING:
    from collections.abc import Sequence

    from softcal.runs.load import LoadedRun


def check_conformal_options(args: argparse.Namespace) -> None:
    """``--conformal-alpha`` as a float in (0, 1) and ``--conformal-method`` one that runs
    store; checked before the checkpoint is read."""
    if args.conformal_alpha is None:
        return
    args.conformal_alpha = check_alpha(args.conformal_alpha)
    if args.conformal_method not in STORED_METHODS:
        raise SoftcalError(
            f"--conformal-method {args.conformal_method}: runs store {', '.join(STORED_METHODS)} (the"
            " randomised methods would give an image another set on every call); evaluate.py RUN"
            " --conformal scores all five on the test split"
        )


def stored_predictor(run: LoadedRun, args: argparse.Namespace) -> ConformalPredictor | None:
    """The stored predictor ``--conformal-alpha``/``--conformal-method`` name (None without
    ``--conformal-alpha``), or a one-line error saying what the run has instead."""
    alpha, method = args.conformal_alpha, args.conformal_method
    if alpha is None:
        return None
    stored = run.calibration.conformal_thresholds
    name = run.checkpoint.name
    if stored is None:
        raise SoftcalError(
            f"{name} stores no conformal thresholds (saved before runs stored them, mid-epoch, or trained"
            " with --calibrate false); retrain the run to store them, or see prediction sets on its test"
            f" split with scripts/evaluate.py {run.run_dir} --conformal"
        )
    predictor = stored.get(method, alpha)
    if predictor is None:
        raise SoftcalError(
            f"{name} stores no {method} thresholds at conformal alpha {alpha:g}; it stores alpha"
            f" {', '.join(f'{a:g}' for a in stored.alphas)} for {', '.join(stored.methods)}; pass one"
            " of those alphas"
        )
    _warn_if_infinite(predictor)
    return predictor


def _warn_if_infinite(predictor: ConformalPredictor) -> None:
    """A warning line when some threshold is +inf: the validation split was too small for
    alpha, and those classes are in every set (coverage kept, nothing learnt)."""
    infinite = int(torch.isinf(predictor.threshold).sum())
    if not infinite:
        return
    needed = min_calibration_size(predictor.alpha)
    which = "every class is" if predictor.threshold.dim() == 0 else f"{infinite} classes are"
    per = " per class" if predictor.threshold.dim() else ""
    print(f"warning: the run's validation split was too small for {predictor.method} at alpha"
          f" {predictor.alpha:g} ({needed} images needed{per}): {which} in every prediction set",
          file=sys.stderr)  # fmt: skip


def with_sets(report: dict[str, Any], predictor: ConformalPredictor | None, probabilities: torch.Tensor,
              names: Sequence[str]) -> list[list[dict[str, Any]]] | None:  # fmt: skip
    """Each image's prediction set as [{class, index, probability}], most probable first,
    added to ``report`` (``prediction_set`` per prediction, ``conformal`` for the run); None
    without a predictor (the report is left as it was)."""
    if predictor is None:
        return None
    chosen = predictor.prediction_sets(probabilities)
    sets = []
    for row, inside, entry in zip(probabilities, chosen, report["predictions"], strict=True):
        members = sorted(inside.nonzero()[:, 0].tolist(), key=lambda k: (-float(row[k]), k))
        entry["prediction_set"] = [{"class": names[k], "index": k, "probability": float(row[k])}
                                   for k in members]  # fmt: skip
        sets.append(entry["prediction_set"])
    state = predictor.state()
    report["conformal"] = {
        "method": predictor.method, "alpha": predictor.alpha, "coverage_target": 1 - predictor.alpha,
        "threshold": state["threshold"], "n_calibration": predictor.n_calibration,
        "fitted_on": "the calibrated probabilities of the run's validation split",
    }  # fmt: skip
    return sets


def set_lines(predictor: ConformalPredictor | None,
              sets: Sequence[list[dict[str, Any]]] | None) -> list[str] | None:  # fmt: skip
    """The line printed under each image's top-k: its set, e.g. ``95% set (lac): 7 98.12%, 1 1.20%``."""
    if predictor is None or sets is None:
        return None
    head = f"{100 * (1 - predictor.alpha):g}% set ({predictor.method}):"
    return [f"{head} " + (", ".join(f"{c['class']} {100 * c['probability']:.2f}%" for c in members)
                          or "empty (no class reaches the threshold)") for members in sets]  # fmt: skip
