"""Pictures of calibration: reliability diagram, confidence histogram, confusion matrix.

Each function takes the metric state (bin sums or a confusion matrix), draws with matplotlib's
Agg backend and returns the figure; :func:`to_rgb_array` turns it into an (H, W, 3) uint8 image
for TensorBoard and :func:`save_png` writes it to disk.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display on training machines; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from softcal.atomic_files import atomic_write_bytes  # noqa: E402
from softcal.calibration.figure_data import (  # noqa: E402, F401  (re-exported: the figures' numbers)
    reliability_data,
    risk_coverage_points,
    zoom_start,
)

#: Colours of the reliability diagram; each gap has its own, so a bar's colour names its meaning.
ACCURACY, OVERCONFIDENT, UNDERCONFIDENT, COUNT = "#4C72B0", "#C44E52", "#E3A21A", "#8C8C8C"


def reliability_diagram(
    count: torch.Tensor,
    confidence_sum: torch.Tensor,
    correct_sum: torch.Tensor,
    title: str = "Reliability diagram",
) -> Figure:
    """Accuracy against confidence per equal-width bin, with the gap to the diagonal shaded.

    Blue bars are each bin's accuracy (a bin whose accuracy is 0 shows its blue line on the
    axis); the gap from there to the bin's mean confidence is red where the model is
    overconfident (confidence above accuracy) and yellow where it is underconfident, both
    opaque, so the colours are the legend's. The lower panel counts the predictions in each
    bin on a log axis that starts below 1, with the count written on every non-empty bin: a
    bin of one prediction can draw the tallest gap and matters least. The title carries the
    ECE of the same bins. The numbers are :func:`~softcal.calibration.figure_data.reliability_data`'s.
    """
    data = reliability_data(count, confidence_sum, correct_sum)
    edges = np.asarray(data["edges"])
    centers, width = (edges[:-1] + edges[1:]) / 2, 1.0 / data["num_bins"]
    counts = np.asarray(data["count"], dtype=float)
    accuracy = np.array([np.nan if a is None else a for a in data["accuracy"]])
    confidence = np.array([np.nan if c is None else c for c in data["confidence"]])
    fig, (top, bottom) = plt.subplots(
        2, 1, figsize=(5, 6), dpi=100, sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    filled = counts > 0
    top.bar(centers[filled], accuracy[filled], width=width, color=ACCURACY, edgecolor="white",
            label="accuracy")  # fmt: skip
    # each bin's accuracy as a line too: a bar of height 0 would not show
    top.hlines(accuracy[filled], edges[:-1][filled] + 0.1 * width, edges[1:][filled] - 0.1 * width,
               colors=ACCURACY, linewidth=2.5, zorder=4, clip_on=False)  # fmt: skip
    _draw_gaps(top, centers[filled], width, accuracy[filled], confidence[filled])
    top.plot([0, 1], [0, 1], "k--", linewidth=1, label="perfect calibration")
    top.set(ylabel="accuracy", xlim=(0, 1), ylim=(0, 1))
    top.set_title(f"{title}\nECE = {100 * data['ece']:.2f}%  ({data['num_predictions']} predictions,"
                  f" {data['num_bins']} bins)", pad=34)  # fmt: skip
    # above the axes: inside, it would hide the bars of a bin of low confidence and high accuracy
    top.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=2, fontsize=7, frameon=False,
               handlelength=1.5, columnspacing=1.0)  # fmt: skip
    _count_panel(bottom, centers, width, counts)
    for ax in (top, bottom):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def _draw_gaps(ax: Any, centers: np.ndarray, width: float, accuracy: np.ndarray,
               confidence: np.ndarray) -> None:  # fmt: skip
    """Over- and underconfidence gaps, each in its own opaque colour (no blend with the bars)."""
    for colour, hatch, chosen, label in (
        (OVERCONFIDENT, "//", confidence > accuracy, "overconfident: confidence > accuracy"),
        (UNDERCONFIDENT, "\\\\", confidence < accuracy, "underconfident: accuracy > confidence"),
    ):
        if chosen.any():
            low = np.minimum(accuracy, confidence)[chosen]
            ax.bar(centers[chosen], np.abs(accuracy - confidence)[chosen], bottom=low, width=width,
                   color=colour, edgecolor="white", hatch=hatch, linewidth=0.5, zorder=3,
                   label=label)  # fmt: skip


def _count_panel(ax: Any, centers: np.ndarray, width: float, counts: np.ndarray) -> None:
    """Predictions per bin on a log axis from 0.5, so a bin of one prediction has a bar; each
    non-empty bin's count is written above it."""
    filled = counts > 0
    ax.bar(centers[filled], counts[filled], width=width, color=COUNT, edgecolor="white")
    if filled.any():
        ax.set_yscale("log")
        ax.set_ylim(0.5, counts.max() * 8)
        for x, n in zip(centers[filled], counts[filled], strict=True):
            ax.text(x, n * 1.15, f"{int(n)}", ha="center", va="bottom", fontsize=6)
    ax.set(xlabel="confidence (top-label softmax probability)", ylabel="count")


