"""The non-parametric calibrators: histogram binning and isotonic regression, one-vs-rest.

Both map each class probability p_k = softmax(z)_k through a monotone function fitted on the
validation set against the indicator 1[y = k], then divide each row by its sum so it is a
distribution again. Neither is a logit transform: the map is piecewise (constant or linear) and
the renormalisation mixes classes, so they are not exported (``exportable = False``). Their
forward runs in torch on any device - isotonic regression is fitted by scikit-learn, but its
fitted breakpoints are stored as tensors and interpolated here, so applying it needs no sklearn.

A row whose mapped values are all zero (possible when every class's map is 0 there, e.g. a
class absent from the validation set holding all of a test row's mass) falls back to the
uncalibrated softmax row rather than dividing by zero.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from softcal.calibration.calibrator_base import Calibrator
from softcal.calibration.metrics import bin_index, class_bin_sums

DEFAULT_BINS = 15


def renormalise(mapped: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
    """Rows of ``mapped`` divided by their sums; an all-zero row becomes the row of ``probs``."""
    total = mapped.sum(dim=1, keepdim=True)
    empty = total <= 0
    return torch.where(empty, probs, mapped / torch.where(empty, torch.ones_like(total), total))


class HistogramCalibrator(Calibrator):
    """Histogram binning (Zadrozny & Elkan 2001; Guo et al. 2017), one-vs-rest.

    For each class, B equal-width bins on p_k (the bins of the ECE metric: [j/B, (j+1)/B), 1.0
    in the last); a bin's value is the fraction of validation rows in it whose label is k. A
    bin no validation row falls in has no such fraction: it keeps its centre (j + 0.5) / B.
    """

    method = "histogram"
    exportable = False

    def __init__(self, num_classes: int, num_bins: int = DEFAULT_BINS) -> None:
        super().__init__(num_classes)
        self.num_bins = num_bins
        self.bin_values = self._centres().expand(num_classes, num_bins).clone()

    def _centres(self) -> torch.Tensor:
        return (torch.arange(self.num_bins, dtype=torch.float64) + 0.5) / self.num_bins

    def _fit(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        probs = F.softmax(logits, dim=1)
        # The (class, bin) sums of classwise ECE: a bin's value is its share of label k.
        count, _, positives = class_bin_sums(probs, labels, self.num_bins)
        centres = self._centres().repeat(self.num_classes)
        values = torch.where(count > 0, positives / count.clamp_min(1), centres)
        self.bin_values = values.reshape(self.num_classes, self.num_bins)
        self._fitted = True

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        if not self._fitted:
            return F.softmax(logits.float(), dim=1)
        probs = F.softmax(logits.double(), dim=1)
        index = bin_index(probs, self.num_bins)
        values = self.bin_values.to(logits.device)
        mapped = torch.gather(values.expand(len(probs), -1, -1), 2, index.unsqueeze(2)).squeeze(2)
        return renormalise(mapped, probs).float()

    def describe(self) -> str:
        name = f"histogram binning ({self.num_bins} equal-width bins, one-vs-rest)"
        return name if self._fitted else self._not_fitted(name)

    def _params(self) -> dict[str, Any]:
        return {"bin_values": self.bin_values, "num_bins": self.num_bins}

    def _load_params(self, params: dict[str, Any]) -> None:
        self.num_bins = int(params["num_bins"])
        self.bin_values = params["bin_values"].double()


def interpolate(x: torch.Tensor, xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
    """Piecewise-linear interpolation through increasing ``xs``, clipped to their range: what
    sklearn's IsotonicRegression(out_of_bounds="clip").predict computes from its thresholds."""
    if len(xs) == 1:
        return ys.expand_as(x).clone()
    x = x.clamp(float(xs[0]), float(xs[-1]))
    right = torch.searchsorted(xs, x, right=True).clamp(1, len(xs) - 1)
    x0, x1, y0, y1 = xs[right - 1], xs[right], ys[right - 1], ys[right]
    return y0 + (x - x0) / (x1 - x0) * (y1 - y0)


class IsotonicCalibrator(Calibrator):
    """Isotonic regression (Zadrozny & Elkan 2002), one-vs-rest: for each class the
    non-decreasing map of p_k closest (least squares) to 1[y = k] on the validation set,
    fitted by scikit-learn, clipped to [0, 1] and outside the fitted range."""

    method = "isotonic"
    exportable = False

    def __init__(self, num_classes: int) -> None:
        super().__init__(num_classes)
        # All classes' breakpoints, concatenated; class k's are [offsets[k], offsets[k + 1]).
        self.x_thresholds = torch.zeros(0, dtype=torch.float64)
        self.y_thresholds = torch.zeros(0, dtype=torch.float64)
        self.offsets = torch.zeros(num_classes + 1, dtype=torch.long)

    def _fit(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        # Imported here: only fitting needs scikit-learn; predict and export apply stored tensors.
        from sklearn.isotonic import IsotonicRegression

        probs = F.softmax(logits, dim=1).numpy()
        xs, ys, lengths = [], [], [0]
        for k in range(self.num_classes):
            iso = IsotonicRegression(y_min=0.0, y_max=1.0, increasing=True, out_of_bounds="clip")
            iso.fit(probs[:, k], (labels.numpy() == k).astype("float64"))
            xs.append(torch.as_tensor(iso.X_thresholds_, dtype=torch.float64))
            ys.append(torch.as_tensor(iso.y_thresholds_, dtype=torch.float64))
            lengths.append(len(xs[-1]))
        self.x_thresholds, self.y_thresholds = torch.cat(xs), torch.cat(ys)
        self.offsets = torch.tensor(lengths).cumsum(0)
        self._fitted = True

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        if not self._fitted:
            return F.softmax(logits.float(), dim=1)
        probs = F.softmax(logits.double(), dim=1)
        xs, ys = self.x_thresholds.to(logits.device), self.y_thresholds.to(logits.device)
        offsets = self.offsets.tolist()
        pieces = [slice(offsets[k], offsets[k + 1]) for k in range(self.num_classes)]
        mapped = torch.stack(
            [interpolate(probs[:, k].contiguous(), xs[piece], ys[piece]) for k, piece in enumerate(pieces)],
            dim=1,
        )
        return renormalise(mapped, probs).float()

    def describe(self) -> str:
        if not self._fitted:
            return self._not_fitted("isotonic regression")
        steps = int(self.offsets[-1]) / self.num_classes
        return f"isotonic regression (one-vs-rest, {steps:.0f} breakpoints per class on average)"

    def _params(self) -> dict[str, Any]:
        return {"x_thresholds": self.x_thresholds, "y_thresholds": self.y_thresholds, "offsets": self.offsets}

    def _load_params(self, params: dict[str, Any]) -> None:
        self.x_thresholds = params["x_thresholds"].double()
        self.y_thresholds = params["y_thresholds"].double()
        self.offsets = params["offsets"].long()
