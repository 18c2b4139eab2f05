"""Batch augmentation as tensor ops, on whatever device the batch is on.

Per-sample PIL transforms cost more than a small net's forward pass; one indexing op per batch
costs almost nothing, runs on the GPU when training there, and is seeded explicitly so that a
resumed run repeats the exact crops and flips of an uninterrupted one.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

#: how the random crop fills the border it translates in: zeros, or the image mirrored at its
#: edge (``F.pad``'s "reflect": index -1 reads 1, index H reads H - 2)
PadMode = Literal["zeros", "reflect"]


def crop_and_flip(
    images: torch.Tensor,
    padding: int,
    hflip: bool,
    generator: torch.Generator | None = None,
    pad_mode: PadMode = "zeros",
) -> torch.Tensor:
    """Random crop (pad by ``padding``, cut an H x W window) and/or random horizontal flip,
    both in one gather.

    Output pixel (y, x) of image i comes from the padded image at (dy_i + y, dx_i + x), or at
    (dy_i + y, dx_i + W - 1 - x) when image i is flipped, so the batch is copied once rather
    than once per transform - 5x faster on CPU than cropping by advanced indexing and then
    flipping with ``torch.where``. Random numbers are drawn in the order dy, dx, flip: the
    results equal cropping first and flipping second. ``pad_mode="reflect"`` pads nothing: it
    mirrors the out-of-image row and column indices back inside, the same gather reads them.
    """
    n, c, h, w = images.shape
    device = images.device
    reflect = _is_reflect(pad_mode, padding, h, w)
    if padding > 0:
        if not reflect:
            images = F.pad(images, (padding, padding, padding, padding))
        dy = torch.randint(0, 2 * padding + 1, (n, 1), generator=generator, device=device)
        dx = torch.randint(0, 2 * padding + 1, (n, 1), generator=generator, device=device)
    rows = torch.arange(h, device=device).expand(n, h)
    cols = torch.arange(w, device=device)
    if hflip:
        flip = torch.rand(n, generator=generator, device=device) < 0.5
        cols = torch.where(flip[:, None], cols.flip(0), cols)  # (N, W): each row reads mirrored
    cols = cols.expand(n, w)
    if padding > 0:
        rows, cols = rows + dy, cols + dx
    if reflect:  # padded coordinates -> the unpadded image's, mirrored at its edges
        rows, cols = _mirror(rows - padding, h), _mirror(cols - padding, w)
    # Flat index into each (padded) plane, shared by all channels (expand makes no copy).
    plane = images.shape[-2] * images.shape[-1]
    index = rows[:, :, None] * images.shape[-1] + cols[:, None, :]
    out = images.reshape(n, c, plane).gather(2, index.view(n, 1, h * w).expand(n, c, h * w))
    return out.view(n, c, h, w)


def _is_reflect(pad_mode: str, padding: int, h: int, w: int) -> bool:
    """Whether the crop reflects; rejects unknown modes and reflections deeper than the image
    (as ``F.pad`` does: a border of H or more rows has no mirror image inside)."""
    if pad_mode not in ("zeros", "reflect"):
        raise ValueError(f"pad_mode must be 'zeros' or 'reflect', not {pad_mode!r}")
    if pad_mode == "reflect" and padding >= min(h, w):
        raise ValueError(f"reflect padding {padding} needs images larger than it, got {h}x{w}")
    return pad_mode == "reflect" and padding > 0


def _mirror(index: torch.Tensor, size: int) -> torch.Tensor:
    """Indices in [-(size - 1), 2 * (size - 1)] reflected into [0, size - 1] without repeating
    the edge: -1 -> 1 and size -> size - 2."""
    last = size - 1
    return last - (last - index.abs()).abs()


def random_crop(
    images: torch.Tensor,
    padding: int,
    generator: torch.Generator | None = None,
    pad_mode: PadMode = "zeros",
) -> torch.Tensor:
    """Pad by ``padding`` pixels (zeros or mirrored) and cut a random H x W window from each image."""
    if padding <= 0:
        return images
    return crop_and_flip(images, padding, False, generator, pad_mode)


def random_hflip(images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Mirror each image left-right with probability 1/2."""
    return crop_and_flip(images, 0, True, generator)


def augment_batch(
    images: torch.Tensor,
    crop_padding: int,
    hflip: bool,
    generator: torch.Generator | None = None,
    pad_mode: PadMode = "zeros",
) -> torch.Tensor:
    """Crop and/or flip a uint8 or float batch (N, C, H, W); labels are untouched by design."""
    if crop_padding <= 0 and not hflip:
        return images
    return crop_and_flip(images, max(crop_padding, 0), hflip, generator, pad_mode)


def normalize(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float, standardised per channel. mean/std are in [0, 1] units."""
    scale = (1.0 / (255.0 * std)).view(1, -1, 1, 1)
    shift = (mean / std).view(1, -1, 1, 1)
    if images.dtype == torch.uint8:
        # The conversion makes a new tensor, so scaling it in place is safe - and 3x faster on
        # CPU than two more out-of-place ops, each allocating and filling another float batch.
        return images.to(torch.float32).mul_(scale).sub_(shift)
    return images.float() * scale - shift
