"""The data path alone, no model: softcal's in-memory tensors vs a PIL pipeline in DataLoader
workers, on MNIST and CIFAR-sized images, and the CIFAR data path's peak memory."""

from __future__ import annotations

import multiprocessing
import resource
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from softcal_bench.machine import MIB, status_mib, tensor_mib
from softcal_bench.recipe import WORKERS, Recipe
from softcal.data import (
    CIFAR10DataModule,
    ClassificationDataModule,
    ImageFolderDataModule,
    MNISTDataModule,
)
from softcal.synthetic import write_cifar_dataset, write_image_folder

CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


# --------------------------------------------------------------------------- data path alone


@dataclass
class DataPathResult:
    name: str
    samples: int
    seconds: float
    load_s: float | None = None  # one-off: reading files into tensors / dataset objects
    tensor_mib: float | None = None

    @property
    def per_s(self) -> float:
        return self.samples / self.seconds if self.seconds > 0 else float("nan")


def softcal_epoch(dm: ClassificationDataModule, max_batches: int | None = None) -> tuple[int, float]:
    """One training epoch of softcal's data path: gather + augment + normalise, no model."""
    loader = dm.train_dataloader()
    augment = dm.crop_padding > 0 or dm.hflip
    start, samples = time.perf_counter(), 0
    for b, (images, labels) in enumerate(loader):
        if max_batches is not None and b == max_batches:
            break
        # One generator per batch, as on_after_batch_transfer seeds it during training.
        generator = torch.Generator().manual_seed(b) if augment else None
        dm.preprocess(images, train=True, generator=generator)
        samples += len(labels)
    return samples, time.perf_counter() - start


def dataloader_epoch(dataset: Any, batch_size: int, max_batches: int | None = None) -> tuple[int, float]:
    """One epoch of a map-style dataset through a shuffling DataLoader with worker processes;
    the workers' start-up is part of every epoch, as it is with the DataLoader's defaults."""
    from torch.utils.data import DataLoader

    start, samples = time.perf_counter(), 0
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=WORKERS)
    for b, (_, labels) in enumerate(loader):
        if max_batches is not None and b == max_batches:
            break
        samples += len(labels)
    del loader
    return samples, time.perf_counter() - start


def pil_train_transform(mean: Sequence[float], std: Sequence[float], crop: bool) -> Any:
    from torchvision import transforms

    steps = [transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip()] if crop else []
    return transforms.Compose([*steps, transforms.ToTensor(), transforms.Normalize(mean, std)])


def _unchecked_cifar10() -> type:
    """torchvision's CIFAR10 without its MD5 check, so it reads generated pickles as well."""
    from torchvision.datasets import CIFAR10

    class UncheckedCIFAR10(CIFAR10):
        def _check_integrity(self) -> bool:
            return True

        def _load_meta(self) -> None:
            self.classes = list(CIFAR10DataModule._default_names)
            self.class_to_idx = {c: i for i, c in enumerate(self.classes)}

    return UncheckedCIFAR10


