"""Elastic transform (make_cifar_c.py ``elastic_transform``): a random affine warp, then a
smooth random displacement field, both resampled bilinearly.

The reference's parameters are fractions of the image size (``IMSIZE * 0.05``, ... with
IMSIZE = 32); here they are fractions of min(H, W), the same numbers for CIFAR. Steps, with
the reference's libraries and the differences of ours:

1. Three points around the centre, (c + s, c + s), (c + s, c - s), (c - s, c - s) with
   c = size // 2 and s = size // 3, each moved by a uniform shift in [-affine, affine) per
   coordinate; the affine map taking the moved points back to the original ones gives, for
   every output pixel, where to sample (OpenCV getAffineTransform + warpAffine, bilinear,
   reflect-101 border). OpenCV rounds sample positions to 1/32 pixel; we do not (a
   difference below 1/64 pixel).
2. dx and dy: uniforms on [-1, 1) per pixel, smoothed by skimage's Gaussian (sigma, scipy
   'reflect' border, truncate 3) and scaled by alpha (severity 1 has alpha 0: affine only).
3. Sample the warped image at (row + dy, col + dx) bilinearly (scipy map_coordinates,
   order 1, 'reflect' border: the image mirrored with its edge pixels repeated).

On non-square images the reference's centre mixes up rows and columns; we use the centre
of each axis. Both resamplings are gathers over the whole batch.
"""

from __future__ import annotations

import torch
from torch import Tensor

from softcal.shift.filters import border_index, gaussian_blur, to_uint8
from softcal.shift.seeding import Sampler

#: elastic_transform: (alpha, sigma, affine shift) as fractions of the image size; for 32:
#: (0, 0, 2.56), (1.6, 6.4, 2.24), (2.56, 1.92, 1.92), (3.2, 1.28, 1.6), (3.2, 0.96, 0.96).
ELASTIC = ((0, 0, 0.08), (0.05, 0.2, 0.07), (0.08, 0.06, 0.06), (0.1, 0.04, 0.05), (0.1, 0.03, 0.03))


def elastic_draws(severity: int, shape: tuple[int, int, int]) -> Sampler:
    """Uniforms on [0, 1): (count, 3, 2) for the moved points, (count, 2, H, W) for dx, dy."""

    def sample(generator: torch.Generator, count: int) -> tuple[Tensor, ...]:
        points = torch.rand((count, 3, 2), generator=generator, dtype=torch.float64)
        field = torch.rand((count, 2, shape[1], shape[2]), generator=generator, dtype=torch.float64)
        return points, field

    return sample


def elastic_transform(images: Tensor, severity: int, point_uniforms: Tensor,
                      field_uniforms: Tensor) -> Tensor:  # fmt: skip
    """The reference's elastic transform with the given uniforms (see the module docstring)."""
    n, _, h, w = images.shape
    size = min(h, w)
    alpha, sigma, shift = (size * f for f in ELASTIC[severity - 1])
    x = images.float() / 255  # float32, as the reference
    rows = torch.arange(h, dtype=torch.float64).view(1, h, 1).expand(n, h, w)
    cols = torch.arange(w, dtype=torch.float64).view(1, 1, w).expand(n, h, w)
    src_cols, src_rows = affine_sources(point_uniforms, shift, h, w, rows, cols)
    warped = sample_bilinear(x, src_rows, src_cols, "reflect101")
    # skimage gaussian on float64 uniforms in [-1, 1), times alpha, stored as float32.
    field = (gaussian_blur(field_uniforms * 2 - 1, sigma, "symmetric", truncate=3.0) * alpha).float()
    moved_rows, moved_cols = rows + field[:, 1].double(), cols + field[:, 0].double()
    return to_uint8(sample_bilinear(warped, moved_rows, moved_cols, "symmetric"))


def affine_sources(point_uniforms: Tensor, shift: float, h: int, w: int, rows: Tensor,
                   cols: Tensor) -> tuple[Tensor, Tensor]:  # fmt: skip
    """For every output pixel, the (x, y) = (col, row) position that warpAffine samples."""
    centre = torch.tensor([w // 2, h // 2], dtype=torch.float32)
    s = min(h, w) // 3
    before = torch.stack([centre + s, centre + torch.tensor([s, -s]), centre - s])  # (3, 2) as (x, y)
    moved = before + (-shift + 2 * shift * point_uniforms).float()  # float32, as the reference
    before, moved = before.double().expand_as(moved), moved.double()
    # Solve A @ moved_k + t = before_k (k = 0, 1, 2) in closed form: element-wise, so every
    # image's map is the same whatever batch it is in.
    p1, p2 = moved[:, 1] - moved[:, 0], moved[:, 2] - moved[:, 0]
    q1, q2 = before[:, 1] - before[:, 0], before[:, 2] - before[:, 0]
    det = p1[:, 0] * p2[:, 1] - p2[:, 0] * p1[:, 1]
    # inverse of P = [p1 p2] (columns): [[p2y, -p2x], [-p1y, p1x]] / det; A = Q @ P^-1
    inv = torch.stack([torch.stack([p2[:, 1], -p2[:, 0]], 1), torch.stack([-p1[:, 1], p1[:, 0]], 1)], 1)
    inv = inv / det.view(-1, 1, 1)
    a = torch.stack([q1, q2], 2) @ inv  # (N, 2, 2)
    t = before[:, 0] - (a @ moved[:, 0].unsqueeze(2)).squeeze(2)
    view = (-1, 1, 1)
    src_x = a[:, 0, 0].view(view) * cols + a[:, 0, 1].view(view) * rows + t[:, 0].view(view)
    src_y = a[:, 1, 0].view(view) * cols + a[:, 1, 1].view(view) * rows + t[:, 1].view(view)
    return src_x, src_y


def sample_bilinear(images: Tensor, rows: Tensor, cols: Tensor, border: str) -> Tensor:
    """Bilinear samples of (N, C, H, W) at (N, H, W) positions, off-image samples by ``border``."""
    n, c, h, w = images.shape
    top, left = rows.floor(), cols.floor()
    fr, fc = (rows - top).to(images.dtype).unsqueeze(1), (cols - left).to(images.dtype).unsqueeze(1)
    top, left = top.long(), left.long()
    upper, lower = border_index(top, h, border) * w, border_index(top + 1, h, border) * w
    first, second = border_index(left, w, border), border_index(left + 1, w, border)
    flat = images.reshape(n, c, h * w)

    def at(row_start: Tensor, col: Tensor) -> Tensor:
        index = (row_start + col).reshape(n, 1, h * w).expand(n, c, h * w)
        return flat.gather(2, index).view(n, c, h, w)

    up = torch.lerp(at(upper, first), at(upper, second), fc)
    down = torch.lerp(at(lower, first), at(lower, second), fc)
    return torch.lerp(up, down, fr)
