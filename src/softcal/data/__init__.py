"""Datasets as uint8 tensors in memory, batched and augmented on the training device.

Configs name the datamodules by these paths (``softcal.data.MNISTDataModule``), so every one is
re-exported here, whatever module it lives in. The re-exports are resolved on first use: the
Lightning-free modules (``readers``, ``augment``, ``loader``) can then be imported without
Lightning, which lets ``predict`` report a wrong path before paying for that import.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from softcal.data.cifar import CIFAR10DataModule, CIFAR100DataModule
    from softcal.data.datamodule import ClassificationDataModule, default_data_root
    from softcal.data.folder import ImageFolderDataModule
    from softcal.data.loader import Batch, TensorBatchLoader
    from softcal.data.mnist import FashionMNISTDataModule, MNISTDataModule

#: where each re-exported name lives
_HOMES = {
    "Batch": "loader",
    "TensorBatchLoader": "loader",
    "ClassificationDataModule": "datamodule",
    "default_data_root": "datamodule",
    "MNISTDataModule": "mnist",
    "FashionMNISTDataModule": "mnist",
    "CIFAR10DataModule": "cifar",
    "CIFAR100DataModule": "cifar",
    "ImageFolderDataModule": "folder",
}
#: the modules that define datamodules: imported together, so that LightningCLI, which finds
#: ``--data MNISTDataModule`` among the imported subclasses, sees every one of them
_DATAMODULE_HOMES = ("datamodule", "mnist", "cifar", "folder")

__all__ = [
    "Batch",
    "CIFAR10DataModule",
    "CIFAR100DataModule",
    "ClassificationDataModule",
    "FashionMNISTDataModule",
    "ImageFolderDataModule",
    "MNISTDataModule",
    "TensorBatchLoader",
    "default_data_root",
]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    for module in _DATAMODULE_HOMES if home in _DATAMODULE_HOMES else (home,):
        import_module(f"{__name__}.{module}")
    value = getattr(import_module(f"{__name__}.{home}"), name)
    globals()[name] = value  # later look-ups skip this function
    return value
