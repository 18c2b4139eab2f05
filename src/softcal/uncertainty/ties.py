"""Groups of tied scores: the one sort-and-group step every ranking metric here starts from.

Selective prediction (risk per coverage), average precision, FPR at a TPR and AUROC all sort
scores and must treat equal scores as one step - no order among tied values is preferred. Each
needs, per group of equal scores, how many items it and the groups before it hold, and a
running sum of some per-item value (errors, positives) at the group's end. :func:`tie_groups`
computes that once, with a stable sort so the groups' contents keep their input order.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class TieGroups:
    """Scores sorted (stable) and grouped by equal value, in sorted order.

    ``order`` sorts the scores; ``sizes`` is each group's size; ``ends`` the number of items in
    each group and all groups before it (int64 cumulative sizes).
    """

    order: Tensor
    sizes: Tensor
    ends: Tensor

    def totals(self, values: Tensor) -> Tensor:
        """Sum of ``values`` (one per item, in input order) over each group and all before it."""
        return torch.cumsum(values[self.order], 0)[self.ends - 1]


def tie_groups(scores: Tensor, descending: bool = True) -> TieGroups:
    """Group the 1-D ``scores`` by equal value, highest first (``descending``) or lowest first."""
    ordered, order = torch.sort(scores, descending=descending, stable=True)
    _, sizes = torch.unique_consecutive(ordered, return_counts=True)
    return TieGroups(order, sizes, torch.cumsum(sizes, 0))
