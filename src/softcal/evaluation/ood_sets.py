"""The out-of-distribution image sets ``evaluate.py --ood SPEC`` can score against.

A SPEC is one of:

* ``uniform-noise``: every pixel uniform in 0..255;
* ``gaussian-noise``: every pixel drawn from N(128, 64^2), rounded and clipped to 0..255;
  both as many images as the in-distribution set, in the model's channels and size, from a
  fixed seed (:data:`NOISE_SEED`), so two evaluations score the same images;
* an image folder: every image file under it (class sub-folders or not, searched recursively;
  hidden files and folders skipped: :func:`softcal.data.image_files.find_images`);
* a datamodule config (a YAML path, or a packaged config's name such as ``fashion_mnist``):
  the test split of its ``data`` section.

Images whose channels or size differ from the model's are converted - grey to RGB by
repeating the channel, RGB to grey by luminance (PIL's ``L`` weights, 299/587/114 per mille),
resized bilinearly (with antialiasing when shrinking, as PIL does) - and the notes say so.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from softcal.config_files import available_configs, config_chain, resolve_config
from softcal.data.image_files import find_images
from softcal.data.readers import IMAGE_SUFFIXES, decode_images
from softcal.errors import DataError, SoftcalError

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage

#: The generated sets, by SPEC.
NOISE_KINDS = ("uniform-noise", "gaussian-noise")
#: Seed of the generated noise images.
NOISE_SEED = 0
#: Mean and standard deviation of the Gaussian noise pixels (uint8 units).
GAUSSIAN_MEAN, GAUSSIAN_STD = 128.0, 64.0

_GREY_MODES = ("1", "L", "LA", "I", "I;16", "F")


@dataclass
class OODSpec:
    """What a ``--ood`` value names: ``kind`` is "noise", "folder" or "config"."""

    text: str
    kind: str
    path: Path | None = None


@dataclass
class OODSet:
    """uint8 images (N, C, H, W) in the model's shape, and what was done to get them there."""

    name: str
    spec: str
    images: torch.Tensor = field(repr=False)
    notes: list[str] = field(default_factory=list)


def parse_spec(text: str) -> OODSpec:
    """Which kind of set ``text`` names; one line naming the choices when it names none."""
    if text in NOISE_KINDS:
        return OODSpec(text, "noise")
    path = Path(text).expanduser()
    if path.is_dir():
        return OODSpec(text, "folder", path)
    for candidate in (text, f"{text}.yaml") if not text.endswith((".yaml", ".yml")) else (text,):
        try:
            return OODSpec(text, "config", resolve_config(candidate))
        except SoftcalError:
            continue
    raise SoftcalError(
        f"--ood {text}: not {' or '.join(NOISE_KINDS)}, an image folder or a datamodule config"
        f" (a YAML file, or a packaged config: {', '.join(available_configs())})"
    )


def noise_images(kind: str, n: int, shape: tuple[int, int, int], seed: int = NOISE_SEED) -> torch.Tensor:
    """``n`` seeded uint8 noise images of ``shape`` (C, H, W)."""
    generator = torch.Generator().manual_seed(seed)
    if kind == "uniform-noise":
        return torch.randint(0, 256, (n, *shape), generator=generator, dtype=torch.uint8)
    pixels = GAUSSIAN_MEAN + GAUSSIAN_STD * torch.randn((n, *shape), generator=generator)
    return pixels.round().clamp(0, 255).to(torch.uint8)


def luminance(images: torch.Tensor) -> torch.Tensor:
    """RGB uint8 (N, 3, H, W) -> grey (N, 1, H, W) with PIL's integer ``L`` conversion."""
    r, g, b = images.to(torch.int64).unbind(1)
    return ((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16).to(torch.uint8)[:, None]


def match_shape(images: torch.Tensor, channels: int, size: tuple[int, int], what: str) -> tuple[
    torch.Tensor, list[str]
]:  # fmt: skip
    """uint8 images converted to ``channels`` and ``size``, with a note per conversion."""
    notes = []
    have = images.shape[1]
    if have != channels:
        if have == 1 and channels == 3:
            images = images.repeat(1, 3, 1, 1)
        elif have == 3 and channels == 1:
            images = luminance(images)
        else:
            raise DataError(f"{what} images have {have} channels; the model takes {channels}")
        notes.append(f"{what}: {_channels(have)} images converted to {_channels(channels)} for the model")
    if tuple(images.shape[2:]) != tuple(size):
        old = "x".join(map(str, images.shape[2:]))
        x = torch.nn.functional.interpolate(images.float(), size=tuple(size), mode="bilinear",
                                            align_corners=False, antialias=True)  # fmt: skip
        images = x.round().clamp(0, 255).to(torch.uint8)
        notes.append(f"{what}: resized bilinearly from {old} to {size[0]}x{size[1]} for the model")
    return images, notes


def _channels(n: int) -> str:
    return {1: "grayscale", 3: "RGB"}.get(n, f"{n}-channel")


def folder_images(folder: Path, channels: int, size: tuple[int, int]) -> tuple[torch.Tensor, list[str]]:
    """Every image under ``folder`` decoded like an image-folder dataset (PIL conversion to the
    model's mode and size), with notes counting the images that needed converting."""
    files = find_images(folder)
    if not files:
        raise DataError(f"--ood {folder}: no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) in it")
    seen = {"mode": 0, "size": 0}

    def check(path: Path, img: PILImage) -> None:
        grey = img.mode in _GREY_MODES
        seen["mode"] += grey != (channels == 1)
        seen["size"] += img.size != (size[1], size[0])

    images, _ = decode_images([(path, 0) for path in files], channels, size, check)
    notes = []
    if seen["mode"]:
        notes.append(f"{folder.name}: {seen['mode']} of {len(files)} images converted to"
                     f" {_channels(channels)} for the model")  # fmt: skip
    if seen["size"]:
        notes.append(f"{folder.name}: {seen['size']} of {len(files)} images resized bilinearly"
                     f" to {size[0]}x{size[1]} for the model")  # fmt: skip
    return images, notes


def config_datamodule(spec: OODSpec) -> Any:
    """The datamodule the config's ``data`` section describes (instantiated, not set up), read
    as training reads it: the config's bases first, the same parser (softcal.runs.run_config)."""
    from softcal.runs.run_config import config_datamodule as datamodule_of

    assert spec.path is not None
    where = f"--ood {spec.text}" + ("" if str(spec.path) == spec.text else f" ({spec.path})")
    return datamodule_of(config_chain(spec.path), where)


def load_ood_set(spec: OODSpec, channels: int, size: tuple[int, int], n_noise: int) -> OODSet:
    """The images ``spec`` names, in the model's shape."""
    if spec.kind == "noise":
        return OODSet(spec.text, spec.text, noise_images(spec.text, n_noise, (channels, *size)))
    if spec.kind == "folder":
        assert spec.path is not None
        images, notes = folder_images(spec.path, channels, size)
        return OODSet(spec.path.name or str(spec.path), spec.text, images, notes)
    datamodule = config_datamodule(spec)
    datamodule.prepare_data()  # like training: torchvision's download when files are missing
    datamodule.setup("test")
    images, _ = datamodule.splits["test"]
    images, notes = match_shape(images, channels, size, f"{datamodule.name} test")
    return OODSet(f"{datamodule.name} test", spec.text, images, notes)
