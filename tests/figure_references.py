"""Independent numpy references for the figures' numbers in the JSON files: a reliability
diagram's bins and a risk-coverage curve's risk at given coverages, from top-label
probabilities and labels by their definitions. No softcal code is used."""

from __future__ import annotations

from typing import Any

import numpy as np


def np_bins(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> dict[str, np.ndarray]:
    """Per equal-width bin [k/B, (k+1)/B) of the top probability (1.0 in the last bin): count,
    accuracy and mean confidence (NaN for an empty bin). ``probs`` float32, as the code bins them."""
    confidence = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == labels).astype(np.float64)
    index = np.clip((confidence * np.float32(n_bins)).astype(np.int64), 0, n_bins - 1)
    count = np.bincount(index, minlength=n_bins).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        accuracy = np.bincount(index, correct, n_bins) / count
        mean_confidence = np.bincount(index, confidence.astype(np.float64), n_bins) / count
    return {"count": count, "accuracy": accuracy, "confidence": mean_confidence}


def _undefined_as_nan(values: list[float | None]) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in values], dtype=np.float64)


def assert_reliability(data: dict[str, Any], probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> None:
    """One ``reliability`` entry against :func:`np_bins`: counts exact and summing to N,
    accuracy, confidence and gap within 1e-6, empty bins null."""
    want = np_bins(probs, labels, n_bins)
    assert data["num_bins"] == n_bins and len(data["edges"]) == n_bins + 1
    np.testing.assert_allclose(data["edges"], np.linspace(0, 1, n_bins + 1))
    assert data["count"] == want["count"].astype(int).tolist()
    assert sum(data["count"]) == data["num_predictions"] == len(labels)
    for name in ("accuracy", "confidence"):
        np.testing.assert_allclose(_undefined_as_nan(data[name]), want[name], atol=1e-6, err_msg=name)
    gap = want["confidence"] - want["accuracy"]
    np.testing.assert_allclose(_undefined_as_nan(data["gap"]), gap, atol=1e-6)
    ece = np.nansum(want["count"] / len(labels) * np.abs(gap))
    assert abs(data["ece"] - ece) <= 1e-6


def np_risk_at(confidence: np.ndarray, correct: np.ndarray, coverage: np.ndarray) -> np.ndarray:
    """The error among the round(c * n) most confident predictions, for each coverage c. Each c
    must end a group of tied confidences (where the curve has its points): keeping exactly that
    many is then a threshold on the confidence, whatever the order inside a group."""
    order = np.argsort(-confidence, kind="stable")
    ranked = confidence[order]
    kept = np.rint(np.asarray(coverage) * len(confidence)).astype(np.int64)
    assert np.all((kept == len(ranked)) | (ranked[np.minimum(kept, len(ranked) - 1)] < ranked[kept - 1]))
    errors = np.cumsum(1.0 - correct[order].astype(np.float64))
    return errors[kept - 1] / kept


def assert_curve(points: dict[str, Any], confidence: np.ndarray, correct: np.ndarray,
                 max_points: int = 512) -> None:  # fmt: skip
    """One ``risk_coverage`` entry: at most ``max_points`` points, coverage rising from the
    first point of the curve to 1, the risk at each equal to :func:`np_risk_at`."""
    coverage, risk = np.asarray(points["coverage"]), np.asarray(points["risk"])
    distinct = np.unique(confidence)
    assert points["num_points"] == len(distinct) and len(coverage) == len(risk)
    assert len(coverage) <= max_points if len(distinct) > max_points else len(coverage) == len(distinct)
    assert np.all(np.diff(coverage) > 0) and coverage[-1] == 1.0
    assert coverage[0] * len(confidence) == np.sum(confidence == distinct[-1])  # the most confident group
    np.testing.assert_allclose(risk, np_risk_at(confidence, correct, coverage), atol=1e-12)
    assert points["error_rate"] == risk[-1] and abs(risk[-1] - (1 - correct.mean())) <= 1e-12