def cifar_memory_probe(root: str, batch_size: int, max_batches: int | None) -> dict[str, float]:
    """Runs in a fresh process: peak RSS of reading CIFAR pickles and one augmented epoch."""
    baseline = status_mib("VmRSS") or 0.0  # torch and softcal imported, nothing read yet
    dm = CIFAR10DataModule(root=root, batch_size=batch_size, download=False,
                           val_size=0.1)  # fmt: skip
    dm.setup("fit")
    samples, seconds = softcal_epoch(dm, max_batches)
    # VmHWM, not ru_maxrss: the latter starts at the spawning parent's peak (see pipelines._MEASURE).
    peak = status_mib("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    tensors = tensor_mib(*(t for split in dm.splits.values() for t in split))
    return {"baseline_mib": baseline, "peak_mib": peak, "tensor_mib": tensors,
            "samples": samples, "seconds": seconds}  # fmt: skip


def run_memory_probe(root: Path, batch_size: int, max_batches: int | None) -> dict[str, float]:
    # spawn, not fork: a fresh interpreter, so the peak is the data path's and nothing else's.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        return pool.submit(cifar_memory_probe, str(root), batch_size, max_batches).result()


def benchmark_data_path(
    kind: str, data_root: Path, work: Path, tiny: bool
) -> tuple[list[DataPathResult], dict[str, float] | None]:
    """softcal's TensorBatchLoader + preprocess(train=True) vs a PIL pipeline in DataLoader
    workers, CIFAR-sized images with crop (padding 4) and flip, batch 256."""
    from torchvision import datasets

    batch_size, max_batches = 256, (3 if tiny else None)
    results: list[DataPathResult] = []
    if kind == "synthetic-cifar":
        root = work / "synthetic-cifar"
        n_train = 512 if tiny else 50_000
        write_cifar_dataset(root, 10, n_train=n_train, n_test=100)
        probe = run_memory_probe(root, batch_size, max_batches)
        start = time.perf_counter()
        dm: ClassificationDataModule = CIFAR10DataModule(root=str(root), batch_size=batch_size,
                                                         download=False, val_size=0.1)  # fmt: skip
        dm.setup("fit")
        load_s = time.perf_counter() - start
        start = time.perf_counter()
        pil_set = _unchecked_cifar10()(
            str(root),
            train=True,
            download=False,
            transform=pil_train_transform(CIFAR_MEAN, CIFAR_STD, True),
        )
        pil_load_s = time.perf_counter() - start
        pil_name = "torchvision CIFAR10 + PIL crop/flip/ToTensor/Normalize, DataLoader(2)"
        pil_mib = (pil_set.data.nbytes + 8 * len(pil_set.targets)) / MIB
    else:  # cifar10-sample: real CIFAR-10 PNGs in class folders
        folder = (data_root / "cifar10-sample").resolve()
        if tiny:
            folder = write_image_folder(work / "cifar10-sample", tuple(f"c{i}" for i in range(10)),
                                        n_train=300, n_test=20)  # fmt: skip
        cache = work / "cache"

        def folder_dm() -> ImageFolderDataModule:
            return ImageFolderDataModule(folder=str(folder), cache_dir=str(cache),
                                         batch_size=batch_size, mean=CIFAR_MEAN, std=CIFAR_STD,
                                         download=False)  # fmt: skip

        start = time.perf_counter()
        folder_dm().setup("fit")  # first load: decodes every PNG and writes the cache
        cold_s = time.perf_counter() - start
        start = time.perf_counter()
        dm = folder_dm()
        dm.setup("fit")  # what every later run does: one cached tensor file
        load_s = time.perf_counter() - start
        results.append(DataPathResult("softcal first load (decode PNGs, write cache)", 0, 0.0,
                                      load_s=cold_s))  # fmt: skip
        start = time.perf_counter()
        pil_set = datasets.ImageFolder(
            str(folder / "train"), transform=pil_train_transform(CIFAR_MEAN, CIFAR_STD, True)
        )
        pil_load_s = time.perf_counter() - start
        pil_name = "torchvision ImageFolder + PIL crop/flip/ToTensor/Normalize, DataLoader(2)"
        pil_mib = None
        probe = None
    samples, seconds = softcal_epoch(dm, max_batches)
    mib = tensor_mib(*(t for split in dm.splits.values() for t in split))
    results.insert(0, DataPathResult("softcal TensorBatchLoader + preprocess(train=True)",
                                     samples, seconds, load_s, mib))  # fmt: skip
    samples, seconds = dataloader_epoch(pil_set, batch_size, max_batches)
    results.append(DataPathResult(pil_name, samples, seconds, pil_load_s, pil_mib))
    return results, probe


def mnist_data_path(data_root: Path, recipe: Recipe) -> list[DataPathResult]:
    """MNIST's data path alone: softcal's (no augmentation for digits) vs the tutorial's."""
    from torchvision import datasets

    start = time.perf_counter()
    dm = MNISTDataModule(root=str(data_root), batch_size=recipe.batch_size,
                         val_size=recipe.val_size, download=False)  # fmt: skip
    dm.setup("fit")
    load_s = time.perf_counter() - start
    samples, seconds = softcal_epoch(dm, recipe.max_batches)
    ours = DataPathResult(f"softcal TensorBatchLoader + preprocess, batch {recipe.batch_size}",
                          samples, seconds, load_s,
                          tensor_mib(*(t for s in dm.splits.values() for t in s)))  # fmt: skip
    start = time.perf_counter()
    pil_set = datasets.MNIST(
        str(data_root),
        train=True,
        download=False,
        transform=pil_train_transform((0.1307,), (0.3081,), crop=False),
    )
    pil_load_s = time.perf_counter() - start
    samples, seconds = dataloader_epoch(pil_set, 256, recipe.max_batches)
    theirs = DataPathResult("torchvision MNIST + PIL ToTensor/Normalize, DataLoader(2), batch 256",
                            samples, seconds, pil_load_s,
                            tensor_mib(pil_set.data, pil_set.targets))  # fmt: skip
    return [ours, theirs]
