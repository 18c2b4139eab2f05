"""Defocus and zoom blur, the two deterministic blurs of CIFAR-10-C (make_cifar_c.py).

Glass blur (random pixel shuffles) is in ``glass``, motion blur (a random angle) in ``motion``.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from softcal.shift.filters import border_index, clipped_zoom_matrix, to_uint8

#: defocus_blur: (disk radius, sigma of the 3x3 Gaussian that anti-aliases the disk).
DEFOCUS = ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1))
#: zoom_blur: the reference's ``np.arange(1, end, 0.01)`` for end 1.06, 1.11, 1.16, 1.21, 1.26.
#: Floating point makes arange include 1.06 and 1.11 but stop at 1.15, 1.20, 1.25, so the
#: five severities average 7, 12, 16, 21 and 26 zoomed copies; these are the exact floats.
ZOOM_FACTORS = tuple(
    tuple(float(z) for z in np.arange(1, end, 0.01)) for end in (1.06, 1.11, 1.16, 1.21, 1.26)
)
#: The reference's disk lives on a 17 x 17 grid (radius <= 8) and is blurred with a 3 x 3 kernel.
_DISK_HALF = 8


def disk_kernel(radius: float, alias_blur: float) -> Tensor:
    """The reference's anti-aliased disk: a normalised 0/1 disk on a 17 x 17 grid, blurred by
    OpenCV's GaussianBlur(ksize=3, sigma=alias_blur), float32 step by step as OpenCV does it.

    The float32 bits matter: the kernel sums to 1 + 1e-9 .. 5e-8, and that excess, not the
    image, decides whether a flat region of value v stays v after the reference's truncation.
    Only radii up to 8 (every CIFAR severity) are supported: the reference switches to another
    grid and kernel size above that.
    """
    if radius > _DISK_HALF:
        raise ValueError(f"disk radius {radius} > {_DISK_HALF} is outside the CIFAR-10-C recipe")
    grid = torch.arange(-_DISK_HALF, _DISK_HALF + 1, dtype=torch.float32)
    inside = (grid.unsqueeze(1) ** 2 + grid.unsqueeze(0) ** 2) <= radius**2
    disk = inside.float() / inside.float().sum()
    # cv2.getGaussianKernel(3, sigma, CV_32F): float32 exponentials, their sum in double, each
    # tap float32(tap / sum).
    raw = torch.exp(-0.5 / (alias_blur * alias_blur) * torch.tensor([1.0, 0.0], dtype=torch.float64)).float()
    scale = 1.0 / (2 * raw[0].double() + raw[1].double())
    side, centre = (raw.double() * scale).float()  # two float32 scalars
    # OpenCV's separable 3-tap symmetric filter, rows then columns: centre * x + side * (left +
    # right), in float32, reflect-101 at the grid's border.
    index = border_index(torch.arange(-1, 2 * _DISK_HALF + 2), 2 * _DISK_HALF + 1, "reflect101")
    padded = disk[:, index]
    disk = padded[:, 1:-1] * centre + (padded[:, :-2] + padded[:, 2:]) * side
    padded = disk[index, :]
    return padded[1:-1] * centre + (padded[:-2] + padded[2:]) * side


def defocus_blur(images: Tensor, severity: int) -> Tensor:
    """Correlate every channel with the disk (OpenCV filter2D: float64, reflect-101 border)."""
    kernel = disk_kernel(*DEFOCUS[severity - 1]).double()
    # Outside its few central pixels the 17 x 17 kernel is exactly 0: crop it to what is not.
    rows, cols = kernel.nonzero().unbind(1)
    half = int(max(rows.max() - _DISK_HALF, _DISK_HALF - rows.min(), cols.max() - _DISK_HALF,
                   _DISK_HALF - cols.min()))  # fmt: skip
    kernel = kernel[_DISK_HALF - half : _DISK_HALF + half + 1, _DISK_HALF - half : _DISK_HALF + half + 1]
    n, c, h, w = images.shape
    x = images.double().reshape(n * c, 1, h, w) / 255
    row_index = border_index(torch.arange(-half, h + half), h, "reflect101")
    col_index = border_index(torch.arange(-half, w + half), w, "reflect101")
    padded = x[:, :, row_index][:, :, :, col_index]
    out = F.conv2d(padded, kernel[None, None])  # conv2d correlates, as filter2D does
    return to_uint8(out.reshape(n, c, h, w))


#: Up to this many pixels, zoom blur is one (HW, HW) matrix product (4 MiB at 32 x 32);
#: above it, two small products per zoom factor.
_KRONECKER_PIXELS = 2048


@functools.cache
def _zoom_matrices(size: int, severity: int) -> Tensor:
    """(Z, size, size) float64 matrices of the severity's clipped zooms along one axis."""
    return torch.stack([clipped_zoom_matrix(size, z) for z in ZOOM_FACTORS[severity - 1]])


@functools.cache
def _zoom_sum_matrix(h: int, w: int, severity: int) -> Tensor:
    """The sum over zoom factors of row-zoom (x) column-zoom, acting on flattened images."""
    rows, cols = _zoom_matrices(h, severity), _zoom_matrices(w, severity)
    return sum(torch.kron(r, q) for r, q in zip(rows, cols, strict=True)).float()


def zoom_blur(images: Tensor, severity: int) -> Tensor:
    """The mean of the image and its clipped zooms, in float32 as the reference computes it.

    Each zoom is linear and separable, so their sum is one matrix on the flattened image
    (about 12 non-zeros a row at 32 x 32): one dense product instead of 2 x 26 small ones.
    """
    n, c, h, w = images.shape
    x = images.float() / 255
    count = len(ZOOM_FACTORS[severity - 1])
    if h * w <= _KRONECKER_PIXELS:
        total = (x.reshape(n * c, h * w) @ _zoom_sum_matrix(h, w, severity).T).view(n, c, h, w)
    else:
        rows, cols = _zoom_matrices(h, severity).float(), _zoom_matrices(w, severity).float()
        total = sum(r @ x @ q.T for r, q in zip(rows, cols, strict=True))
    return to_uint8((x + total) / (count + 1))
