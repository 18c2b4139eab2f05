"""Brightness, contrast, pixelate and JPEG (make_cifar_c.py), all deterministic.

Brightness raises the HSV value channel. Scaling the value with hue and saturation fixed
multiplies each of r, g, b by v' / v, so that is how it is computed (the reference goes
through skimage's rgb2hsv and hsv2rgb, which is the same map up to float rounding; the
brightest channel is set to v' exactly, so a clipped value of 1 stays 255 after truncation).
Pixelate reproduces PIL's BOX resize, fixed-point arithmetic included; JPEG is PIL itself.
"""

from __future__ import annotations

import functools
import io

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from softcal.shift.filters import to_uint8

#: brightness: added to the HSV value.
BRIGHTNESS = (0.05, 0.1, 0.15, 0.2, 0.3)
#: contrast: factor on the distance from each channel's mean.
CONTRAST = (0.75, 0.5, 0.4, 0.3, 0.15)
#: pixelate: the image is BOX-resized to int(size * c) pixels and back.
PIXELATE = (0.95, 0.9, 0.85, 0.75, 0.65)
#: jpeg_compression: PIL's JPEG quality.
JPEG_QUALITY = (80, 65, 58, 50, 40)
#: PIL's fixed-point resampling (Resample.c): 22 fractional bits, rounding by adding half.
_PRECISION_BITS = 22


def brightness(images: Tensor, severity: int) -> Tensor:
    """HSV value + c (clipped to 1) with hue and saturation kept, in float64."""
    x = images.double() / 255
    value = x.amax(dim=1, keepdim=True)
    new_value = (value + BRIGHTNESS[severity - 1]).clamp(max=1.0)
    # A black pixel (v = 0) has saturation 0 in skimage, so it becomes grey v'.
    scaled = torch.where(value > 0, x * (new_value / value.clamp_min(1e-300)), new_value)
    return to_uint8(torch.where(x == value, new_value, scaled))


def contrast(images: Tensor, severity: int) -> Tensor:
    """(x - mean) * c + mean, the mean per image and channel."""
    x = images.double() / 255
    means = x.mean(dim=(2, 3), keepdim=True)
    return to_uint8((x - means) * CONTRAST[severity - 1] + means)


@functools.cache
def pil_box_coefficients(in_size: int, out_size: int) -> Tensor:
    """PIL's integer BOX coefficients for one axis, (out_size, in_size) as float64 integers.

    Output pixel j averages the input pixels whose centres lie in (centre - s/2, centre + s/2]
    (s = in/out, at least 1), each weight normalised and then rounded to 22 fractional bits.
    """
    scale = in_size / out_size
    support = 0.5 * max(scale, 1.0)
    coefficients = torch.zeros(out_size, in_size, dtype=torch.float64)
    for j in range(out_size):
        centre = (j + 0.5) * scale
        low = max(int(centre - support + 0.5), 0)
        high = min(int(centre + support + 0.5), in_size)
        pixels = torch.arange(low, high, dtype=torch.float64)
        where = (pixels - centre + 0.5) / max(scale, 1.0)
        weights = ((where > -0.5) & (where <= 0.5)).double()
        weights = weights / weights.sum()
        coefficients[j, low:high] = torch.floor(weights * (1 << _PRECISION_BITS) + 0.5)
    return coefficients


def _pil_pass(x: Tensor, coefficients: Tensor) -> Tensor:
    """One PIL resampling pass along the last axis of 0..255 float64 integers: exact (the
    sums stay far below 2**53), then PIL's rounding and clipping to 8 bits."""
    total = x @ coefficients.T + (1 << (_PRECISION_BITS - 1))
    return torch.floor(total / (1 << _PRECISION_BITS)).clamp(0, 255)


def box_resize(images: Tensor, height: int, width: int) -> Tensor:
    """PIL ``resize((width, height), Image.BOX)`` of uint8 (N, C, H, W): horizontal pass first,
    rounded to 8 bits, then the vertical pass, as PIL does."""
    h, w = images.shape[2:]
    x = images.double()
    if width != w:
        x = _pil_pass(x, pil_box_coefficients(w, width))
    if height != h:
        x = _pil_pass(x.transpose(2, 3), pil_box_coefficients(h, height)).transpose(2, 3)
    return x.to(torch.uint8)


def pixelate(images: Tensor, severity: int) -> Tensor:
    """BOX-resize to int(size * c) and back: blocks of averaged pixels."""
    h, w = images.shape[2:]
    c = PIXELATE[severity - 1]
    return box_resize(box_resize(images, int(h * c), int(w * c)), h, w)


def jpeg_compression(images: Tensor, severity: int) -> Tensor:
    """Save and reload every image as a PIL JPEG of the severity's quality (the reference's
    own call; one image at a time, the encoder has no batch interface)."""
    quality = JPEG_QUALITY[severity - 1]
    pixels = images.permute(0, 2, 3, 1).numpy()
    out = np.empty_like(pixels)
    for i, image in enumerate(pixels):
        buffer = io.BytesIO()
        pil_image = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
        pil_image.save(buffer, "JPEG", quality=quality)
        buffer.seek(0)
        with Image.open(buffer) as decoded:
            out[i] = np.asarray(decoded).reshape(image.shape)
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()
