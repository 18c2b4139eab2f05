"""Snow and fog (make_cifar_c.py ``snow``, ``fog``, ``plasma_fractal``); frost is in ``frost``.

Snow: a layer of Gaussian noise is enlarged with the reference's clipped zoom, thresholded,
cut to 8 bits, motion-blurred along a random angle (``motion.line_blur``, our ImageMagick
equivalent; see that module for how it differs) and added to a brightened image twice, once
rotated by 180 degrees. Fog: a diamond-square plasma fractal per image, scaled and added.
"""

from __future__ import annotations

import torch
from torch import Tensor

from softcal.shift.filters import clipped_zoom_matrix, separable, to_grey, to_uint8
from softcal.shift.motion import line_blur, motion_taps, round_to_uint8
from softcal.shift.seeding import Sampler

#: snow: (noise mean, noise std, zoom, threshold, blur radius, blur sigma, image weight).
SNOW = (
    (0.1, 0.2, 1, 0.6, 8, 3, 0.95),
    (0.1, 0.2, 1, 0.5, 10, 4, 0.9),
    (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9),
    (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85),
    (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8),
)
#: snow's flakes fall along an angle uniform in [-135, -45) degrees.
SNOW_ANGLES = (-135.0, -45.0)
#: fog: (fractal weight, wibble decay of the plasma fractal).
FOG = ((0.2, 3), (0.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75))


def snow_draws(severity: int, shape: tuple[int, int, int]) -> Sampler:
    """Standard normals for the snow layer (count, H, W) and one angle per image."""
    low, high = SNOW_ANGLES

    def sample(generator: torch.Generator, count: int) -> tuple[Tensor, ...]:
        normal = torch.randn((count, shape[1], shape[2]), generator=generator, dtype=torch.float64)
        angles = low + (high - low) * torch.rand(count, generator=generator, dtype=torch.float64)
        return normal, angles

    return sample


def snow(images: Tensor, severity: int, normal: Tensor, angles: Tensor) -> Tensor:
    """The reference's snow; ``normal`` (N, H, W) standard normals, ``angles`` in degrees."""
    mean, std, zoom, threshold, radius, sigma, weight = SNOW[severity - 1]
    h, w = images.shape[2:]
    layer = separable(normal * std + mean, clipped_zoom_matrix(h, zoom), clipped_zoom_matrix(w, zoom))
    layer = torch.where(layer < threshold, 0.0, layer)
    layer8 = to_uint8(layer).unsqueeze(1)  # the reference saves the layer as an 8-bit PNG
    flakes = round_to_uint8(line_blur(layer8.double(), motion_taps(radius, sigma), angles)).double() / 255
    x = images.float() / 255  # float32, as the reference's image
    brightened = torch.maximum(x, to_grey(x) * 1.5 + 0.5)
    x = weight * x + (1 - weight) * brightened
    return to_uint8(x.double() + flakes + flakes.flip(-2, -1))


def fog_draws(severity: int, shape: tuple[int, int, int]) -> Sampler:
    """The plasma fractals' uniforms: per level of the diamond-square, (count, 3, m, m) (the
    squares' and the two diamond sets' noise), m = 1, 2, 4, ... up to half the fractal's side,
    which is the power of two that covers H and W.

    Drawn up front, level by level, so that the fractal arithmetic runs once over the images
    asked for, not once per seeded block."""
    size = 1 << (max(shape[1], shape[2]) - 1).bit_length()
    levels = [size >> k for k in range(size.bit_length() - 1)]  # step sizes size, size/2, .., 2

    def sample(generator: torch.Generator, count: int) -> tuple[Tensor, ...]:
        return tuple(
            torch.rand((count, 3, size // step, size // step), generator=generator, dtype=torch.float64)
            for step in levels
        )

    return sample


def fog(images: Tensor, severity: int, *level_uniforms: Tensor) -> Tensor:
    """x + weight * fractal, rescaled by max(x) / (max(x) + weight), per image."""
    weight, decay = FOG[severity - 1]
    h, w = images.shape[2:]
    fractals = plasma_fractal(list(level_uniforms), decay)
    x = images.double() / 255
    peak = x.amax(dim=(1, 2, 3), keepdim=True)
    x = x + weight * fractals[:, None, :h, :w]
    return to_uint8(x * peak / (peak + weight))


def plasma_fractal(level_uniforms: list[Tensor], decay: float) -> Tensor:
    """Diamond-square height maps in [0, 1], one per image, from their uniforms (``fog_draws``).

    The reference's algorithm on a whole batch at once: every step fills the centres of the
    squares and then the diamonds of the current grid from the (wrapped) corners' mean, plus
    noise ``wibble * U(-wibble, wibble)`` - the reference multiplies by wibble twice, kept
    here - with wibble starting at 100 and divided by ``decay`` per step.
    """
    count, size = level_uniforms[0].shape[0], 2 * level_uniforms[-1].shape[-1]
    grid = torch.zeros(count, size, size, dtype=torch.float64)
    step, wibble = size, 100.0
    for uniforms in level_uniforms:
        half = step // 2
        noise = wibble * (-wibble + 2 * wibble * uniforms)  # numpy's uniform(-w, w), times w
        corners = grid[:, ::step, ::step]
        squares = corners + corners.roll(-1, 1)
        squares = squares + squares.roll(-1, 2)
        grid[:, half::step, half::step] = squares / 4 + noise[:, 0]
        centres, corners = grid[:, half::step, half::step], grid[:, ::step, ::step]
        diamonds = (centres + centres.roll(1, 1)) + (corners + corners.roll(-1, 2))
        grid[:, ::step, half::step] = diamonds / 4 + noise[:, 1]
        diamonds = (centres + centres.roll(1, 2)) + (corners + corners.roll(-1, 1))
        grid[:, half::step, ::step] = diamonds / 4 + noise[:, 2]
        step, wibble = half, wibble / decay
    grid = grid - grid.amin(dim=(1, 2), keepdim=True)
    return grid / grid.amax(dim=(1, 2), keepdim=True)
