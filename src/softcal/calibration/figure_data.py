"""The numbers behind the figures, as plain JSON-ready values (lists, floats, None).

:mod:`softcal.calibration.figures` draws from these functions, so a JSON file written from them
holds exactly what the picture shows: the reliability diagram's bins (count, accuracy, mean
confidence, gap) and the risk-coverage curve's points. No matplotlib here: writing the
numbers does not need a plotting library.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

#: Where a zoomed risk-coverage panel may start: round coverages, widest first.
ZOOM_STARTS = (0.5, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.998, 0.999)


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


def risk_coverage_points(coverage: Any, risk: Any, max_points: int = 500) -> dict[str, Any]:
    """One risk-coverage curve (as ``risk_coverage_curve`` returns it) as JSON-ready points.

    A curve has a point per distinct confidence (up to one per prediction); at most
    ``max_points`` are kept, evenly spaced along the curve, the first and the last (full
    coverage, where risk is the error rate) always among them. ``zoom_from`` is where the
    figure's zoomed panel starts (None: no zoom drawn).
    """
    cov, rsk = _numpy(coverage), _numpy(risk)
    keep = np.unique(np.round(np.linspace(0, len(cov) - 1, min(max_points, len(cov)))).astype(int))
    return {
        "coverage": cov[keep].tolist() if len(cov) else [],
        "risk": rsk[keep].tolist() if len(cov) else [],
        "num_points": len(cov),
        "error_rate": float(rsk[-1]) if len(rsk) else None,
        "zoom_from": zoom_start(cov, rsk),
    }


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
