"""The Muon optimizer option: the orthogonalization, the two kinds of step, and a run with it."""

from __future__ import annotations

import pytest
import torch

from softcal.apps.train import main as train
from softcal.model.module import Classifier
from softcal.model.muon import MuonSGD, orthogonalize
from softcal.model.whitened_cnn import WhitenedCNN
from tests.conftest import TINY


@pytest.mark.parametrize("shape", [(32, 200), (200, 32)])
def test_orthogonalize_keeps_the_singular_vectors_and_evens_out_the_singular_values(shape):
    torch.manual_seed(0)
    # Singular values spread over three orders of magnitude.
    u, _, v = torch.linalg.svd(torch.randn(shape), full_matrices=False)
    spread = torch.logspace(0, -3, min(shape))
    matrix = u @ torch.diag(spread) @ v
    result = orthogonalize(matrix, steps=5).float()
    assert result.shape == matrix.shape and result.dtype == matrix.dtype
    # In the original's singular basis the result is diagonal: same directions ...
    projected = u.T @ result @ v.T
    diagonal = torch.diagonal(projected)
    off_diagonal = projected - torch.diag(diagonal)
    assert off_diagonal.norm() < 0.05 * diagonal.norm()
    # ... and the largest singular values, a thousand times apart before, now all near 1
    # (the quintic iteration oscillates around 1; the smallest need more steps to arrive).
    top = diagonal[: min(shape) // 2]
    assert top.min() > 0.5 and top.max() < 1.5
    assert (spread[: min(shape) // 2].max() / spread[: min(shape) // 2].min()) > 20


def test_plain_groups_step_exactly_as_torch_nesterov_sgd():
    torch.manual_seed(0)
    ours = [torch.nn.Parameter(torch.randn(6, 4)), torch.nn.Parameter(torch.randn(6))]
    theirs = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    groups = lambda ps: [{"params": [ps[0]], "weight_decay": 0.01},  # noqa: E731
                         {"params": [ps[1]], "lr": 0.3}]  # fmt: skip
    muon = MuonSGD(groups(ours), lr=0.1, momentum=0.85)
    sgd = torch.optim.SGD(groups(theirs), lr=0.1, momentum=0.85, nesterov=True)
    for _ in range(5):
        grads = [torch.randn_like(p) for p in ours]
        for params in (ours, theirs):
            for p, g in zip(params, grads, strict=True):
                p.grad = g.clone()
        muon.step()
        sgd.step()
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


def test_an_orthogonal_group_normalizes_the_filters_then_steps_by_the_orthogonalized_momentum():
    torch.manual_seed(0)
    start = torch.randn(8, 3, 3, 3) * 5
    filters = torch.nn.Parameter(start.clone())
    optimizer = MuonSGD([{"params": [filters], "orthogonal": True, "momentum": 0.6,
                          "weight_decay": 0.1}], lr=0.2)  # fmt: skip
    grad = torch.randn_like(start)
    filters.grad = grad.clone()
    optimizer.step()
    # First step: the buffer is the gradient, so the Nesterov direction is (1 + momentum) g;
    # weight decay does not apply (the normalization takes its place).
    normalized = start * (8**0.5 / start.norm())
    update = orthogonalize((1.6 * grad).reshape(8, -1), steps=3).view_as(start)
    torch.testing.assert_close(filters.detach(), normalized - 0.2 * update)
    # The weights' scale does not matter: BatchNorm after the convolution would undo it.
    scaled = torch.nn.Parameter(start.clone() * 0.01)
    again = MuonSGD([{"params": [scaled], "orthogonal": True, "momentum": 0.6}], lr=0.2)
    scaled.grad = grad.clone()
    again.step()
    torch.testing.assert_close(scaled.detach(), filters.detach())


def test_an_orthogonal_group_refuses_vectors():
    with pytest.raises(ValueError, match="orthogonal"):
        MuonSGD([{"params": [torch.nn.Parameter(torch.zeros(4))], "orthogonal": True}], lr=0.1)


def test_the_classifier_gives_muon_only_the_trainable_convolution_filters():
    model = Classifier(net=lambda c, k, s: WhitenedCNN(c, k, s, widths=(8, 16, 16)),
                       in_channels=3, image_size=32, optimizer="muon", lr=0.5, muon_lr=0.07,
                       muon_momentum=0.5, weight_decay=0.01, lr_schedule="constant")  # fmt: skip
    optimizer = model.configure_optimizers()
    assert isinstance(optimizer, MuonSGD)
    weights, others, filters = optimizer.param_groups
    assert filters["orthogonal"] and not weights["orthogonal"] and not others["orthogonal"]
    assert (filters["lr"], filters["momentum"], filters["weight_decay"]) == (0.07, 0.5, 0.0)
    assert weights["lr"] == 0.5 and weights["weight_decay"] == 0.01
    in_filters = {id(p) for p in filters["params"]}
    for name, p in model.net.named_parameters():
        expected = p.requires_grad and p.ndim == 4  # not the frozen whitening filters
        assert (id(p) in in_filters) == expected, name
    assert [p.ndim for p in weights["params"]] == [2]  # the linear head stays with SGD


@pytest.mark.slow
def test_a_run_trains_with_muon_and_checkpoints_its_groups(mnist_root, tmp_path):
    results = train(["--config", "configs/mnist.yaml", *TINY, "--trainer.limit_train_batches", "8",
                     "--data.init_args.root", str(mnist_root),
                     "--trainer.logger.init_args.save_dir", str(tmp_path),
                     "--model.optimizer", "muon", "--model.muon_lr", "0.05",
                     "--model.lr_schedule", "linear"])  # fmt: skip
    assert results["metrics"]["test/acc"] > 0.5  # ten classes: chance is 0.1
    saved = torch.load(results["checkpoint"], map_location="cpu", weights_only=True)
    groups = saved["optimizer_states"][0]["param_groups"]
    assert [g["orthogonal"] for g in groups] == [False, False, True]
    # The default muon_momentum (one-cycle, MNIST's schedule, would cycle every group's).
    assert groups[2]["momentum"] == 0.6
