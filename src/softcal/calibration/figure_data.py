"""The numbers behind the figures, as plain JSON-ready values (lists, floats, None).

:mod:`softcal.calibration.figures` draws from these functions, so a JSON file written from them
holds exactly what the picture shows: the reliability diagram's bins (count, accuracy, mean
confidence, gap) and the risk-coverage curve's points. :func:`reliability_json` and
:func:`risk_coverage_json` shape them into the ``reliability`` and ``risk_coverage`` entries
of results.json, metrics.json, selective.json and calibrators.json (per split, then per
scaling), so runs can be drawn again and overlaid. No matplotlib here: writing the numbers
does not need a plotting library.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

#: Where a zoomed risk-coverage panel may start: round coverages, widest first.
ZOOM_STARTS = (0.5, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.998, 0.999)

#: The most points of one risk-coverage curve a JSON file keeps: a curve has a point per
#: distinct confidence (10,000 for a 10,000-image test split), its file a few kilobytes.
MAX_CURVE_POINTS = 512


def _numpy(values: Any) -> np.ndarray:
    return torch.as_tensor(values).detach().cpu().double().numpy().ravel()


def _listed(values: np.ndarray) -> list[float | None]:
    """Floats for JSON; None where a value is undefined (an empty bin's accuracy)."""
    return [None if math.isnan(v) else float(v) for v in values.tolist()]


def per_bin(count: Any, total: Any) -> np.ndarray:
    """``total / count`` per bin; NaN for an empty bin (its mean is undefined, not 0)."""
    counts, totals = _numpy(count), _numpy(total)
    return np.where(counts > 0, totals / np.maximum(counts, 1), np.nan)


def reliability_data(count: Any, confidence_sum: Any, correct_sum: Any) -> dict[str, Any]:
    """The reliability diagram's numbers for equal-width bins of top-label confidence.

    Takes the bin sums the metrics keep (``TopLabelBins.compute()``: ``reliability_data(**bins)``).
    Per bin: ``count``, ``accuracy`` and mean ``confidence`` (None for an empty bin), and
    ``gap`` = confidence - accuracy (above 0: overconfident); ``edges`` has one more entry
    than the bins. ``ece`` is the count-weighted mean of the absolute gaps, the ECE that the
    figure's title shows.
    """
    counts = _numpy(count)
    accuracy, confidence = per_bin(count, correct_sum), per_bin(count, confidence_sum)
    total = float(counts.sum())
    gaps = confidence - accuracy
    ece = float(np.nansum(counts / max(total, 1.0) * np.abs(gaps)))
    return {
        "num_bins": len(counts),
        "num_predictions": int(round(total)),
        "ece": ece,
        "edges": np.linspace(0, 1, len(counts) + 1).tolist(),
        "count": [int(round(c)) for c in counts.tolist()],
        "accuracy": _listed(accuracy),
        "confidence": _listed(confidence),
        "gap": _listed(gaps),
    }


def risk_coverage_points(coverage: Any, risk: Any, max_points: int = MAX_CURVE_POINTS) -> dict[str, Any]:
    """One risk-coverage curve (as ``risk_coverage_curve`` returns it) as JSON-ready points.

    At most ``max_points`` points of the curve are kept, each with its exact coverage and risk
    (:func:`thinned`); the first and the last (full coverage, where risk is the error rate)
    are always among them. ``num_points`` is how many the whole curve has, ``zoom_from``
    where the figure's zoomed panel starts (None: no zoom drawn).
    """
    cov, rsk = _numpy(coverage), _numpy(risk)
    zoom = zoom_start(cov, rsk)
    keep = thinned(cov, max_points, zoom)
    return {
        "coverage": cov[keep].tolist(),
        "risk": rsk[keep].tolist(),
        "num_points": len(cov),
        "error_rate": float(rsk[-1]) if len(rsk) else None,
        "zoom_from": zoom,
    }


def thinned(coverage: np.ndarray, max_points: int, dense_from: float | None = None) -> np.ndarray:
    """Indices of at most ``max_points`` points of a curve whose ``coverage`` increases.

    The rule: target coverages evenly spaced over [0, 1] - half of them over
    [``dense_from``, 1] instead when the figure zooms in there, so the zoomed panel can be
    drawn again too - and for each target the first point at or beyond it. Kept points are
    points of the curve, their values exact, never interpolated; two neighbours are at most
    the targets' spacing apart in coverage plus the curve's own step into the second (1/n, or
    a group of tied confidences entering at once). Targets 0 and 1 keep the first and the last
    point. A curve of ``max_points`` points or fewer is kept whole.
    """
    if len(coverage) <= max_points:
        return np.arange(len(coverage))
    wide = max_points if dense_from is None else max_points // 2
    targets = np.linspace(0.0, 1.0, wide)
    if dense_from is not None:
        targets = np.concatenate([targets, np.linspace(dense_from, 1.0, max_points - wide)])
    picked = np.minimum(np.searchsorted(coverage, targets, side="left"), len(coverage) - 1)
    return np.unique(np.concatenate([[0, len(coverage) - 1], picked]))


def reliability_json(split: str, bins: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """``{"reliability": {split: {scaling: reliability_data(...)}}}``, the JSON entry of one
    split's reliability diagrams: ``bins`` maps each scaling ("raw", "calibrated", a
    calibrator's name) to its bin sums (other entries, a confusion matrix, are ignored)."""
    return {"reliability": {split: {
        scaling: reliability_data(sums["count"], sums["confidence_sum"], sums["correct_sum"])
        for scaling, sums in bins.items()
    }}}  # fmt: skip


def risk_coverage_json(split: str, curves: Mapping[str, tuple[Any, Any]],
                       max_points: int = MAX_CURVE_POINTS) -> dict[str, Any]:  # fmt: skip
    """``{"risk_coverage": {split: {scaling: risk_coverage_points(...)}}}``, the JSON entry of
    one split's risk-coverage figure: ``curves`` maps each scaling to its (coverage, risk)."""
    return {"risk_coverage": {split: {
        scaling: risk_coverage_points(coverage, risk, max_points)
        for scaling, (coverage, risk) in curves.items()
    }}}  # fmt: skip


def zoom_start(coverage: Any, risk: Any, share: float = 0.1) -> float | None:
    """The round coverage from which a zoomed panel shows where the errors enter: the largest
    of :data:`ZOOM_STARTS` below the coverage at which ``share`` of all errors are kept. A
    model that is right on its confident predictions keeps nearly all its errors in the last
    few percent of coverage, which a 0-1 axis squeezes into a sliver. None when the curve
    already spreads over the axis (or has no error at all)."""
    cov, rsk = _numpy(coverage), _numpy(risk)
    if len(cov) == 0 or rsk[-1] <= 0:
        return None
    kept_errors = rsk * cov / (rsk[-1] * cov[-1])  # share of all errors among the kept
    reached = float(cov[np.argmax(kept_errors >= share)])
    starts = [s for s in ZOOM_STARTS if s <= reached]
    return starts[-1] if starts else None
