"""The data path alone, no model: softcal's in-memory uint8 tensors, batched and augmented per
batch, vs the tutorial way (one PIL image per sample, transforms in two DataLoader workers), and
the peak memory of softcal's data path in a fresh process."""

from __future__ import annotations

import importlib
import multiprocessing
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from softcal.data import ClassificationDataModule, ImageFolderDataModule
from softcal_bench.machine import rss_mib, tensor_mib
from softcal_bench.overlays import merged

WORKERS = 2  # the tutorial DataLoader's worker count


def datamodule_from_config(configs: Sequence[Path], overrides: dict[str, Any]) -> ClassificationDataModule:
    """The ``data`` section of the configs (a base and its overlays), built without the CLI (so
    without a model in memory)."""
    data = merged(configs)["data"]
    module, name = data["class_path"].rsplit(".", 1)
    cls = getattr(importlib.import_module(module), name)
    return cls(**{**data.get("init_args", {}), "download": False, **overrides})


class PILDataset(torch.utils.data.Dataset):
    """What torchvision's MNIST and CIFAR datasets do: a uint8 array in memory, one PIL image per
    sample, the transform applied per sample."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform: Any) -> None:
        array = np.ascontiguousarray(images.permute(0, 2, 3, 1).numpy())  # N, H, W, C
        self.data = array[..., 0] if array.shape[-1] == 1 else array
        self.targets, self.transform = labels.tolist(), transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        from PIL import Image

        return self.transform(Image.fromarray(self.data[i])), self.targets[i]


def tutorial_dataset(dm: ClassificationDataModule) -> torch.utils.data.Dataset:
    """The same training images and augmentation the PIL way; image folders decode their files."""
    from torchvision import datasets, transforms

    pad = "reflect" if getattr(dm, "crop_pad_mode", "zeros") == "reflect" else "constant"
    crop = transforms.RandomCrop(dm.image_size, dm.crop_padding, padding_mode=pad)
    steps = [crop] if dm.crop_padding else []
    steps += [transforms.RandomHorizontalFlip()] if dm.hflip else []
    transform = transforms.Compose([*steps, transforms.ToTensor(), transforms.Normalize(dm.mean, dm.std)])
    if isinstance(dm, ImageFolderDataModule):
        return datasets.ImageFolder(str(dm.folder / "train"), transform=transform)
    return PILDataset(*dm.splits["train"], transform)


def softcal_epoch(dm: ClassificationDataModule) -> tuple[int, float]:
    """One training epoch of softcal's data path: gather + augment + normalise, no model."""
    augment = dm.crop_padding > 0 or dm.hflip
    start, samples = time.perf_counter(), 0
    for b, (images, labels) in enumerate(dm.train_dataloader()):
        # One generator per batch, as on_after_batch_transfer seeds it during training.
        dm.preprocess(images, train=True, generator=torch.Generator().manual_seed(b) if augment else None)
        samples += len(labels)
    return samples, time.perf_counter() - start


def tutorial_epoch(dataset: torch.utils.data.Dataset, batch_size: int) -> tuple[int, float]:
    """One epoch through a shuffling DataLoader with worker processes, their start-up included
    as it is in every epoch with the DataLoader's defaults."""
    start, samples = time.perf_counter(), 0
    for _, labels in torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True,
                                                 num_workers=WORKERS):  # fmt: skip
        samples += len(labels)
    return samples, time.perf_counter() - start


@dataclass
class DataPathRow:
    name: str
    samples: int
    seconds: float
    load_s: str  # one-off: files into tensors / dataset objects
    tensor_mib: float | None = None

    @property
    def per_s(self) -> float:
        return self.samples / self.seconds if self.seconds > 0 else float("nan")


def timed_setup(configs: Sequence[Path], overrides: dict[str, Any]) -> tuple[ClassificationDataModule, float]:
    start = time.perf_counter()
    dm = datamodule_from_config(configs, overrides)
    dm.setup("fit")
    return dm, time.perf_counter() - start


def measure_data_path(configs: Sequence[Path], overrides: dict[str, Any]) -> tuple[list[DataPathRow], dict]:
    """Both data paths over the config's training split, batch size and augmentation; then the
    peak memory of softcal's in a fresh process."""
    _, first_s = timed_setup(configs, overrides)  # image folders: decode, or read a warm cache
    dm, load_s = timed_setup(configs, overrides)  # what every later run does
    ours = DataPathRow(f"softcal TensorBatchLoader + preprocess(train=True), batch {dm.batch_size}",
                       *softcal_epoch(dm), f"{first_s:.2f} first, {load_s:.2f} later",
                       tensor_mib(*(t for split in dm.splits.values() for t in split)))  # fmt: skip
    start = time.perf_counter()
    dataset = tutorial_dataset(dm)
    load_s = time.perf_counter() - start
    kind = "PIL image per sample" if isinstance(dataset, PILDataset) else "torchvision ImageFolder"
    theirs = DataPathRow(f"{kind} + transforms, DataLoader({WORKERS})",
                         *tutorial_epoch(dataset, dm.batch_size), f"{load_s:.2f}")  # fmt: skip
    # spawn, not fork: a fresh interpreter, so the peak is the data path's and nothing else's.
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        probe = pool.submit(memory_probe, [str(c) for c in configs], overrides).result()
    return [ours, theirs], probe


def memory_probe(configs: list[str], overrides: dict[str, Any]) -> dict[str, float]:
    """In a fresh process: RSS after imports, then the peak over setup and one augmented epoch."""
    baseline = rss_mib() or 0.0  # torch and softcal imported, nothing read yet
    dm = datamodule_from_config([Path(c) for c in configs], overrides)
    dm.setup("fit")
    softcal_epoch(dm)
    return {"baseline_mib": baseline, "peak_mib": rss_mib("VmHWM") or float("nan"),
            "tensor_mib": tensor_mib(*(t for split in dm.splits.values() for t in split))}  # fmt: skip