def confidence_histogram(
    count: torch.Tensor, confidence_sum: torch.Tensor, correct_sum: torch.Tensor,
    title: str = "Confidence histogram",
) -> Figure:  # fmt: skip
    """Share of predictions per confidence bin, with mean confidence and accuracy marked:
    a mean confidence right of the accuracy line is overconfidence at a glance."""
    n_bins = len(count)
    edges = np.linspace(0, 1, n_bins + 1)
    counts = count.detach().cpu().double().numpy()
    total = max(counts.sum(), 1)
    mean_conf = float(confidence_sum.sum()) / total
    accuracy = float(correct_sum.sum()) / total
    fig, ax = plt.subplots(figsize=(5, 3.5), dpi=100)
    ax.bar((edges[:-1] + edges[1:]) / 2, counts / total, width=1.0 / n_bins, color="#4C72B0",
           edgecolor="white")  # fmt: skip
    ax.axvline(accuracy, color="#C44E52", linestyle="--", label=f"accuracy {accuracy:.3f}")
    ax.axvline(mean_conf, color="#55A868", linestyle="-", label=f"mean confidence {mean_conf:.3f}")
    ax.set(title=title, xlabel="confidence", ylabel="share of predictions", xlim=(0, 1))
    ax.legend(loc="upper left", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def confusion_matrix_figure(
    matrix: torch.Tensor, class_names: Sequence[str], title: str = "Confusion matrix"
) -> Figure:
    """Counts of (true class, predicted class), rows normalised to colour; counts as text
    where there is room (up to 20 classes)."""
    counts = matrix.detach().cpu().double().numpy()
    k = len(counts)
    rows = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    size = min(max(4.0, 0.45 * k + 2), 16)
    fig, ax = plt.subplots(figsize=(size, size), dpi=100)
    ax.imshow(rows, cmap="Blues", vmin=0, vmax=1)
    labels = [str(n) for n in class_names] if len(class_names) == k else [str(i) for i in range(k)]
    if k <= 20:
        ax.set_xticks(range(k), labels, rotation=90, fontsize=8)
        ax.set_yticks(range(k), labels, fontsize=8)
        for i in range(k):
            for j in range(k):
                if counts[i, j]:
                    ax.text(j, i, f"{int(counts[i, j])}", ha="center", va="center", fontsize=7,
                            color="white" if rows[i, j] > 0.5 else "black")  # fmt: skip
    ax.set(title=title, xlabel="predicted class", ylabel="true class")
    fig.tight_layout()
    return fig


def risk_coverage_figure(curves: dict[str, tuple[torch.Tensor, torch.Tensor]],
                         title: str = "Risk-coverage curve") -> Figure:  # fmt: skip
    """Selective risk against coverage for each named (coverage, risk) curve - e.g. raw and
    calibrated, as :func:`softcal.uncertainty.selective.risk_coverage_curve` returns them - and
    dotted, the best curve possible at each curve's accuracy a (every wrong prediction least
    confident: risk max(0, 1 - a / coverage)). The legend shows the names as given: put the
    AURC in them (the figure cannot tell tied groups apart, so it computes none).

    A curve below another keeps fewer errors at every coverage. The gap to the dotted curve is
    what a better ranking of the same predictions could still gain (E-AURC). An accurate model
    keeps almost all its errors in the last few percent of coverage; a second panel then zooms
    in on them, from the round coverage where a tenth of the errors are kept
    (:func:`~softcal.calibration.figure_data.zoom_start`), shaded in the first panel.
    """
    def array(values: torch.Tensor) -> np.ndarray:
        return torch.as_tensor(values).detach().cpu().double().numpy()

    prepared = [(name, array(c), array(r)) for name, (c, r) in curves.items()]
    starts = [s for _, cov, rsk in prepared if (s := zoom_start(cov, rsk)) is not None]
    zoom = min(starts) if starts else None
    fig, axes = plt.subplots(1, 2 if zoom else 1, figsize=(10, 4) if zoom else (5.5, 4), dpi=100,
                             squeeze=False)  # fmt: skip
    main = axes[0][0]
    top = _draw_risk_curves(main, prepared, 0.0, labelled=True)
    main.set(title=title, xlabel="coverage (share of predictions kept, most confident first)",
             ylabel="selective risk: error among kept (%)", xlim=(0, 1),
             ylim=(0, max(105 * top, 1e-3)))  # fmt: skip
    main.legend(loc="best", fontsize=8)
    if zoom is not None:
        main.axvspan(zoom, 1, color="0.85", alpha=0.5, zorder=0)
        ax = axes[0][1]
        top = _draw_risk_curves(ax, prepared, zoom, labelled=False)
        ax.set(title=f"zoom: coverage {zoom:g} to 1 (shaded at left)", xlim=(zoom, 1),
               xlabel="coverage", ylabel="selective risk (%)", ylim=(0, max(105 * top, 1e-3)))  # fmt: skip
    for ax in axes[0]:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def _draw_risk_curves(ax: Any, prepared: list[tuple[str, np.ndarray, np.ndarray]], start: float,
                      labelled: bool) -> float:  # fmt: skip
    """Each curve and, once per accuracy, its optimum, for coverages from ``start``; returns
    the highest risk drawn there (for the axis)."""
    accuracies: list[float] = []
    top = 0.0
    for index, (name, cov, rsk) in enumerate(prepared):
        style = ("-", "--", "-.")[index % 3]  # dashes show curves that coincide (same ranking)
        ax.plot(cov, 100 * rsk, style, marker="." if len(cov) < 30 else None,
                label=name if labelled else "_nolegend_", color=f"C{index}")  # fmt: skip
        accuracy = 1.0 - float(rsk[-1])
        if all(abs(accuracy - a) > 1e-9 for a in accuracies):
            accuracies.append(accuracy)
        shown = rsk[cov >= start]
        top = max(top, float(shown.max()) if len(shown) else 0.0)
    grid = np.linspace(max(start, 1e-3), 1, 500)
    for accuracy in accuracies:
        optimum = np.maximum(0.0, 1 - accuracy / grid)
        ax.plot(grid, 100 * optimum, ":", color="gray",
                label=f"optimal at accuracy {100 * accuracy:.2f}%" if labelled else "_nolegend_")  # fmt: skip
        top = max(top, float(optimum.max()))
    return top


def score_histogram_figure(
    score_in: torch.Tensor, score_out: torch.Tensor, score_name: str, title: str = "OOD score",
    labels: Sequence[str] = ("in", "out"),
) -> Figure:  # fmt: skip
    """Histograms of one OOD score for the in-distribution and the OOD inputs on shared bins,
    each normalised to its own count; the title carries AUROC and FPR at 95% TPR. Little
    overlap means the score tells the two sets apart."""
    from softcal.uncertainty.ood import detection_metrics

    inside = torch.as_tensor(score_in).detach().cpu().double().numpy().ravel()
    outside = torch.as_tensor(score_out).detach().cpu().double().numpy().ravel()
    metrics = detection_metrics(score_in, score_out)
    low, high = min(inside.min(), outside.min()), max(inside.max(), outside.max())
    edges = np.linspace(low, high if high > low else low + 1, 51)
    fig, ax = plt.subplots(figsize=(5.5, 3.5), dpi=100)
    for values, label, colour in ((inside, labels[0], "#4C72B0"), (outside, labels[1], "#DD8452")):
        ax.hist(values, bins=edges, weights=np.full(len(values), 1 / len(values)), alpha=0.6,
                color=colour, label=f"{label} ({len(values)})")  # fmt: skip
    ax.set(xlabel=f"{score_name} (higher = more in-distribution)", ylabel="share of inputs")
    ax.set_title(f"{title}\nAUROC {100 * metrics['auroc']:.2f}%, FPR at 95% TPR"
                 f" {100 * metrics['fpr_at_95_tpr']:.2f}%")  # fmt: skip
    ax.legend(loc="upper left", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def to_rgb_array(fig: Figure) -> np.ndarray:
    """Render a figure to an (H, W, 3) uint8 array and close it."""
    fig.canvas.draw()
    image = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    plt.close(fig)
    return image


def save_png(fig: Figure, path: str | Path) -> Path:
    """Write a figure to ``path`` as PNG (atomically: a re-run never leaves half an image) and
    close it."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return atomic_write_bytes(path, buffer.getbuffer())
