"""Primitives the corruption families share: the reference's truncation to uint8, luma,
image-border rules, and the 1-D linear maps (scipy's Gaussian filter, the reference's clipped
zoom) as (out, in) matrices.

A matrix per axis filters a whole batch with two matrix products (rows, then columns) and
keeps each library's border rule (scipy's 'nearest' and 'reflect', OpenCV's reflect-101) in
one place, exact for any image size.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

#: ITU-R 601 luma weights, as OpenCV's RGB2GRAY (snow) and PIL's "L" conversion use them.
LUMA = (0.299, 0.587, 0.114)


def to_uint8(x: Tensor) -> Tensor:
    """[0, 1] floats to uint8 as the reference's ``np.uint8(np.clip(x, 0, 1) * 255)`` does.

    That is truncation, not rounding: CIFAR-10-C's pixel values are floors, and matching them
    needs the same rule (torch's float-to-uint8 cast truncates like numpy's).
    """
    return (x.clamp(0, 1) * 255).to(torch.uint8)


def to_grey(images: Tensor) -> Tensor:
    """(N, 3, H, W) RGB floats to (N, 1, H, W) luma; (N, 1, H, W) is returned as it is."""
    if images.shape[1] == 1:
        return images
    r, g, b = images.unbind(1)
    return (LUMA[0] * r + LUMA[1] * g + LUMA[2] * b).unsqueeze(1)


def border_index(index: Tensor, size: int, mode: str) -> Tensor:
    """Map sample indices outside 0..size-1 back inside, as an image library's border rule does.

    ``nearest``: the edge pixel repeats (scipy 'nearest', ImageMagick's edge virtual pixels).
    ``symmetric``: mirrored with the edge pixel repeated, ``b a | a b`` (scipy 'reflect').
    ``reflect101``: mirrored about the edge pixel, ``c b | a b c`` (OpenCV's default border,
    scipy 'mirror'). Both mirrors are periodic, so any distance from the image is handled.
    """
    if mode == "nearest" or size == 1:
        return index.clamp(0, size - 1)
    if mode == "symmetric":
        folded = index.remainder(2 * size)
        return torch.where(folded < size, folded, 2 * size - 1 - folded)
    if mode == "reflect101":
        folded = index.remainder(2 * size - 2)
        return torch.where(folded < size, folded, 2 * size - 2 - folded)
    raise ValueError(f"unknown border mode {mode!r}")


def gaussian_taps(sigma: float, truncate: float) -> Tensor:
    """scipy.ndimage's Gaussian weights: radius int(truncate * sigma + 0.5), normalised.

    A sigma of 0 gives the single tap [1.0]: scipy skips such an axis, which is the identity.
    """
    radius = int(truncate * sigma + 0.5)
    if sigma <= 0 or radius == 0:
        return torch.ones(1, dtype=torch.float64)
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    weights = torch.exp(-0.5 / (sigma * sigma) * x * x)
    return weights / weights.sum()


def correlation_matrix(size: int, taps: Tensor, mode: str) -> Tensor:
    """The (size, size) matrix of a 1-D correlation with centred ``taps`` and a border rule."""
    radius = (len(taps) - 1) // 2
    out = torch.arange(size).unsqueeze(1)
    source = border_index(out + torch.arange(-radius, radius + 1), size, mode)
    matrix = torch.zeros(size, size, dtype=torch.float64)
    # index_put_ with accumulate: near a border several taps fold onto the same pixel.
    matrix.index_put_((out.expand_as(source), source), taps.expand_as(source).clone(), accumulate=True)
    return matrix


def gaussian_blur(images: Tensor, sigma: float, mode: str, truncate: float = 4.0) -> Tensor:
    """scipy.ndimage.gaussian_filter over the two image axes of (..., H, W) floats."""
    taps = gaussian_taps(sigma, truncate)
    if len(taps) == 1:
        return images
    rows = correlation_matrix(images.shape[-2], taps, mode)
    return separable(images, rows, correlation_matrix(images.shape[-1], taps, mode))


def separable(images: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
    """Apply an (H', H) map to the rows and a (W', W) map to the columns of (..., H, W)."""
    rows, cols = rows.to(images.dtype), cols.to(images.dtype)
    return rows @ images @ cols.T


def clipped_zoom_matrix(size: int, factor: float) -> Tensor:
    """The reference's ``clipped_zoom`` along one axis, as a (size, size) matrix.

    It crops the central ceil(size / factor) pixels, enlarges them with
    ``scipy.ndimage.zoom(order=1)`` to round(crop * factor) pixels - whose sample grid puts the
    first and last output pixels on the first and last input pixels (corners aligned) - and
    keeps the central ``size`` of them.
    """
    crop = math.ceil(size / factor)
    top = (size - crop) // 2
    length = round(crop * factor)  # scipy's output length: Python's round, as scipy uses
    trim = (length - size) // 2
    step = (crop - 1) / (length - 1) if length > 1 else 0.0
    coord = torch.arange(trim, trim + size, dtype=torch.float64) * step
    low = coord.floor().clamp(0, crop - 1)
    frac = coord - low
    high = (low + 1).clamp(max=crop - 1)
    matrix = torch.zeros(size, size, dtype=torch.float64)
    rows = torch.arange(size)
    matrix.index_put_((rows, top + low.long()), 1 - frac, accumulate=True)
    matrix.index_put_((rows, top + high.long()), frac, accumulate=True)
    return matrix
