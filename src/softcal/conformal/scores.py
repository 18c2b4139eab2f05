"""Conformity scores: how badly a candidate label fits an example (higher = worse).

Every function takes class probabilities p (N, K) in float64 and returns the score of every
candidate label k, shape (N, K); the calibration score of an example is the entry of its true
label (:func:`label_scores`). Notation, for one example:

* **rank** r(k): the 1-based position of class k when the classes are sorted by probability,
  largest first. **Ties** (equal probabilities) are ordered by class index, lower first: a
  stable descending sort. Any fixed rule keeps the guarantee (the score stays a function of
  the example alone); this one makes the sets reproducible. For tied classes it means a set
  can hold class 2 and not class 5 although p_2 = p_5.
* **mass through** M(k) = the sum of the probabilities of the classes ranked 1..r(k), class k
  included; **mass above** A(k) = M(k) - p_k, the classes ranked before k (computed as the
  cumulative sum one rank earlier, so A of rank r equals M of rank r - 1 exactly).

Scores:

* LAC / THR (Sadinle, Lei & Wasserman 2019): s = 1 - p_k.
* APS (Romano, Sesia & Candes 2020), non-randomised: s = M(k).
* APS randomised: s = M(k) - u * p_k, u ~ Uniform(0, 1), one u per example shared by all its
  candidate labels (MAPIE's form; the paper's A(k) + u' p_k is the same with u' = 1 - u).
* RAPS (Angelopoulos, Bates, Malik & Jordan, ICLR 2021): the randomised APS score plus
  lam * max(0, r(k) - k_reg).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

#: Independent random streams derived from one seed: the validation uniforms, the RAPS
#: tuning/calibration split, the test uniforms.
CALIBRATION_STREAM, SPLIT_STREAM, PREDICTION_STREAM = 0, 1, 2


def ranked_mass(probs: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(rank, mass through, mass above) of every class, each (N, K), in class order."""
    sorted_probs, order = torch.sort(probs, dim=1, descending=True, stable=True)
    through_sorted = torch.cumsum(sorted_probs, dim=1)
    above_sorted = torch.cat([torch.zeros_like(through_sorted[:, :1]), through_sorted[:, :-1]], dim=1)
    positions = torch.arange(1, probs.shape[1] + 1).expand_as(order)
    rank = torch.empty_like(order).scatter_(1, order, positions)
    through = torch.empty_like(probs).scatter_(1, order, through_sorted)
    above = torch.empty_like(probs).scatter_(1, order, above_sorted)
    return rank, through, above


def lac_scores(probs: Tensor) -> Tensor:
    """1 - p_k."""
    return 1.0 - probs


def aps_scores(probs: Tensor, u: Tensor | None = None) -> Tensor:
    """M(k), or M(k) - u p_k with one uniform u per row when ``u`` (N,) is given."""
    _, through, _ = ranked_mass(probs)
    return through if u is None else through - u[:, None] * probs


def raps_scores(probs: Tensor, u: Tensor, k_reg: int, lam: float) -> Tensor:
    """M(k) - u p_k + lam * max(0, r(k) - k_reg)."""
    rank, through, _ = ranked_mass(probs)
    return through - u[:, None] * probs + lam * (rank - k_reg).clamp(min=0).to(torch.float64)


def candidate_scores(
    method: str, probs: Tensor, *, u: Tensor | None = None, k_reg: int | None = None, lam: float | None = None
) -> Tensor:
    """The conformity score of every candidate label under ``method`` (see METHODS)."""
    if method in ("lac", "classwise_lac"):
        return lac_scores(probs)
    if method == "aps":
        return aps_scores(probs)
    if u is None:
        raise ValueError(f"{method} needs one uniform per example")
    if method == "aps_randomized":
        return aps_scores(probs, u)
    if method == "raps":
        assert k_reg is not None and lam is not None
        return raps_scores(probs, u, k_reg, lam)
    raise ValueError(f"no conformity score for {method!r}")


def label_scores(scores: Tensor, labels: Tensor) -> Tensor:
    """The score of each example's own label: ``scores[i, labels[i]]``, shape (N,)."""
    return scores.gather(1, labels[:, None])[:, 0]


def stream_generator(seed: int, stream: int) -> torch.Generator:
    """A torch generator for one purpose (``stream``) of one seed: the streams of a seed do not
    overlap, so test uniforms never repeat the validation ones."""
    words = np.random.SeedSequence([seed, stream]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed((int(words[0]) << 32) | int(words[1]))


def uniforms(n: int, generator: torch.Generator) -> Tensor:
    """n draws of Uniform[0, 1) in float64."""
    return torch.rand(n, generator=generator, dtype=torch.float64)
