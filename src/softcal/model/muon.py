"""Nesterov SGD whose convolution filters step by their orthogonalized momentum (Muon).

Muon (K. Jordan et al., 2024; used by the CIFAR-10 speed runs since airbench94_muon) replaces
a weight matrix's update by the nearest semi-orthogonal matrix: every direction of the update
moves by about the same amount, instead of a few large singular directions dominating. A conv
filter bank ``(out, in, k, k)`` is treated as the matrix ``(out, in * k * k)``. The
orthogonalization is a few Newton-Schulz iterations, matrix products only, so it runs in bf16
on a CPU or a GPU.

``torch.optim.Muon`` takes only 2-d parameters and leaves the rest to a second optimizer,
which a LightningModule would then have to step by hand; this one optimizer holds both kinds
in its parameter groups, so Lightning's automatic optimization and a per-step schedule
(``LambdaLR`` over every group) work unchanged. Groups with ``orthogonal=True`` take the Muon
step; every other group takes torch's Nesterov SGD step (``weight_decay`` added to the gradient,
the momentum buffer starting at the first gradient).

Orthogonal groups also keep each filter bank at a fixed norm (``sqrt(out)``) before the step.
That is what makes the step size meaningful: the update has a fixed size, so the weights'
own size sets the relative change. It assumes what follows the convolution is scale-invariant
(BatchNorm, as in softcal.model.whitened_cnn), and it replaces weight decay there.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

#: Coefficients of the quintic Newton-Schulz step (a, b, c in a*X + b*(XX^T)X + c*(XX^T)^2 X),
#: chosen to push small singular values towards 1 as fast as possible (Muon's published values).
NEWTON_SCHULZ_COEFFICIENTS = (3.4445, -4.7750, 2.0315)


def orthogonalize(update: torch.Tensor, steps: int = 3, eps: float = 1e-7) -> torch.Tensor:
    """An approximately semi-orthogonal matrix with ``update`` 's singular vectors.

    ``update`` is 2-d. Its singular values end up roughly in [0.5, 1.5] rather than exactly 1
    (enough for the optimizer, which only needs every direction to move alike). Runs in bf16:
    the iteration is self-correcting, so the rounding does not accumulate.
    """
    a, b, c = NEWTON_SCHULZ_COEFFICIENTS
    x = update.to(torch.bfloat16)
    x = x / (x.norm() + eps)  # every singular value <= 1: inside the iteration's basin
    tall = x.size(0) > x.size(1)
    if tall:
        x = x.T  # the Gram matrix x @ x.T is then the smaller of the two
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return (x.T if tall else x).to(update.dtype)


class MuonSGD(torch.optim.Optimizer):
    """Muon for the parameter groups marked ``orthogonal=True``, Nesterov SGD for the others.

    Args:
        params: parameter groups; each may set ``lr``, ``momentum``, ``weight_decay`` and
            ``orthogonal``. Orthogonal groups must hold parameters of 2 or more dimensions.
        lr, momentum, weight_decay: defaults for groups that do not set them.
        newton_schulz_steps: iterations of :func:`orthogonalize` per step.
    """

    def __init__(self, params: Iterable[Any], lr: float, momentum: float = 0.9,
                 weight_decay: float = 0.0, newton_schulz_steps: int = 3) -> None:  # fmt: skip
        defaults = {"lr": lr, "momentum": momentum, "weight_decay": weight_decay,
                    "orthogonal": False}  # fmt: skip
        super().__init__(params, defaults)
        self.newton_schulz_steps = newton_schulz_steps
        for group in self.param_groups:
            if group["orthogonal"] and any(p.ndim < 2 for p in group["params"]):
                raise ValueError("an orthogonal (Muon) parameter group holds a 0- or 1-d parameter")

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, momentum = group["lr"], group["momentum"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                if group["weight_decay"] and not group["orthogonal"]:
                    grad = grad.add(p, alpha=group["weight_decay"])
                state = self.state[p]
                if "momentum_buffer" not in state:
                    buffer = state["momentum_buffer"] = grad.clone()
                else:
                    buffer = state["momentum_buffer"].mul_(momentum).add_(grad)
                direction = grad.add(buffer, alpha=momentum)  # Nesterov
                if group["orthogonal"]:
                    p.mul_(len(p) ** 0.5 / (p.norm() + 1e-12))
                    matrix = direction.reshape(len(p), -1)
                    direction = orthogonalize(matrix, self.newton_schulz_steps).view_as(p)
                p.add_(direction, alpha=-lr)
        return loss
