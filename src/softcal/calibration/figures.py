"""Pictures of calibration: reliability diagram, confidence histogram, confusion matrix.

Each function takes the metric state (bin sums or a confusion matrix), draws with matplotlib's
Agg backend and returns the figure; :func:`to_rgb_array` turns it into an (H, W, 3) uint8 image
for TensorBoard and :func:`save_png` writes it to disk.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on training machines; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from softcal.atomic_files import atomic_write_bytes  # noqa: E402


def _per_bin(count: torch.Tensor, total: torch.Tensor) -> np.ndarray:
    count = count.detach().cpu().double()
    out = total.detach().cpu().double() / count.clamp_min(1)
    return np.where(count.numpy() > 0, out.numpy(), np.nan)


def reliability_diagram(
    count: torch.Tensor,
    confidence_sum: torch.Tensor,
    correct_sum: torch.Tensor,
    title: str = "Reliability diagram",
) -> Figure:
    """Accuracy against confidence per equal-width bin, with the gap to the diagonal shaded.

    Bars at the diagonal mean calibrated; bars below it mean overconfident. The lower panel
    shows how many predictions fall in each bin (log scale), since a bin's gap matters in
    proportion to its count. The title carries the ECE computed from the same bins.
    """
    n_bins = len(count)
    edges = np.linspace(0, 1, n_bins + 1)
    centers, width = (edges[:-1] + edges[1:]) / 2, 1.0 / n_bins
    accuracy = _per_bin(count, correct_sum)
    confidence = _per_bin(count, confidence_sum)
    counts = count.detach().cpu().double().numpy()
    total = max(counts.sum(), 1)
    ece = float(np.nansum(counts / total * np.abs(accuracy - confidence)))
    fig, (top, bottom) = plt.subplots(
        2, 1, figsize=(5, 6), dpi=100, sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    filled = ~np.isnan(accuracy)
    top.bar(centers[filled], accuracy[filled], width=width, color="#4C72B0", edgecolor="white",
            label="accuracy")  # fmt: skip
    gap_low = np.minimum(accuracy, confidence)[filled]
    gap_height = np.abs(accuracy - confidence)[filled]
    top.bar(centers[filled], gap_height, bottom=gap_low, width=width, color="#DD8452", alpha=0.5,
            edgecolor="#C44E52", hatch="//", label="gap to confidence")  # fmt: skip
    top.plot([0, 1], [0, 1], "k--", linewidth=1, label="perfect calibration")
    top.set(ylabel="accuracy", xlim=(0, 1), ylim=(0, 1))
    top.set_title(f"{title}\nECE = {100 * ece:.2f}%  ({int(total)} predictions, {n_bins} bins)")
    top.legend(loc="upper left", fontsize=8)
    bottom.bar(centers, counts, width=width, color="#55A868", edgecolor="white")
    if counts.max() > 0:
        bottom.set_yscale("log")
    bottom.set(xlabel="confidence (top-label softmax probability)", ylabel="count")
    for ax in (top, bottom):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


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
    what a better ranking of the same predictions could still gain (E-AURC).
    """
    fig, ax = plt.subplots(figsize=(5.5, 4), dpi=100)
    accuracies: list[float] = []
    top = 0.0
    for index, (name, (coverage, risk)) in enumerate(curves.items()):
        cov = torch.as_tensor(coverage).detach().cpu().double().numpy()
        rsk = torch.as_tensor(risk).detach().cpu().double().numpy()
        style = ("-", "--", "-.")[index % 3]  # dashes show curves that coincide (same ranking)
        ax.plot(cov, 100 * rsk, style, marker="." if len(cov) < 30 else None, label=name)
        accuracy = 1.0 - float(rsk[-1])
        if all(abs(accuracy - a) > 1e-9 for a in accuracies):
            accuracies.append(accuracy)
        top = max(top, float(rsk.max()))
    grid = np.linspace(1e-3, 1, 500)
    for accuracy in accuracies:
        ax.plot(grid, 100 * np.maximum(0.0, 1 - accuracy / grid), ":", color="gray",
                label=f"optimal at accuracy {100 * accuracy:.2f}%")  # fmt: skip
    ax.set(title=title, xlabel="coverage (share of predictions kept, most confident first)",
           ylabel="selective risk: error among kept (%)", xlim=(0, 1),
           ylim=(0, max(100 * top * 1.05, 1e-3)))  # fmt: skip
    ax.legend(loc="best", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


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
