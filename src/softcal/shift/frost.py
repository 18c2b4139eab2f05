"""Frost (make_cifar_c.py ``frost``): a random crop of a frost photograph over the image.

The reference reads a photograph with OpenCV, shrinks it with ``cv2.resize(fx=0.2, fy=0.2)``
(bilinear, half-pixel centres: output pixel k samples input position 5k + 2 exactly, so the
shrink is a plain subsampling, which is what ``shrink`` does), crops H x W at a random corner
(``randint(0, rows - 32)``, ``randint(0, cols - 32)``: the last row and column are never a
corner) and returns ``clip(a * image + b * crop, 0, 255)``.

Differences from the reference: the photographs are decoded by PIL instead of OpenCV (PNG
decoding is lossless in both; the JPEG decoders may differ by a grey level); grey images get
the crop's ITU-R 601 luma (the reference only has RGB); and an image larger than a shrunken
photograph (more than 62 x 96 pixels, never CIFAR) gets the photograph enlarged bilinearly
until a crop fits. Like the reference, only ``frost1.png`` .. ``frost5.jpg`` are used: it
picks the file with ``randint(5)``, so ``frost6.jpg`` never appears in CIFAR-10-C.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from softcal.errors import DataError
from softcal.shift.filters import to_grey
from softcal.shift.seeding import Sampler, uniform

#: frost: (image weight, frost weight).
FROST = ((1, 0.2), (1, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45))
#: The six photographs of hendrycks/robustness (ImageNet-C/create_c/), Apache-2.0.
FROST_FILES = ("frost1.png", "frost2.png", "frost3.png", "frost4.jpg", "frost5.jpg", "frost6.jpg")
#: The ones the CIFAR script can pick (randint(5)).
USED_FROST_FILES = FROST_FILES[:5]
#: cv2.resize(fx=0.2): output pixel k is input pixel 5k + 2.
_SHRINK, _FIRST = 5, 2


def frost_draws(severity: int, shape: tuple[int, int, int]) -> Sampler:
    """Three uniforms per image: which photograph, the crop's top row, its left column."""
    return uniform((3,))


def load_frost_photos(folder: Path) -> tuple[Tensor, ...]:
    """The five used photographs, shrunk as the reference shrinks them: (3, h, w) uint8 each.

    Cached per folder: every batch of an evaluation uses the same photographs.
    """
    missing = [name for name in USED_FROST_FILES if not (folder / name).is_file()]
    if missing:
        raise DataError(
            f"frost photographs missing in {folder}: {', '.join(missing)}; copy frost1.png ... frost6.jpg"
            " from github.com/hendrycks/robustness (ImageNet-C/create_c/) there"
        )
    return _load(str(folder.resolve()))


@functools.cache
def _load(folder: str) -> tuple[Tensor, ...]:
    photos = []
    for name in USED_FROST_FILES:
        with Image.open(Path(folder) / name) as image:
            pixels = np.asarray(image.convert("RGB"))  # drops the PNGs' alpha, as cv2.imread does
        photos.append(shrink(torch.from_numpy(pixels.copy()).permute(2, 0, 1)))
    return tuple(photos)


def shrink(photo: Tensor) -> Tensor:
    """cv2.resize(photo, fx=0.2, fy=0.2) of a (3, h, w) image: round(h / 5) x round(w / 5)
    pixels (OpenCV rounds half to even), pixel k taken from 5k + 2."""
    h, w = photo.shape[1:]
    rows = (torch.arange(round(h * 0.2)) * _SHRINK + _FIRST).clamp(max=h - 1)
    cols = (torch.arange(round(w * 0.2)) * _SHRINK + _FIRST).clamp(max=w - 1)
    return photo[:, rows][:, :, cols]


def frost_crops(photos: tuple[Tensor, ...], picks: Tensor, shape: tuple[int, int, int]) -> Tensor:
    """The crop each image gets, (N, C, H, W) float64 in 0..255, from its three uniforms."""
    channels, h, w = shape
    which = (picks[:, 0] * len(photos)).long()
    crops = torch.empty(len(picks), 3, h, w, dtype=torch.float64)
    for k, photo in enumerate(photos):
        chosen = (which == k).nonzero().flatten()
        if len(chosen) == 0:
            continue
        photo = _cover(photo, h, w)
        # randint(0, rows - H): rows - H possible top rows, the last row never one.
        top = (picks[chosen, 1] * (photo.shape[1] - h)).long()
        left = (picks[chosen, 2] * (photo.shape[2] - w)).long()
        r = (top.view(-1, 1) + torch.arange(h)).view(-1, h, 1)
        c = (left.view(-1, 1) + torch.arange(w)).view(-1, 1, w)
        crops[chosen] = photo[:, r, c].permute(1, 0, 2, 3).double()
    return to_grey(crops) if channels == 1 else crops


def _cover(photo: Tensor, h: int, w: int) -> Tensor:
    """The photograph, enlarged bilinearly if needed so that an h x w crop has a choice of corners."""
    scale = max((h + 1) / photo.shape[1], (w + 1) / photo.shape[2])
    if scale <= 1:
        return photo
    size = (max(h + 1, round(photo.shape[1] * scale)), max(w + 1, round(photo.shape[2] * scale)))
    enlarged = F.interpolate(photo[None].float(), size=size, mode="bilinear", align_corners=False)
    return enlarged[0].round().clamp(0, 255).to(torch.uint8)


def frost(images: Tensor, severity: int, crops: Tensor) -> Tensor:
    """clip(a * image + b * crop, 0, 255), truncated to uint8 as the reference's np.uint8."""
    image_weight, frost_weight = FROST[severity - 1]
    return (image_weight * images.double() + frost_weight * crops).clamp(0, 255).to(torch.uint8)
