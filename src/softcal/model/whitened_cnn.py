"""A fast CIFAR net: frozen patch whitening, then three conv-pool-BatchNorm-GELU groups.

The ideas come from the CIFAR-10 speed-run literature (K. Jordan, "94% on CIFAR-10 in 3.29
Seconds on a Single GPU", arXiv 2404.00498); the code is our own. What makes it learn fast:

* The first layer is fixed, not learned: 2x2 filters that whiten the training images' 2x2
  patches (the eigenvectors of their covariance, scaled by 1/sqrt(eigenvalue), each with its
  negative so no information is lost through the GELU). Computed once from the data before
  training (:meth:`WhitenedCNN.fit_whitening`), it saves the net from learning decorrelation.
* No residual connections: each group is conv -> max-pool -> BatchNorm -> GELU -> conv ->
  BatchNorm -> GELU, so most compute runs on already pooled maps.
* Convolutions start as identities on the channels they share with their input (Dirac init):
  at the first step the net passes its whitened input through instead of noise.
* BatchNorm learns only its shift (scales stay 1) and the logits are scaled down by a constant:
  both keep a high learning rate stable.

No Lightning in here: it is a plain ``nn.Module`` like every net in ``softcal.model``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class PatchWhitening(nn.Conv2d):
    """A ``patch x patch`` convolution whose filters whiten the data's patches (frozen).

    Until :meth:`fit` runs the filters are random; ``fitted`` (a buffer, so checkpoints carry
    it) says whether they came from data.
    """

    def __init__(self, in_channels: int, patch: int = 2, eps: float = 5e-4) -> None:
        dims = in_channels * patch * patch
        super().__init__(in_channels, 2 * dims, kernel_size=patch, padding=0, bias=True)
        self.eps = eps
        self.weight.requires_grad_(False)  # fixed by fit(); only the bias learns
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))

    @torch.no_grad()
    def fit(self, images: torch.Tensor) -> None:
        """Set the filters from normalised float images (N, C, H, W)."""
        c, p = self.in_channels, self.kernel_size[0]
        patches = images.double().unfold(2, p, 1).unfold(3, p, 1)  # N, C, H', W', p, p
        patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(-1, c * p * p)
        covariance = patches.T @ patches / len(patches)
        eigenvalues, eigenvectors = torch.linalg.eigh(covariance)
        filters = eigenvectors.T / torch.sqrt(eigenvalues.clamp(min=0) + self.eps)[:, None]
        filters = filters.reshape(-1, c, p, p).to(self.weight.dtype)
        self.weight.copy_(torch.cat([filters, -filters]))
        self.bias.zero_()
        self.fitted.fill_(True)


def conv3x3(c_in: int, c_out: int) -> nn.Conv2d:
    """A 3x3 convolution that starts as the identity on its first ``min(c_in, c_out)`` channels."""
    conv = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
    with torch.no_grad():
        n = min(c_in, c_out)
        nn.init.dirac_(conv.weight[:n, :n])
    return conv


def batch_norm(channels: int, momentum: float) -> nn.BatchNorm2d:
    norm = nn.BatchNorm2d(channels, momentum=momentum)
    norm.weight.requires_grad_(False)  # scale fixed at 1: only the shift is learned
    return norm


class ConvGroup(nn.Sequential):
    """conv -> 2x2 max-pool -> BN -> GELU -> conv -> BN -> GELU: halves the map's side."""

    def __init__(self, c_in: int, c_out: int, bn_momentum: float) -> None:
        super().__init__(
            conv3x3(c_in, c_out), nn.MaxPool2d(2), batch_norm(c_out, bn_momentum), nn.GELU(),
            conv3x3(c_out, c_out), batch_norm(c_out, bn_momentum), nn.GELU(),
        )  # fmt: skip


class WhitenedCNN(nn.Module):
    """Patch whitening + three :class:`ConvGroup` s + global max-pool + linear head.

    ``widths=(64, 256, 256)`` is the speed-run size; ``(32, 64, 64)`` and ``(64, 128, 128)``
    trade accuracy for CPU time (see docs/benchmarks.md for measured numbers).
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        image_size: int = 32,
        widths: Sequence[int] = (64, 256, 256),
        logit_scale: float = 1 / 9,
        bn_momentum: float = 0.4,
        flip_average: bool = True,
        translate_average: bool = False,
    ) -> None:
        """
        Args:
            in_channels, num_classes, image_size: filled in from the datamodule.
            widths: output channels of the three groups.
            logit_scale: the head's output is multiplied by this (keeps early logits small
                under a high learning rate).
            bn_momentum: BatchNorm running-statistics momentum (PyTorch's convention).
            flip_average: in eval mode, return the mean of the logits of each image and its
                mirror image (test-time augmentation). Inside the net, so evaluation, predict
                and export all return the same probabilities; training is unaffected.
            translate_average: in eval mode, also average each view shifted by one pixel up-left
                and down-right (edges mirrored, as the training crops pad): 6 views with the
                flip, 3 without. About +0.3 points on CIFAR-10 after 16 epochs, for 3x the
                evaluation compute (docs/cifar10.md has the measurements).
        """
        super().__init__()
        if image_size < 16:
            raise ValueError(f"WhitenedCNN pools three times: a {image_size}px image is too small")
        self.whiten = PatchWhitening(in_channels)
        c_in, groups = self.whiten.out_channels, []
        for width in widths:
            groups.append(ConvGroup(c_in, width, bn_momentum))
            c_in = width
        self.features = nn.Sequential(nn.GELU(), *groups)
        self.head = nn.Linear(c_in, num_classes, bias=False)
        self.logit_scale = logit_scale
        self.flip_average = flip_average
        self.translate_average = translate_average

    @property
    def whitening_fitted(self) -> bool:
        return bool(self.whiten.fitted)

    def fit_whitening(self, images: torch.Tensor) -> None:
        """Compute the first layer from normalised training images (a few thousand suffice)."""
        self.whiten.fit(images)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(self.whiten(x))
        # Global max-pool. Not torch.amax(x, dim=(2, 3)): compiled under bf16 autocast (torch
        # 2.14, CPU and CUDA) its backward inside this graph returns NaN gradients.
        x = x.flatten(2).max(dim=2).values
        return self.head(x) * self.logit_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        views = self.test_views(x)
        if len(views) == 1:
            return self.logits(x)
        # One pass over all views: k times the batch, fewer calls. Split by shape, not by
        # len(x): an exported model (ONNX, dynamic batch) must not bake the batch size in.
        both = self.logits(torch.cat(views))
        return both.unflatten(0, (len(views), -1)).mean(dim=0)

    def test_views(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The views whose logits are averaged: the image alone while training."""
        if self.training:
            return [x]
        views = [x, *one_pixel_shifts(x)] if self.translate_average else [x]
        if self.flip_average:
            views += [view.flip(3) for view in views]
        return views


def one_pixel_shifts(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``x`` moved one pixel up-left and one pixel down-right, mirroring the edge it uncovers
    (the training crops pad by reflection too, so the net has seen such edges)."""
    padded = nn.functional.pad(x, (1, 1, 1, 1), mode="reflect")
    return padded[:, :, 2:, 2:], padded[:, :, :-2, :-2]
