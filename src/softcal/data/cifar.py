"""CIFAR-10 and CIFAR-100: the 'python version' pickle batches, as torchvision extracts them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from softcal.data.datamodule import ClassificationDataModule
from softcal.data.formats import read_cifar_batches, read_cifar_names
from softcal.data.loader import Batch


class CIFARDataModule(ClassificationDataModule):
    """The CIFAR family: pickles in ``root/<folder>``; crop + flip augmentation by default."""

    image_size = (32, 32)
    folder = "cifar-10-batches-py"
    train_files: tuple[str, ...] = ()
    test_files: tuple[str, ...] = ()
    meta_file, names_key, label_key = "batches.meta", "label_names", "labels"
    #: class names used when the meta file is absent (the data files still load without it)
    _default_names: tuple[str, ...] = ()

    def __init__(self, *args: Any, crop_padding: int = 4, hflip: bool = True, **kwargs: Any):
        super().__init__(*args, crop_padding=crop_padding, hflip=hflip, **kwargs)

    @property
    def class_names(self) -> list[str]:
        meta = self.files_dir() / self.meta_file
        if meta.is_file():
            return read_cifar_names(meta, self.names_key)
        return list(self._default_names)

    def files_dir(self) -> Path:
        return self.root / self.folder

    def _paths(self, train: bool) -> list[Path]:
        return [self.files_dir() / f for f in (self.train_files if train else self.test_files)]

    def missing_files(self, train: bool) -> list[str]:
        return [p.name for p in self._paths(train) if not p.is_file()]

    def read_split(self, train: bool) -> Batch:
        self.check_files(train)
        return read_cifar_batches(self._paths(train), self.label_key)


class CIFAR10DataModule(CIFARDataModule):
    """CIFAR-10: 50,000 train and 10,000 test colour images, 32x32, 10 classes."""

    name = "CIFAR10"
    folder = "cifar-10-batches-py"
    torchvision_name = "CIFAR10"
    train_files = tuple(f"data_batch_{i}" for i in range(1, 6))
    test_files = ("test_batch",)
    mean, std = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
    _default_names = (
        "airplane", "automobile", "bird", "cat", "deer",
        "dog", "frog", "horse", "ship", "truck",
    )  # fmt: skip


class CIFAR100DataModule(CIFARDataModule):
    """CIFAR-100: as CIFAR-10 with 100 fine-grained classes."""

    name = "CIFAR100"
    folder = "cifar-100-python"
    torchvision_name = "CIFAR100"
    train_files, test_files = ("train",), ("test",)
    meta_file, names_key, label_key = "meta", "fine_label_names", "fine_labels"
    mean, std = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)
    _default_names = tuple(f"class_{i:02d}" for i in range(100))
