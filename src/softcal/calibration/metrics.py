"""Calibration metrics, all computed from softmax probabilities.

A classifier is calibrated when, among the predictions it makes with confidence c, a fraction
c is correct. The metrics here measure the gap:

* ``ece`` / ``mce`` / ``rmsce``: top-label calibration error over equal-width confidence bins
  (the L1, max and L2 norms of the per-bin gap |accuracy - confidence|, bins weighted by size).
* ``adaptive_ece``: the same over equal-mass bins (each holds the same number of predictions).
* ``classwise_ece``: calibration of every class probability, not only the top one, averaged.
* ``brier``: mean squared distance between the probability vector and the one-hot label.
* ``nll``: mean negative log-probability of the true class (what cross-entropy minimises).

The binned metrics keep three sums per bin (count, confidence, correct), so their state is
exact, constant in memory and adds up across processes; torchmetrics' own calibration error
keeps every prediction instead. Bins are [k/B, (k+1)/B), with a confidence of exactly 1.0 in
the last bin. Only ``adaptive_ece`` stores per-sample values: equal-mass bins need sorting
(the (confidence, correct) pairs the selective metrics of the test stages rank, shared).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchmetrics import Metric, MetricCollection
from torchmetrics.classification import MulticlassAccuracy

from softcal.uncertainty.selective_metrics import TopLabelPairs

# A probability of 0 has no finite log; float32's smallest normal number caps a term at 87.3.
_TINY = torch.finfo(torch.float32).tiny


def bin_index(confidence: torch.Tensor, n_bins: int) -> torch.Tensor:
    """Equal-width bin of each confidence in [0, 1]: floor(c * B), with 1.0 in the last bin."""
    return (confidence * n_bins).long().clamp_(0, n_bins - 1)


#: (count, probability sum, hit sum) per (class, bin), each (K * B,) float64, at k * B + b.
ClassBinSums = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def class_bin_sums(probs: torch.Tensor, target: torch.Tensor, n_bins: int,
                   into: ClassBinSums | None = None) -> ClassBinSums:  # fmt: skip
    """For every class k and equal-width bin b of p_k: how many rows fall in it, the sum of
    their p_k and how many of them have label k. One implementation for the two users of the
    same sums: classwise ECE accumulates them over batches, histogram binning fits on them.

    ``into`` adds this batch into running sums in place - a metric's state gets the very float64
    additions it always did (adding a batch's own sums would round differently); without it
    the sums start at zero.
    """
    num_classes = probs.shape[1]
    size = num_classes * n_bins
    count, prob_sum, hit_sum = into if into is not None else (
        torch.zeros(size, dtype=torch.float64, device=probs.device) for _ in range(3))
    classes = torch.arange(num_classes, device=probs.device)
    # (class, bin) flattened to one index: all K histograms take one index_add_ per sum.
    index = (classes * n_bins + bin_index(probs, n_bins)).flatten()
    hits = (target[:, None] == classes).double().flatten()
    count.index_add_(0, index, torch.ones_like(hits))
    prob_sum.index_add_(0, index, probs.double().flatten())
    hit_sum.index_add_(0, index, hits)
    return count, prob_sum, hit_sum


# ----------------------------------------------------------------------------- binned metrics


class TopLabelBins(Metric):
    """Per-bin count, confidence sum and correct sum of the top-label prediction."""

    full_state_update = False
    is_differentiable = False

    def __init__(self, n_bins: int = 15, **kwargs) -> None:
        super().__init__(**kwargs)
        self.n_bins = n_bins
        for name in ("count", "confidence_sum", "correct_sum"):
            self.add_state(name, torch.zeros(n_bins, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, probs: torch.Tensor, target: torch.Tensor) -> None:
        confidence, prediction = probs.max(dim=1)
        index = bin_index(confidence, self.n_bins)
        self.count.index_add_(0, index, torch.ones_like(confidence, dtype=torch.float64))
        self.confidence_sum.index_add_(0, index, confidence.double())
        self.correct_sum.index_add_(0, index, (prediction == target).double())

    def gaps(self) -> tuple[torch.Tensor, torch.Tensor]:
        """|accuracy - confidence| per bin (0 for empty bins) and the bins' weights n_b / N."""
        total = self.count.sum().clamp_min(1)
        gap = (self.correct_sum - self.confidence_sum).abs() / self.count.clamp_min(1)
        return gap, self.count / total

    def compute(self) -> dict[str, torch.Tensor]:
        """The bin sums themselves, e.g. for a reliability diagram."""
        return {"count": self.count, "confidence_sum": self.confidence_sum,
                "correct_sum": self.correct_sum}  # fmt: skip


class ExpectedCalibrationError(TopLabelBins):
    """ECE: sum over bins of (n_b / N) |acc_b - conf_b|."""

    higher_is_better = False

    def compute(self) -> torch.Tensor:
        gap, weight = self.gaps()
        return (weight * gap).sum().float()


class MaxCalibrationError(TopLabelBins):
    """MCE: the largest |acc_b - conf_b| over non-empty bins."""

    higher_is_better = False

    def compute(self) -> torch.Tensor:
        gap, weight = self.gaps()
        return gap[weight > 0].max().float() if (weight > 0).any() else gap.sum().float()


class RMSCalibrationError(TopLabelBins):
    """RMS calibration error: sqrt(sum over bins of (n_b / N) (acc_b - conf_b)^2)."""

    higher_is_better = False

    def compute(self) -> torch.Tensor:
        gap, weight = self.gaps()
        return (weight * gap.square()).sum().sqrt().float()


class AdaptiveCalibrationError(TopLabelPairs):
    """Adaptive ECE: like ECE, over bins that each hold an equal share of the predictions.

    Keeps one confidence and one correct flag per prediction (8 bytes), since equal-mass bin
    edges are only known once every confidence has been seen: the pairs of the selective
    metrics (:class:`~softcal.uncertainty.selective_metrics.TopLabelPairs`), so in one
    MetricCollection they are all kept once.
    """

    higher_is_better = False

    def __init__(self, n_bins: int = 15, **kwargs) -> None:
        super().__init__(**kwargs)
        self.n_bins = n_bins

    def compute(self) -> torch.Tensor:
        confidence, correct = (values.double() for values in self.pairs())
        if confidence.numel() == 0:
            return torch.tensor(0.0)
        order = torch.argsort(confidence, stable=True)
        total = torch.zeros((), dtype=torch.float64, device=confidence.device)
        for part in torch.tensor_split(order, min(self.n_bins, len(order))):
            total += (correct[part].sum() - confidence[part].sum()).abs()
        return (total / len(order)).float()


class ClasswiseCalibrationError(Metric):
    """Classwise ECE: for every class k, the binned calibration error of p_k against 1[y = k],
    averaged over classes. Checks the whole probability vector, not only its maximum."""

    full_state_update = False
    higher_is_better = False

    def __init__(self, num_classes: int, n_bins: int = 15, **kwargs) -> None:
        super().__init__(**kwargs)
        self.num_classes, self.n_bins = num_classes, n_bins
        for name in ("count", "prob_sum", "hit_sum"):
            zeros = torch.zeros(num_classes * n_bins, dtype=torch.float64)
            self.add_state(name, zeros, dist_reduce_fx="sum")

    def update(self, probs: torch.Tensor, target: torch.Tensor) -> None:
        class_bin_sums(probs, target, self.n_bins, into=(self.count, self.prob_sum, self.hit_sum))

    def compute(self) -> torch.Tensor:
        n = self.count.view(self.num_classes, self.n_bins).sum(1).clamp_min(1)
        gap = (self.hit_sum - self.prob_sum).abs().view(self.num_classes, self.n_bins).sum(1)
        return (gap / n).mean().float()


class _MeanOverSamples(Metric):
    """A per-sample score averaged over all samples: a sum and a count, summed across processes."""

    full_state_update = False
    higher_is_better = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("total", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("n", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def score(self, probs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def update(self, probs: torch.Tensor, target: torch.Tensor) -> None:
        self.total += self.score(probs, target).double().sum()
        self.n += target.numel()

    def compute(self) -> torch.Tensor:
        return (self.total / self.n.clamp_min(1)).float()


class BrierScore(_MeanOverSamples):
    """Multiclass Brier score: sum_k (p_k - 1[y = k])^2, averaged over samples (0 is perfect)."""

    def score(self, probs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        one_hot = F.one_hot(target, probs.shape[1]).to(probs.dtype)
        return (probs - one_hot).square().sum(dim=1)


class NegativeLogLikelihood(_MeanOverSamples):
    """-log p_y averaged over samples: the cross-entropy of the probabilities (0 is perfect)."""

    def score(self, probs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return -probs.gather(1, target[:, None]).squeeze(1).clamp_min(_TINY).log()


def calibration_metrics(num_classes: int, prefix: str, n_bins: int = 15,
                        extra: dict[str, Metric] | None = None) -> MetricCollection:  # fmt: skip
    """Every metric of a stage, each updated with (softmax probabilities, integer labels);
    ``extra`` joins the same collection (the test stages' selective metrics), so Lightning logs
    them together and metrics with the same state share it."""
    metrics: dict[str, Metric] = {
        "acc": MulticlassAccuracy(num_classes, average="micro"),
        "ece": ExpectedCalibrationError(n_bins),
        "mce": MaxCalibrationError(n_bins),
        "rmsce": RMSCalibrationError(n_bins),
        "adaptive_ece": AdaptiveCalibrationError(n_bins),
        "classwise_ece": ClasswiseCalibrationError(num_classes, n_bins),
        "brier": BrierScore(),
        "nll": NegativeLogLikelihood(),
    }
    if num_classes > 5:
        metrics["acc_top5"] = MulticlassAccuracy(num_classes, top_k=5, average="micro")
    metrics.update(extra or {})
    # compute_groups lets ECE, MCE and RMS share one set of bin sums, and adaptive ECE and the
    # selective metrics one list of (confidence, correct) pairs.
    return MetricCollection(metrics, prefix=prefix, compute_groups=True)
