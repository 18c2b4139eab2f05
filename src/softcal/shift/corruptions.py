"""The 15 CIFAR-10-C corruptions at severities 1-5, generated in-process from uint8 batches.

Hendrycks & Dietterich, "Benchmarking Neural Network Robustness to Common Corruptions and
Perturbations" (ICLR 2019) made CIFAR-10-C with ``make_cifar_c.py`` (github.com/hendrycks/
robustness, ImageNet-C/create_c/). Every parameter below is that script's; the code is ours.
Per severity 1..5, in the canonical order (the module holding each, and its table):

* gaussian_noise (noise.GAUSSIAN_SIGMAS): x + N(0, s^2), s = .04, .06, .08, .09, .10.
* shot_noise (noise.SHOT_RATES): Poisson(x * r) / r, r = 500, 250, 100, 75, 50.
* impulse_noise (noise.IMPULSE_AMOUNTS): salt and pepper on .01, .02, .03, .05, .07 of values.
* defocus_blur (blur.DEFOCUS): anti-aliased disk (radius, blur) = (.3, .4), (.4, .5),
  (.5, .6), (1, .2), (1.5, .1).
* glass_blur (glass.GLASS): (sigma, max_delta, iterations) = (.05, 1, 1), (.25, 1, 1),
  (.4, 1, 1), (.25, 1, 2), (.4, 1, 2).
* motion_blur (motion.MOTION): ImageMagick-style (radius, sigma) = (6, 1), (6, 1.5), (6, 2),
  (8, 2), (9, 2.5), angle uniform in [-45, 45) degrees.
* zoom_blur (blur.ZOOM_FACTORS): mean of zooms 1 .. 1.06, 1.11, 1.15, 1.20, 1.25 by 0.01.
* snow (weather.SNOW): (mean, std, zoom, threshold, radius, sigma, weight) =
  (.1, .2, 1, .6, 8, 3, .95), (.1, .2, 1, .5, 10, 4, .9), (.15, .3, 1.75, .55, 10, 4, .9),
  (.25, .3, 2.25, .6, 12, 6, .85), (.3, .3, 1.25, .65, 14, 12, .8), angle in [-135, -45).
* frost (frost.FROST): (image, frost) weights (1, .2), (1, .3), (.9, .4), (.85, .4), (.75, .45).
* fog (weather.FOG): (weight, decay) = (.2, 3), (.5, 3), (.75, 2.5), (1, 2), (1.5, 1.75).
* brightness (digital.BRIGHTNESS): HSV value + .05, .1, .15, .2, .3.
* contrast (digital.CONTRAST): (x - mean) * .75, .5, .4, .3, .15 + mean.
* elastic_transform (elastic.ELASTIC): (alpha, sigma, affine) = size * (0, 0, .08),
  (.05, .2, .07), (.08, .06, .06), (.1, .04, .05), (.1, .03, .03).
* pixelate (digital.PIXELATE): PIL BOX down to .95, .9, .85, .75, .65 of the size and back.
* jpeg_compression (digital.JPEG_QUALITY): PIL JPEG quality 80, 65, 58, 50, 40.

Pixels come out as the reference's ``np.uint8`` of its float result (truncated, not
rounded; motion blur and snow's flakes are rounded, as ImageMagick writes them). The script's
quirks are kept, since CIFAR-10-C was made with them: glass offsets come from
``randint(-1, 1)``, i.e. {-1, 0}; zoom's ``np.arange`` gives 7, 12, 16, 21, 26 factors; the
fractal's noise is wibble * U(-wibble, wibble); frost picks only frost1-5 (``randint(5)``)
and never a crop touching the last row or column; motion blur's severities 3 and 4 differ
only in taps weighing under 1e-9; and glass, motion, frost and elastic do not change the
image more at every higher severity.

Where ours differs from the reference, the module says so in its docstring: glass (an exact
vectorised form of the sequential shuffle; only the random generator differs), motion and
snow (our own ImageMagick-equivalent line blur, one rounding instead of Q16 intermediates),
frost (PIL decoding, grey crops, photographs enlarged for images over 62 x 96), elastic (no
1/32-pixel rounding of OpenCV's sample positions; parameters relative to min(H, W)),
digital (brightness by scaling r, g, b instead of the HSV round trip). Grey (C = 1) images
get every corruption on their one channel; other sizes get the same parameters, with the
sizes that follow the image (crops, fractal side, elastic's pixels) following it.

Random draws are seeded per (seed, corruption, severity, block of 256 absolute image
indices), so an image's corruption does not depend on the batch it comes in
(``softcal.shift.seeding``); numpy's global stream, which the script used, is not used.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from softcal.errors import DataError, SoftcalError
from softcal.shift import blur, digital, elastic, frost, glass, motion, noise, weather
from softcal.shift.seeding import Sampler, seeded_draws, standard_normal, uniform

CORRUPTIONS: tuple[str, ...] = (
    "gaussian_noise", "shot_noise", "impulse_noise",
    "defocus_blur", "glass_blur", "motion_blur", "zoom_blur",
    "snow", "frost", "fog",
    "brightness", "contrast", "elastic_transform", "pixelate", "jpeg_compression",
)  # fmt: skip
SEVERITIES: tuple[int, ...] = (1, 2, 3, 4, 5)

#: The random corruptions' samplers, from (severity, (C, H, W)); the others draw nothing.
_DRAWS: dict[str, Callable[[int, tuple[int, int, int]], Sampler]] = {
    "gaussian_noise": lambda severity, shape: standard_normal(shape),
    "shot_noise": lambda severity, shape: uniform(shape),
    "impulse_noise": lambda severity, shape: uniform(shape),
    "glass_blur": glass.glass_draws,
    "motion_blur": lambda severity, shape: motion.angle_draws(*motion.MOTION_ANGLES),
    "snow": weather.snow_draws,
    "frost": frost.frost_draws,
    "fog": weather.fog_draws,
    "elastic_transform": elastic.elastic_draws,
}
#: The pixel work: (uint8 images, severity, *draws) -> uint8 images. Frost is built apart:
#: it also needs the photographs.
_APPLY: dict[str, Callable[..., Tensor]] = {
    "gaussian_noise": noise.gaussian_noise,
    "shot_noise": noise.shot_noise,
    "impulse_noise": noise.impulse_noise,
    "defocus_blur": blur.defocus_blur,
    "glass_blur": glass.glass_blur,
    "motion_blur": motion.motion_blur,
    "zoom_blur": blur.zoom_blur,
    "snow": weather.snow,
    "fog": weather.fog,
    "brightness": digital.brightness,
    "contrast": digital.contrast,
    "elastic_transform": elastic.elastic_transform,
    "pixelate": digital.pixelate,
    "jpeg_compression": digital.jpeg_compression,
}


def corrupt(images: Tensor, name: str, severity: int, *, seed: int = 0, first_index: int = 0,
            frost_dir: Path | None = None) -> Tensor:  # fmt: skip
    """Corrupt uint8 (N, C, H, W) images (C = 1 or 3) with one corruption at one severity.

    ``first_index`` is the absolute index of ``images[0]`` in its set: image first_index + i
    gets the same random draw (for ``seed``) whatever batch it comes in. ``frost_dir`` holds
    the frost photographs (default: ``frost_images_dir()``). Returns uint8 of the same shape,
    on the images' device (the work is done on the CPU).
    """
    _check_name(name, allow_all=False)
    _check_severity(severity)
    _check_images(images)
    severity = int(severity)  # 3.0 or numpy's 3 index the tables as 3 does
    if seed < 0 or first_index < 0:
        raise ValueError(f"seed ({seed}) and first_index ({first_index}) must be >= 0")
    device, x = images.device, images.cpu()
    if len(x) == 0:
        return images.clone()
    draws: tuple[Tensor, ...] = ()
    if name in _DRAWS:
        sampler = _DRAWS[name](severity, tuple(x.shape[1:]))
        key = (CORRUPTIONS.index(name), severity)
        draws = seeded_draws(sampler, seed=seed, key=key, first_index=first_index, count=len(x))
    if name == "frost":
        photos = frost.load_frost_photos(frost_dir if frost_dir is not None else frost_images_dir())
        out = frost.frost(x, severity, frost.frost_crops(photos, draws[0], tuple(x.shape[1:])))
    else:
        out = _APPLY[name](x, severity, *draws)
    return out.to(device)


def parse_corruptions(text: str) -> list[str]:
    """``all`` or a comma list of corruption names, in the order given (repeats dropped)."""
    if text.strip() == "all":
        return list(CORRUPTIONS)
    names = [part.strip() for part in text.split(",")]
    for name in names:
        _check_name(name, allow_all=True)
    return list(dict.fromkeys(names))


def parse_severities(text: str) -> list[int]:
    """``all`` or a comma list of severities 1-5, e.g. ``1,3,5`` (repeats dropped)."""
    if text.strip() == "all":
        return list(SEVERITIES)
    severities = []
    for part in text.split(","):
        try:
            severity = int(part.strip())
        except ValueError:
            severity = None
        if severity not in SEVERITIES:
            raise _severity_error(part.strip())
        severities.append(severity)
    return list(dict.fromkeys(severities))


def frost_images_dir(root: Path | None = None) -> Path:
    """``<data root>/frost``: the folder of the frost photographs (default root:
    ``$SOFTCAL_DATA_ROOT``, else ``data/``)."""
    if root is None:
        # Imported here: softcal.data's datamodule module brings Lightning, which only the
        # default root needs.
        from softcal.data.datamodule import default_data_root

        root = default_data_root()
    folder = Path(root) / "frost"
    if not folder.is_dir():
        raise DataError(
            f"frost photographs not found: {folder} does not exist; put frost1.png ... frost6.jpg"
            " from github.com/hendrycks/robustness (ImageNet-C/create_c/) there"
        )
    return folder


def _check_name(name: str, *, allow_all: bool) -> None:
    if name not in CORRUPTIONS:
        also = " or all" if allow_all else ""
        raise SoftcalError(f"unknown corruption '{name}'; valid names: {', '.join(CORRUPTIONS)}{also}")


def _severity_error(value: object) -> SoftcalError:
    return SoftcalError(f"unknown severity '{value}'; valid severities: 1, 2, 3, 4, 5")


def _check_severity(severity: int) -> None:
    if severity not in SEVERITIES or isinstance(severity, bool):
        raise _severity_error(severity)


def _check_images(images: Tensor) -> None:
    if not isinstance(images, Tensor) or images.dtype != torch.uint8 or images.dim() != 4:
        raise ValueError("images must be a uint8 tensor of shape (N, C, H, W)")
    if images.shape[1] not in (1, 3):
        raise ValueError(f"images must have 1 or 3 channels, got shape {tuple(images.shape)}")
