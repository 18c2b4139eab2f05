"""The figures of ``evaluate.py RUN --conformal``: do the sets cover, and how large are they.

* ``coverage.png``: empirical test coverage against the target 1 - alpha, one point per method
  and alpha (side by side), raw probabilities on the left and calibrated on the right. Under
  each group of points a solid line marks the guarantee's floor 1 - alpha (on the diagonal)
  and a dotted one its ceiling 1 - alpha + 1/(n + 1) for continuous scores under the score
  rule. Points between the two are what the theory promises; above, a
  conservative method (APS's include-last rule, classes with too few images for
  classwise_lac); below the diagonal by more than the test split's noise, a broken assumption
  (the validation and test images not exchangeable).
* ``set_sizes_<method>.png``: the share of test images per set size, one panel per alpha,
  raw and calibrated bars side by side - what calibration changes (the coverage stays).
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from softcal.calibration import figures  # matplotlib, Agg backend

plt = figures.plt
#: One marker per method, so points stay apart in greyscale too.
MARKERS = ("o", "s", "^", "D", "v", "P", "X")


def coverage_figure(records: Sequence[dict[str, Any]], n_val: int, title: str) -> figures.Figure:
    """Coverage against 1 - alpha per method and alpha, raw | calibrated (see the module)."""
    kinds = list(dict.fromkeys(r["probabilities"] for r in records))  # raw, calibrated
    fig, axes = plt.subplots(1, len(kinds), figsize=(5 * len(kinds), 4.4), dpi=100, sharey=True,
                             squeeze=False)  # fmt: skip
    axes = axes[0]
    methods = list(dict.fromkeys(r["method"] for r in records))
    targets = sorted({r["target_coverage"] for r in records})
    low = min(targets[0], min(r["coverage"] for r in records)) - 0.01
    span = 1.0 - low
    line = np.array([low, 1.0])
    half = 0.036 * span  # the half-width of a group of points at one alpha
    for ax, kind in zip(axes, kinds, strict=True):
        ax.plot(line, line, color="gray", lw=0.8, alpha=0.6, label="1 - alpha (the diagonal)")
        for t in targets:  # each point is read against the floor and ceiling drawn under it
            ax.hlines(t, t - half, t + half, color="black", lw=1.2,
                      label="guaranteed floor 1 - alpha" if t == targets[0] else None)  # fmt: skip
            ceiling = f"ceiling 1 - alpha + 1/(n + 1), n = {n_val}" if t == targets[0] else None
            ax.hlines(min(t + 1 / (n_val + 1), 1.0), t - half, t + half, color="black", lw=1,
                      linestyles=":", label=ceiling)  # fmt: skip
        for i, method in enumerate(methods):
            shown = [r for r in records if r["method"] == method and r["probabilities"] == kind]
            shift = (i - (len(methods) - 1) / 2) * 1.6 * half / len(methods)  # side by side at each alpha
            ax.plot([r["target_coverage"] + shift for r in shown], [r["coverage"] for r in shown],
                    MARKERS[i % len(MARKERS)], ls="none", label=method, alpha=0.85)  # fmt: skip
        ax.set(title=f"{kind} probabilities", xlabel="target coverage 1 - alpha",
               xlim=(low, 1.0 + half), ylim=(low, 1.0 + 0.02 * span))  # fmt: skip
        ax.set_xticks(targets)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("empirical coverage on the test split")
    axes[-1].legend(loc="lower right", fontsize=8)
    fig.suptitle(textwrap.fill(title, 110), fontsize=10)
    fig.tight_layout()
    return fig


def set_size_figure(method: str, panels: Sequence[tuple[float, dict[str, torch.Tensor]]],
                    title: str) -> figures.Figure:  # fmt: skip
    """The share of test images per set size of one method: a panel per alpha, each holding
    kind -> set sizes (N,) bars side by side, the mean set size in the legend."""
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), dpi=100,
                             sharey=True, squeeze=False)  # fmt: skip
    highest = 0.0
    for ax, (alpha, by_kind) in zip(axes[0], panels, strict=True):
        top = max(int(sizes.max()) for sizes in by_kind.values())
        width = 0.8 / len(by_kind)
        for j, (kind, sizes) in enumerate(by_kind.items()):
            share = np.bincount(sizes.numpy().astype(np.int64), minlength=top + 1) / len(sizes)
            x = np.arange(top + 1) + (j - (len(by_kind) - 1) / 2) * width
            ax.bar(x, share, width, label=f"{kind}, mean {float(sizes.double().mean()):.2f}")
            highest = max(highest, float(share.max()))
        ax.set(title=f"alpha = {alpha:g} (target {100 * (1 - alpha):g}%)", xlabel="set size (classes)")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.legend(fontsize=8, loc="upper right")
        ax.grid(alpha=0.3, axis="y")
    axes[0][0].set_ylabel("share of test images")
    axes[0][0].set_ylim(0, 1.3 * highest)  # shared; room for the legends above the bars
    fig.suptitle(textwrap.fill(f"{method}: {title}", 120), fontsize=10)
    fig.tight_layout()
    return fig


def write_figures(records: Sequence[dict[str, Any]], sizes: Sequence[torch.Tensor], folder: Path,
                  about: dict[str, Any]) -> list[Path]:  # fmt: skip
    """coverage.png and set_sizes_<method>.png under ``folder``; ``sizes`` are the records'
    test set sizes, in the records' order."""
    n_val = int(about["fitted_on"]["num_samples"])
    where = f"{about['dataset']}, {Path(about['checkpoint']).name}"
    fig = coverage_figure(records, n_val, f"Conformal coverage on the test split, {where}")
    files = [figures.save_png(fig, folder / "coverage.png")]
    for method in dict.fromkeys(r["method"] for r in records):
        panels: dict[float, dict[str, torch.Tensor]] = {}
        for record, sized in zip(records, sizes, strict=True):
            if record["method"] == method:
                panels.setdefault(record["alpha"], {})[record["probabilities"]] = sized
        fig = set_size_figure(method, list(panels.items()), f"test set sizes, {where}")
        files.append(figures.save_png(fig, folder / f"set_sizes_{method}.png"))
    return files
