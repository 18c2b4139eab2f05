"""What prediction sets achieve on labelled test data: coverage and size.

Definitions, for N test examples with sets C_i and labels y_i:

* ``coverage`` = share of i with y_i in C_i (the guarantee is about its expectation);
* ``mean_set_size`` = mean |C_i|; ``singleton_rate`` = share with |C_i| = 1; ``empty_rate`` =
  share with |C_i| = 0 (kept as they are: an empty set never covers);
* ``coverage_by_set_size`` = {size: (count, coverage among the sets of that size)}, sizes that
  occur only, ascending (size-stratified coverage, Angelopoulos et al. 2021 sec. 4);
* ``per_class_coverage`` = {class: coverage among examples of that class}, classes present in
  the labels only; ``worst_class`` / ``worst_class_coverage`` = the class with the lowest
  (the lowest index among equals) - what class-conditional LAC guarantees and the marginal
  methods do not.

All values are plain Python ints and floats (JSON-safe; JSON turns the int keys into strings).
"""

from __future__ import annotations

import torch
from torch import Tensor

from softcal.errors import SoftcalError


def _checked(sets: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    sets, labels = torch.as_tensor(sets).detach().cpu(), torch.as_tensor(labels).detach().cpu()
    fits = sets.dtype == torch.bool and sets.dim() == 2 and sets.shape[1] > 0 and len(sets) > 0
    whole = not (labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool)
    fits = fits and whole and labels.dim() == 1 and len(labels) == len(sets)
    if fits:
        fits = int(labels.min()) >= 0 and int(labels.max()) < sets.shape[1]
    if not fits:
        raise SoftcalError(
            f"a coverage report needs a non-empty bool set matrix (N, K) and N labels in 0..K-1, got sets"
            f" {tuple(sets.shape)} {sets.dtype} and labels {tuple(labels.shape)} {labels.dtype}"
        )
    return sets, labels.to(torch.int64)


def coverage_report(sets: Tensor, labels: Tensor) -> dict:
    """Coverage and size of prediction sets (N, K) against labels (N,); see the module."""
    sets, labels = _checked(sets, labels)
    covered = sets.gather(1, labels[:, None])[:, 0].to(torch.float64)
    sizes = sets.sum(dim=1)
    by_size = {
        int(size): (int((sizes == size).sum()), float(covered[sizes == size].mean()))
        for size in torch.unique(sizes).tolist()
    }
    per_class = {int(c): float(covered[labels == c].mean()) for c in torch.unique(labels).tolist()}
    worst = min(per_class, key=lambda c: (per_class[c], c))
    return {
        "n": len(labels),
        "coverage": float(covered.mean()),
        "mean_set_size": float(sizes.to(torch.float64).mean()),
        "singleton_rate": float((sizes == 1).to(torch.float64).mean()),
        "empty_rate": float((sizes == 0).to(torch.float64).mean()),
        "coverage_by_set_size": by_size,
        "worst_class": worst,
        "worst_class_coverage": per_class[worst],
        "per_class_coverage": per_class,
    }
