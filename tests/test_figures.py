"""The figures show what their numbers say, and the numbers come out as JSON-ready data."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from matplotlib.colors import to_rgba

from softcal.calibration import figures
from softcal.calibration.figure_data import reliability_data, risk_coverage_points, thinned, zoom_start
from softcal.uncertainty.selective import risk_coverage_curve


def bins_of(rows: dict[int, tuple[int, float, float]], n_bins: int = 10) -> dict[str, torch.Tensor]:
    """Bin sums as TopLabelBins keeps them: {bin: (count, mean confidence, accuracy)}."""
    count, confidence_sum, correct_sum = (torch.zeros(n_bins, dtype=torch.float64) for _ in range(3))
    for i, (n, confidence, accuracy) in rows.items():
        count[i], confidence_sum[i], correct_sum[i] = n, n * confidence, n * accuracy
    return {"count": count, "confidence_sum": confidence_sum, "correct_sum": correct_sum}


#: One prediction at confidence 0.25, wrong (accuracy 0, the tallest gap); an overconfident
#: bin; an underconfident one; and the bulk, calibrated.
BINS = bins_of({2: (1, 0.25, 0.0), 5: (40, 0.55, 0.4), 7: (30, 0.75, 0.9), 9: (929, 0.97, 0.97)})


def test_reliability_data_is_the_bins_in_json():
    data = reliability_data(**BINS)
    json.dumps(data)  # plain values only
    assert data["num_bins"] == 10 and data["num_predictions"] == 1000
    assert data["edges"][0] == 0 and data["edges"][-1] == 1 and len(data["edges"]) == 11
    assert data["count"] == [0, 0, 1, 0, 0, 40, 0, 30, 0, 929]
    assert data["accuracy"][0] is None and data["confidence"][0] is None  # empty: undefined, not 0
    assert data["accuracy"][2] == 0.0 and data["gap"][2] == pytest.approx(0.25)
    assert data["gap"][5] == pytest.approx(0.15) and data["gap"][7] == pytest.approx(-0.15)
    want = (1 * 0.25 + 40 * 0.15 + 30 * 0.15) / 1000
    assert data["ece"] == pytest.approx(want)


def colour_of(patch) -> tuple[float, ...]:
    return tuple(np.round(patch.get_facecolor(), 3))


def test_every_bin_has_a_visible_count_and_gaps_have_the_legends_colours():
    fig = figures.reliability_diagram(**BINS, title="t")
    top, bottom = fig.axes
    # a bin of one prediction: a bar above the log axis' lower end, and its count written
    assert bottom.get_yscale() == "log" and bottom.get_ylim()[0] < 1
    heights = sorted(p.get_height() for p in bottom.patches)
    assert heights == [1, 30, 40, 929]
    assert {t.get_text() for t in bottom.texts} == {"1", "40", "30", "929"}
    # over- and underconfidence in two opaque colours, the same as in the legend
    over, under = (tuple(np.round(to_rgba(c), 3)) for c in (figures.OVERCONFIDENT, figures.UNDERCONFIDENT))
    entries = zip(top.get_legend().get_texts(), top.get_legend().legend_handles, strict=True)
    legend = {t.get_text(): colour_of(h) for t, h in entries if hasattr(h, "get_facecolor")}
    assert legend["overconfident: confidence > accuracy"] == over
    assert legend["underconfident: accuracy > confidence"] == under
    gap_patches = [p for p in top.patches if colour_of(p) in (over, under)]
    assert sorted(colour_of(p) == over for p in gap_patches) == [False, True, True]
    assert all(p.get_alpha() in (None, 1) for p in top.patches)  # nothing blends into a third colour
    # the zero-accuracy bin: no accuracy bar, its accuracy drawn as a line at 0, its gap from 0 up
    zero = next(p for p in gap_patches if abs(p.get_x() - 0.2) < 1e-9)
    assert colour_of(zero) == over and zero.get_y() == 0 and zero.get_height() == pytest.approx(0.25)
    segments = top.collections[0].get_segments()
    assert any(abs(s[0][1]) < 1e-12 and 0.2 <= s[0][0] < 0.3 for s in segments)
    accuracy_bars = [p for p in top.patches if colour_of(p) == tuple(np.round(to_rgba(figures.ACCURACY), 3))]
    assert not any(0.2 <= p.get_x() < 0.3 and p.get_height() > 0 for p in accuracy_bars)


def test_the_gap_pixels_are_the_legends_colour_not_a_blend():
    fig = figures.reliability_diagram(**bins_of({7: (30, 0.75, 0.95), 9: (100, 0.9, 0.6)}))
    top = fig.axes[0]
    image = figures.to_rgb_array(fig).astype(int)
    height = image.shape[0]
    for x, y, colour in ((0.75, 0.85, figures.UNDERCONFIDENT), (0.95, 0.75, figures.OVERCONFIDENT)):
        px, py = top.transData.transform((x, y))
        window = image[int(height - py) - 4 : int(height - py) + 4, int(px) - 4 : int(px) + 4].reshape(-1, 3)
        want = np.array(to_rgba(colour)[:3]) * 255
        near = np.abs(window - want).max(axis=1) <= 12
        white = (window >= 240).all(axis=1)  # the hatching
        assert near.any() and (near | white).mean() > 0.8, colour


def test_risk_coverage_points_and_the_zoom():
    torch.manual_seed(0)
    n = 10_000
    confidence = (torch.randperm(n) + 1).double() / n  # distinct: one point per prediction
    correct = torch.ones(n, dtype=torch.bool)
    correct[confidence.argsort()[:80]] = False  # 0.8% errors, all among the least confident
    correct[confidence.argsort()[5000]] = False  # and one confident mistake
    coverage, risk = risk_coverage_curve(confidence, correct)
    points = risk_coverage_points(coverage, risk, max_points=200)
    json.dumps(points)
    assert points["num_points"] == n and 190 <= len(points["coverage"]) <= 200
    assert points["coverage"][0] == pytest.approx(1 / n) and points["coverage"][-1] == 1.0
    # half the budget where the zoomed panel draws: 100 of the curve's 101 points from 0.99 on
    assert sum(c >= 0.99 for c in points["coverage"]) == 100
    assert points["risk"][-1] == pytest.approx(81 / n) == points["error_rate"]
    assert points["zoom_from"] == 0.99 == zoom_start(coverage, risk)
    fig = figures.risk_coverage_figure({"raw": (coverage, risk)}, "Risk-coverage, test")
    main, zoom = fig.axes
    assert main.get_title() == "Risk-coverage, test" and zoom.get_xlim() == (0.99, 1.0)
    assert zoom.get_ylim()[1] >= 100 * 81 / n  # the zoom shows the curve's end
    # errors spread over the whole ranking: no zoom, one panel
    spread = torch.rand(n) > 0.4
    coverage, risk = risk_coverage_curve(confidence, spread)
    assert zoom_start(coverage, risk) is None
    assert len(figures.risk_coverage_figure({"raw": (coverage, risk)}).axes) == 1


@pytest.mark.parametrize("dense_from", [None, 0.9])
def test_thinning_keeps_exact_points_at_evenly_spaced_coverages(dense_from):
    """A curve of 5,000 points, a third of them in one group of tied confidences (one point at
    coverage 0.34): at most 512 kept, each an exact point of the curve, the first and the last
    among them, and no two neighbours further apart than the targets' spacing unless the curve
    has no point between them."""
    n = 7_500
    ends = np.concatenate([np.arange(1, 2500), np.arange(2550, n + 1)])  # a group of 51 ties
    coverage = ends / n
    keep = thinned(coverage, 512, dense_from)
    assert len(keep) <= 512 and keep[0] == 0 and keep[-1] == len(coverage) - 1
    assert np.all(np.diff(keep) > 0)  # increasing: the curve's order
    step = 1 / (512 - 1 if dense_from is None else 256 - 1)
    # each kept point is the curve's first at or beyond a target: a gap is at most the targets'
    # spacing plus the curve's own step into that point (1/n, or the 51 ties entering at once)
    gaps = np.diff(coverage[keep])
    steps_in = coverage[keep[1:]] - coverage[keep[1:] - 1]
    assert np.all(gaps <= step + steps_in + 1e-12) and gaps.max() >= 51 / n
    if dense_from is not None:  # the zoomed range holds half the budget
        assert np.sum(coverage[keep] >= dense_from) >= 256 - 1
    assert list(thinned(coverage[:300], 512, dense_from)) == list(range(300))  # short: whole
