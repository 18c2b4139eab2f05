"""Motion blur (make_cifar_c.py ``motion_blur``) and the line blur that snow also uses.

The reference calls ImageMagick's MotionBlurImage through Wand. That filter is a one-sided
line: output(x, y) = sum_i k_i * input(x + ox_i, y + oy_i) for i = 0 .. width - 1, with
width = 2 * ceil(radius) + 1, k_i proportional to exp(-i^2 / (2 sigma^2)) (a half Gaussian
that starts at the pixel itself, normalised to sum 1), the offsets rounded to whole pixels
along the angle (ox_i = ceil(i cos(a) - 1/2), oy_i = ceil(i sin(a) - 1/2), as ImageMagick
computes them) and pixels off the image taken from the nearest edge (ImageMagick's default
"edge" virtual pixels). This module computes that same sum with our own code, one strided copy
per tap for the whole batch.

Differences from ImageMagick: it works on the 8-bit values in float32 and rounds once to
8 bits at the end, where ImageMagick (Q16) keeps 16-bit intermediate values before writing
the 8-bit PNG the reference reads back; the two can differ by one grey level on values that
fall within 1/257 of a rounding tie. The reference's round trip through PNG and OpenCV
(BGR to RGB, grey PNG back to three channels) changes no value and is left out.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from softcal.shift.seeding import Sampler

#: motion_blur: (radius, sigma) of ImageMagick's motion blur; the angle is uniform in [-45, 45).
MOTION = ((6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5))
MOTION_ANGLES = (-45.0, 45.0)


def angle_draws(low: float, high: float) -> Sampler:
    """One angle in degrees per image, uniform on [low, high) as numpy's uniform(low, high)."""
    return lambda generator, count: (
        low + (high - low) * torch.rand(count, generator=generator, dtype=torch.float64),
    )


def motion_taps(radius: float, sigma: float) -> Tensor:
    """ImageMagick's normalised half-Gaussian weights, 2 * ceil(radius) + 1 of them."""
    width = 2 * math.ceil(radius) + 1
    i = torch.arange(width, dtype=torch.float64)
    weights = torch.exp(-(i * i) / (2.0 * sigma * sigma))
    return weights / weights.sum()


def motion_offsets(angles: Tensor, width: int) -> tuple[Tensor, Tensor]:
    """(row, column) offsets of the taps, each (N, width), rounded as ImageMagick rounds them."""
    radians = torch.deg2rad(angles.double()).unsqueeze(1)
    px, py = width * torch.sin(radians), width * torch.cos(radians)  # ImageMagick's point.x, .y
    i = torch.arange(width, dtype=torch.float64)
    length = torch.hypot(px, py)
    cols = torch.ceil(i * py / length - 0.5).long()
    rows = torch.ceil(i * px / length - 0.5).long()
    return rows, cols


def line_blur(images: Tensor, taps: Tensor, angles: Tensor) -> Tensor:
    """The motion-blur sum over float (N, C, H, W) images, each along its own angle.

    The images are padded once with their edge pixels (ImageMagick's edge virtual pixels) by
    the longest offset R; a strided view then holds every shifted copy of every image, and
    each tap picks one copy per image - a copy of whole images, no per-pixel index.
    """
    n, c, h, w = images.shape
    row_off, col_off = motion_offsets(angles, len(taps))
    reach = int(max(row_off.abs().max(), col_off.abs().max()))
    padded = F.pad(images, (reach, reach, reach, reach), mode="replicate").contiguous()
    span = 2 * reach + 1
    s_n, s_c, s_r, s_q = padded.stride()
    # shifted[n, :, reach + dy, reach + dx] is image n moved by (dy, dx), edges repeated.
    shifted = padded.as_strided((n, c, span, span, h, w), (s_n, s_c, s_r, s_q, s_r, s_q))
    batch = torch.arange(n)
    out = torch.zeros_like(images)
    for tap, weight in enumerate(taps.tolist()):
        out.add_(shifted[batch, :, row_off[:, tap] + reach, col_off[:, tap] + reach], alpha=weight)
    return out


def round_to_uint8(values: Tensor) -> Tensor:
    """0..255 floats to uint8 by rounding, as ImageMagick writes an 8-bit PNG."""
    return torch.floor(values + 0.5).clamp(0, 255).to(torch.uint8)


def motion_blur(images: Tensor, severity: int, angles: Tensor) -> Tensor:
    """Blur every image along its angle (degrees) with the severity's radius and sigma.

    float32 is enough here: the sum is rounded to whole grey levels, and float32's error
    (about 1e-5 of a level) only matters for sums within that distance of a tie.
    """
    taps = motion_taps(*MOTION[severity - 1])
    return round_to_uint8(line_blur(images.float(), taps, angles))
