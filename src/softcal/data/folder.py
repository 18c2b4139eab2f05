"""Any folder of images, one sub-folder per class, decoded once and cached as a tensor file."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch

from softcal.data.datamodule import ClassificationDataModule
from softcal.data.loader import Batch
from softcal.data.readers import list_class_folders, load_image_folder
from softcal.errors import DataError


class ImageFolderDataModule(ClassificationDataModule):
    """Any folder of images: ``folder/train/<class>/*.png`` and ``folder/test/<class>/*.png``.

    Images are converted to ``channels`` (1: grayscale, 3: RGB) and resized to ``image_size``
    once, then cached as one tensor file keyed by the files' content. ``mean: auto`` and
    ``std: auto`` normalise with the training folder's own statistics
    (:func:`folder_statistics`); training writes the numbers into the run's config.yaml, so
    a reopened run needs no data to normalise as training did.
    """

    name = "ImageFolder"

    def __init__(
        self,
        folder: str = "cifar10-sample",
        image_size: int = 32,
        channels: int = 3,
        mean: Sequence[float] | Literal["auto"] | None = None,
        std: Sequence[float] | Literal["auto"] | None = None,
        cache_dir: str | None = None,
        val_size: float = 0.1,
        crop_padding: int = 4,
        hflip: bool = True,
        **kwargs: Any,
    ) -> None:
        """
        Args:
            folder: the folder with ``train/`` and ``test/``; a relative path is taken
                relative to ``root``.
            image_size: images are resized to this square size.
            channels: 1 for grayscale, 3 for colour.
            mean, std: per-channel normalisation in [0, 1] units (default 0.5 and 0.25);
                ``auto``: the training folder's per-channel mean and standard deviation.
            cache_dir: where decoded tensors are cached (default ``$SOFTCAL_CACHE_DIR`` or
                ``~/.cache/softcal``).
        """
        self.image_size = (image_size, image_size)  # before __init__, which checks the crop fits
        super().__init__(val_size=val_size, crop_padding=crop_padding, hflip=hflip, **kwargs)
        folder_path = Path(folder).expanduser()
        self.folder = folder_path if folder_path.is_absolute() else self.root / folder_path
        self.name = self.folder.name or "ImageFolder"
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self._classes: list[str] | None = None
        if mean == "auto" or std == "auto":  # the training images, decoded (and cached) once
            train = load_image_folder(self.folder / "train", self.class_folders, channels,
                                      self.image_size, self.cache_dir)  # fmt: skip
            measured = folder_statistics(train[0])
            mean = measured[0] if mean == "auto" else mean
            std = measured[1] if std == "auto" else std
        self.mean = tuple(mean) if mean is not None else (0.5,) * channels
        self.std = tuple(std) if std is not None else (0.25,) * channels
        if len(self.mean) != channels or len(self.std) != channels:
            raise DataError(f"data mean/std need {channels} values each (one per channel)")

    @property
    def class_folders(self) -> list[str]:
        """The class sub-folders' names as the filesystem gives them (maybe not valid UTF-8)."""
        if self._classes is None:
            self._classes = list_class_folders(self.folder / "train")
        return self._classes

    @property
    def class_names(self) -> list[str]:
        """The class folders' names as text: bytes that are not UTF-8 show as ``\\xNN``, so
        labels print, plot and go into config files (a raw name would break all three)."""
        return [os.fsencode(name).decode("utf-8", errors="backslashreplace") for name in self.class_folders]

    def read_split(self, train: bool) -> Batch:
        split_dir = self.folder / ("train" if train else "test")
        return load_image_folder(
            split_dir, self.class_folders, self.in_channels, self.image_size, self.cache_dir
        )


def folder_statistics(images: torch.Tensor, chunk: int = 4096) -> tuple[list[float], list[float]]:
    """Per-channel mean and standard deviation of uint8 images (N, C, H, W) in [0, 1] units,
    rounded to 4 decimals (as a config file holds them, so training and a reopened run use the
    same numbers), summed in float64 a chunk at a time (a float copy of every image at once
    would double the memory of a large folder). A channel without spread gets 0.0001, not 0."""
    channels = images.shape[1]
    total = torch.zeros(channels, dtype=torch.float64)
    squares = torch.zeros(channels, dtype=torch.float64)
    for part in images.split(chunk):
        values = part.to(torch.float64).div_(255.0).transpose(0, 1).reshape(channels, -1)
        total += values.sum(dim=1)
        squares += values.square().sum(dim=1)
    count = max(images.numel() // max(channels, 1), 1)
    mean = total / count
    std = (squares / count - mean.square()).clamp_min(0).sqrt()
    return [round(float(m), 4) for m in mean], [max(round(float(s), 4), 1e-4) for s in std]
