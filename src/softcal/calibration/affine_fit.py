"""Fitting the affine logit transforms of vector and matrix scaling, and ODIR's lambdas.

Both minimise the mean NLL of softmax(A(z)) with A(z) = w * z + b (vector) or W z + b (matrix),
by L-BFGS in float64: the loss is convex in (W, b), so a full-batch quasi-Newton method reaches
its minimum in a few hundred steps where SGD would need a learning-rate schedule. Matrix scaling
adds the ODIR penalty of Kull et al. 2019 (Dirichlet calibration, eq. 9):

    lambda_od / (K (K - 1)) * sum over i != j of W_ij^2  +  lambda_b / K * sum over k of b_k^2

which pulls W towards a diagonal matrix (temperature/vector scaling) without penalising the
diagonal, so a model's overall confidence is still free to change.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F

#: The candidate lambdas for ODIR, strongest first: on a tie cross-validation keeps the
#: stronger regularisation (the simpler model).
LAMBDA_GRID: tuple[float, ...] = (1e3, 1e2, 1e1, 1e0, 1e-1, 1e-2, 1e-3, 1e-4)
#: The lambdas used when there are too few rows to cross-validate (fewer than 2 per fold).
DEFAULT_LAMBDA = 1e-2
FOLDS = 5


@contextlib.contextmanager
def single_threaded() -> Iterator[None]:
    """Run torch on one CPU thread inside the block, restoring the setting after.

    A fit evaluates a loss on an (N, K) matrix hundreds of times: each evaluation is too small
    to gain from threads, and on a busy machine every parallel region waits for a descheduled
    worker. Measured on a shared 2-core machine (load 9): one matrix-scaling fit on 5000 x 10
    logits took 10.6 s with 2 threads and 0.17 s with 1.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def affine_logits(logits: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """w * z + b for a weight vector, W z + b for a weight matrix (rows of ``logits`` are z)."""
    return (logits * weight if weight.ndim == 1 else logits @ weight.T) + bias


def odir_penalty(weight: torch.Tensor, bias: torch.Tensor, lambda_od: float, lambda_b: float) -> torch.Tensor:
    """ODIR: lambda_od * mean squared off-diagonal entry of W + lambda_b * mean squared intercept."""
    k = bias.numel()
    penalty = lambda_b * bias.pow(2).mean()
    if weight.ndim == 2 and k > 1:
        off_diagonal = weight - torch.diag(torch.diagonal(weight))
        penalty = penalty + lambda_od * off_diagonal.pow(2).sum() / (k * (k - 1))
    return penalty


def fit_affine(
    logits: torch.Tensor,
    labels: torch.Tensor,
    start_weight: torch.Tensor,
    lambda_od: float = 0.0,
    lambda_b: float = 0.0,
    start_bias: torch.Tensor | None = None,
    rough: bool = False,
) -> tuple[torch.Tensor, torch.Tensor] | tuple[None, None]:
    """The (weight, bias) minimising NLL (+ ODIR) from ``start_weight`` and ``start_bias``
    (default 0); (None, None) when the optimiser ends on a non-finite value. ``rough`` stops
    at a gradient of 1e-6 (not 1e-9) and after 100 (not 500) iterations: enough to rank
    lambdas by held-out NLL in cross-validation, at a fraction of the cost.

    Without a penalty the minimum may not exist (a class absent from ``labels`` has its
    intercept pushed to minus infinity; separable data has W grow without bound): the fit then
    stops after its iteration limit with large but finite values.
    """
    weight = start_weight.detach().double().clone().requires_grad_(True)
    bias = torch.zeros(logits.shape[1], dtype=torch.float64) if start_bias is None else start_bias.clone()
    bias.requires_grad_(True)
    optimizer = torch.optim.LBFGS(
        [weight, bias], lr=1.0, max_iter=100 if rough else 500, history_size=20,
        line_search_fn="strong_wolfe", tolerance_grad=1e-6 if rough else 1e-9,
        tolerance_change=1e-9 if rough else 1e-12,
    )  # fmt: skip
    regularised = lambda_od > 0 or lambda_b > 0

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(affine_logits(logits, weight, bias), labels)
        if regularised:
            loss = loss + odir_penalty(weight, bias, lambda_od, lambda_b)
        loss.backward()
        return loss

    optimizer.step(closure)
    weight, bias = weight.detach(), bias.detach()
    if not (torch.isfinite(weight).all() and torch.isfinite(bias).all()):
        return None, None
    return weight, bias


def held_out_nll(
    logits: torch.Tensor, labels: torch.Tensor, start: torch.Tensor, lambdas: list[tuple[float, float]]
) -> list[float]:
    """For each (lambda_od, lambda_b), the NLL summed over FOLDS folds of a fit on the other
    folds (a fixed seeded split). Within a fold each fit starts from the previous pair's
    solution: neighbouring lambdas have nearby minima, so warm starts need few iterations."""
    generator = torch.Generator().manual_seed(0)
    fold = torch.empty(len(labels), dtype=torch.long)
    fold[torch.randperm(len(labels), generator=generator)] = torch.arange(len(labels)) % FOLDS
    totals = [0.0] * len(lambdas)
    for k in range(FOLDS):
        train, test = fold != k, fold == k
        weight, bias = start, None
        for i, (lambda_od, lambda_b) in enumerate(lambdas):
            weight, bias = fit_affine(
                logits[train], labels[train], weight, lambda_od, lambda_b, bias, rough=True
            )
            if weight is None:  # a diverged fit scores infinity; the next starts afresh
                totals[i], weight, bias = math.inf, start, None
                continue
            scores = affine_logits(logits[test], weight, bias)
            totals[i] += float(F.cross_entropy(scores, labels[test], reduction="sum"))
    return totals


def cross_validate_odir(
    logits: torch.Tensor, labels: torch.Tensor, start: torch.Tensor
) -> tuple[float, float]:
    """(lambda_od, lambda_b) with the least cross-validated NLL, by coordinate search over
    LAMBDA_GRID: first both lambdas tied, then lambda_b alone with lambda_od fixed. That is
    2 * len(grid) - 1 candidates rather than len(grid)^2, each costing FOLDS fits."""
    if len(labels) < 2 * FOLDS:
        return DEFAULT_LAMBDA, DEFAULT_LAMBDA
    tied = held_out_nll(logits, labels, start, [(lam, lam) for lam in LAMBDA_GRID])
    lambda_od = LAMBDA_GRID[tied.index(min(tied))]
    scores = held_out_nll(logits, labels, start, [(lambda_od, lam) for lam in LAMBDA_GRID])
    return lambda_od, LAMBDA_GRID[scores.index(min(scores))]
