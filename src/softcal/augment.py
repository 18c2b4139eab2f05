"""Batch augmentation as tensor ops, on whatever device the batch is on.

Per-sample PIL transforms cost more than a small net's forward pass; one indexing op per batch
costs almost nothing, runs on the GPU when training there, and is seeded explicitly so that a
resumed run repeats the exact crops and flips of an uninterrupted one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def random_crop(
    images: torch.Tensor, padding: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Zero-pad by ``padding`` pixels and cut a random H x W window from each image."""
    if padding <= 0:
        return images
    n, _, h, w = images.shape
    padded = F.pad(images, (padding, padding, padding, padding))
    dy = torch.randint(0, 2 * padding + 1, (n,), generator=generator, device=images.device)
    dx = torch.randint(0, 2 * padding + 1, (n,), generator=generator, device=images.device)
    rows = (dy[:, None] + torch.arange(h, device=images.device))[:, :, None]  # (N, H, 1)
    cols = (dx[:, None] + torch.arange(w, device=images.device))[:, None, :]  # (N, 1, W)
    batch = torch.arange(n, device=images.device)[:, None, None]
    # Advanced indexing with the channel slice in the middle puts channels last: (N, H, W, C).
    return padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2)


def random_hflip(images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Mirror each image left-right with probability 1/2."""
    flip = torch.rand(images.shape[0], generator=generator, device=images.device) < 0.5
    return torch.where(flip[:, None, None, None], images.flip(3), images)


def augment_batch(
    images: torch.Tensor, crop_padding: int, hflip: bool, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Crop and/or flip a uint8 or float batch (N, C, H, W); labels are untouched by design."""
    images = random_crop(images, crop_padding, generator)
    if hflip:
        images = random_hflip(images, generator)
    return images


def normalize(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float, standardised per channel. mean/std are in [0, 1] units."""
    scale = (1.0 / (255.0 * std)).view(1, -1, 1, 1)
    shift = (mean / std).view(1, -1, 1, 1)
    return images.float() * scale - shift
