"""Datamodules: every dataset decoded once into uint8 tensors held in memory.

One base class does the common work - the seeded train/val split, batching straight from tensors,
normalisation and augmentation per batch on the training device. Each dataset subclass only says
where its files are, how to read them and what its classes are called. The official test set is
read only when testing; the validation set is carved from the training set.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lightning as L
import torch

from softcal.data.augment import augment_batch, normalize
from softcal.errors import DataError
from softcal.data.formats import (
    find_with_gz,
    list_class_folders,
    load_image_folder,
    read_cifar_batches,
    read_cifar_names,
    read_idx,
)

Batch = tuple[torch.Tensor, torch.Tensor]


def default_data_root() -> Path:
    """``$SOFTCAL_DATA_ROOT`` when set (e.g. CI points it at ../shared/data), else ``data/``."""
    return Path(os.environ.get("SOFTCAL_DATA_ROOT") or "data")


@contextmanager
def batch_sized_cpu_ops(device: torch.device) -> Iterator[None]:
    """Run the enclosed CPU ops on one intra-op thread.

    A batch is a few MB: splitting each op over threads saves little, and on a CPU shared with
    other processes every parallel op waits for its slowest thread - measured on 2 busy cores,
    the data path ran 3-9x faster on one thread than on two. GPU work is left alone.
    """
    threads = torch.get_num_threads()
    if device.type != "cpu" or threads == 1:
        yield
        return
    torch.set_num_threads(1)  # ~1 us to switch, per batch
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class TensorBatchLoader:
    """Batches sliced from in-memory tensors: one gather per batch, no per-sample Python.

    * Shuffling draws a permutation from ``seed`` and the epoch number, so the order of every
      epoch is known in advance - a resumed run replays exactly the batches it has not seen.
    * Under multi-process training each process takes every ``world_size``-th index. For
      training the permutation is cut to a multiple of ``world_size`` (every process must take
      the same number of steps); for evaluation nothing is dropped or duplicated, so metrics
      summed over processes equal single-process metrics.
    * ``state_dict``/``load_state_dict`` make it resumable mid-epoch; the datamodule's own
      state carries them through checkpoints (see ``ClassificationDataModule.state_dict``).
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        batch_size: int,
        shuffle: bool,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        pin_memory: bool = False,
        device: torch.device | None = None,
    ) -> None:
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images, self.labels = images, labels
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.rank, self.world_size = rank, world_size
        self.pin_memory = pin_memory and torch.cuda.is_available() and device is None
        self.device = device
        self.epoch = 0  # the epoch the next __iter__ serves
        self._skip = 0  # batches of that epoch already consumed before a restart
        self._serving: tuple[int, int] = (0, 0)  # (epoch, batches consumed) of the current pass

    def _indices(self, epoch: int) -> torch.Tensor:
        n = len(self.labels)
        if self.shuffle:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            order = torch.randperm(n, generator=gen)
            order = order[: n - n % self.world_size]  # equal step counts on every process
        else:
            order = torch.arange(n)
        return order[self.rank :: self.world_size]

    def __len__(self) -> int:
        n = len(self._indices(0)) if self.world_size > 1 else len(self.labels)
        if self.shuffle:  # training drops the ragged last batch: BatchNorm dislikes tiny batches
            return max(1, n // self.batch_size)
        return -(-n // self.batch_size)

    def __iter__(self) -> Iterator[Batch]:
        epoch, start = self.epoch, self._skip
        self.epoch, self._skip = epoch + 1, 0
        self._serving = (epoch, start)
        indices = self._indices(epoch)
        if self.device is not None:
            self.images, self.labels = self.images.to(self.device), self.labels.to(self.device)
            indices = indices.to(self.device)
        for b in range(start, len(self)):
            index = indices[b * self.batch_size : (b + 1) * self.batch_size]
            with batch_sized_cpu_ops(self.images.device):
                # index_select copies whole rows: ~5x faster than x[index]'s element gather.
                x, y = self.images.index_select(0, index), self.labels.index_select(0, index)
            if self.pin_memory:
                x, y = x.pin_memory(), y.pin_memory()
            yield x, y

    def mark_consumed(self) -> tuple[int, int]:
        """Record that the model took one more batch; returns its (epoch, index in epoch).

        Called when a batch reaches the model, not when it is fetched: Lightning fetches one
        batch ahead, and a checkpoint must not count the batch it has not trained on.
        """
        epoch, consumed = self._serving
        self._serving = (epoch, consumed + 1)
        return epoch, consumed

    def state_dict(self) -> dict[str, int]:
        epoch, consumed = self._serving
        return {"epoch": epoch, "consumed": consumed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        epoch, consumed = int(state["epoch"]), int(state["consumed"])
        if consumed >= len(self):  # saved at the end of an epoch: start the next one
            epoch, consumed = epoch + 1, 0
        self.epoch, self._skip = epoch, consumed
        self._serving = (epoch, consumed)


class ClassificationDataModule(L.LightningDataModule):
    """The shared machinery; subclasses implement :meth:`read_split` and set the class facts."""

    #: human-readable dataset name, used for run directories and messages
    name: str = "dataset"
    #: per-channel mean and std of the training images, in [0, 1] units
    mean: tuple[float, ...] = (0.5,)
    std: tuple[float, ...] = (0.25,)

    def __init__(
        self,
        root: str | None = None,
        batch_size: int = 128,
        eval_batch_size: int = 1000,
        val_size: float = 5000,
        split_seed: int = 0,
        crop_padding: int = 0,
        hflip: bool = False,
        download: bool = True,
        pin_memory: bool = True,
        device_resident: bool = False,
    ) -> None:
        """
        Args:
            root: folder holding the dataset; default ``$SOFTCAL_DATA_ROOT`` or ``data/``.
            batch_size: training batch size (per process).
            eval_batch_size: batch size for validation, test and prediction.
            val_size: images held out of the training set for validation: a count, or a
                fraction when below 1.
            split_seed: seed of the train/val split and of the shuffling order (the CLI links
                it to ``seed_everything``).
            crop_padding: random-crop augmentation: pad by this many pixels, crop back (0: off).
            hflip: random horizontal flips (for natural images, not digits).
            download: try torchvision's download when the files are missing.
            pin_memory: pin batches in page-locked memory for faster copies to a GPU.
            device_resident: keep the whole uint8 dataset on the GPU (small datasets only):
                batches are gathered there and nothing crosses the bus per step.
        """
        super().__init__()
        self.root = Path(root) if root else default_data_root()
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.val_size, self.split_seed = val_size, split_seed
        self.crop_padding, self.hflip = crop_padding, hflip
        self.download, self.pin_memory = download, pin_memory
        self.device_resident = device_resident
        self.splits: dict[str, Batch] = {}
        self._train_loader: TensorBatchLoader | None = None
        self._resume_state: dict[str, int] | None = None
        self._stats: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    # ------------------------------------------------------------------ facts for the model
    @property
    def class_names(self) -> list[str]:
        raise NotImplementedError

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def in_channels(self) -> int:
        return len(self.mean)

    image_size: tuple[int, int] = (32, 32)

    # ------------------------------------------------------------------ reading
    def read_split(self, train: bool) -> Batch:
        """Return (uint8 images (N, C, H, W), int64 labels) of the official train or test set."""
        raise NotImplementedError

    def fetch(self) -> None:
        """Download the dataset if it is missing (only called where ``download`` is on)."""

    def prepare_data(self) -> None:
        if self.download:
            self.fetch()

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit", "validate") and "train" not in self.splits:
            images, labels = self._checked(*self.read_split(train=True), "training")
            n_val = self._val_count(len(labels))
            order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(self.split_seed))
            val, train = order[:n_val], order[n_val:]
            self.splits["train"] = (images[train], labels[train])
            self.splits["val"] = (images[val], labels[val])
        if stage in (None, "test", "predict") and "test" not in self.splits:
            self.splits["test"] = self._checked(*self.read_split(train=False), "test")

    def _val_count(self, n: int) -> int:
        n_val = int(round(self.val_size * n)) if self.val_size < 1 else int(self.val_size)
        if not 0 < n_val < n:
            raise DataError(
                f"data.val_size={self.val_size} leaves no training or no validation images out of"
                f" {n}; use a count between 1 and {n - 1} or a fraction like 0.1"
            )
        return n_val

    def _checked(self, images: torch.Tensor, labels: torch.Tensor, what: str) -> Batch:
        expected = (self.in_channels, *self.image_size)
        if images.dtype != torch.uint8 or tuple(images.shape[1:]) != expected:
            raise DataError(
                f"{self.name} {what} images have shape {tuple(images.shape[1:])} and dtype"
                f" {images.dtype}, expected {expected} uint8"
            )
        if len(labels) and (labels.min() < 0 or labels.max() >= self.num_classes):
            raise DataError(
                f"{self.name} {what} labels run {labels.min()}..{labels.max()}, expected"
                f" 0..{self.num_classes - 1}; the label file does not match the images"
            )
        return images, labels

    # ------------------------------------------------------------------ loaders
    def _loader(self, split: str, train: bool) -> TensorBatchLoader:
        if split not in self.splits:
            self.setup("fit" if split != "test" else "test")
        images, labels = self.splits[split]
        trainer = self.trainer
        device = None
        if self.device_resident and trainer is not None and trainer.strategy.root_device.type != "cpu":
            device = trainer.strategy.root_device
        return TensorBatchLoader(
            images,
            labels,
            self.batch_size if train else self.eval_batch_size,
            shuffle=train,
            seed=self.split_seed,
            rank=trainer.global_rank if trainer is not None else 0,
            world_size=trainer.world_size if trainer is not None else 1,
            pin_memory=self.pin_memory,
            device=device,
        )

    def train_dataloader(self) -> TensorBatchLoader:
        self._train_loader = self._loader("train", train=True)
        if self._resume_state is not None:
            self._train_loader.load_state_dict(self._resume_state)
        return self._train_loader

    # Lightning saves a datamodule's state in every checkpoint and restores it before it asks
    # for the train loader. That is the reliable way to resume the loader mid-epoch: Lightning's
    # own loader-state restore comes too late when ``estimated_stepping_batches`` (used by the
    # LR schedule) has already built the training iterator.
    def state_dict(self) -> dict[str, Any]:
        return {"train_loader": self._train_loader.state_dict()} if self._train_loader else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._resume_state = state_dict.get("train_loader")

    def val_dataloader(self) -> TensorBatchLoader:
        return self._loader("val", train=False)

    def test_dataloader(self) -> TensorBatchLoader:
        return self._loader("test", train=False)

    def predict_dataloader(self) -> TensorBatchLoader:
        return self._loader("test", train=False)

    # ------------------------------------------------------------------ per-batch transforms
    def preprocess(
        self, images: torch.Tensor, train: bool = False, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """uint8 batch -> normalised float batch, augmented when ``train``. Used by training,
        evaluation, prediction and export alike, so all of them see identical inputs."""
        with batch_sized_cpu_ops(images.device):
            if train and (self.crop_padding > 0 or self.hflip):
                images = augment_batch(images, self.crop_padding, self.hflip, generator)
            return normalize(images, *self._stats_on(images.device))

    def _stats_on(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """mean and std as tensors on ``device``, made once: building them from Python floats
        for every batch would copy host-to-GPU, and wait for it, at each step."""
        if device not in self._stats:
            self._stats[device] = (torch.tensor(self.mean, device=device),
                                   torch.tensor(self.std, device=device))  # fmt: skip
        return self._stats[device]

    def on_after_batch_transfer(self, batch: Batch, dataloader_idx: int) -> Batch:
        images, labels = batch
        if images.dtype != torch.uint8:  # already preprocessed (e.g. by a custom loader)
            return images, labels
        trainer = self.trainer
        training = trainer is not None and trainer.training
        generator = None
        if training and self._train_loader is not None:
            epoch, index = self._train_loader.mark_consumed()
            if self.crop_padding > 0 or self.hflip:
                # A seed per (run seed, process, epoch, batch): resumable and distinct per rank.
                generator = torch.Generator(device=images.device)
                generator.manual_seed(hash((self.split_seed, trainer.global_rank, epoch, index)))
        return self.preprocess(images, train=training, generator=generator), labels

    def _missing(self, folder: Path, files: Sequence[str], how: str) -> DataError:
        return DataError(
            f"{self.name} not found: looked in {folder.resolve()} for {', '.join(files)}"
            f" ({how}). Put the files there, or point data.root / SOFTCAL_DATA_ROOT at a folder"
            f" that has them."
        )

    def _download_with_torchvision(self, dataset_cls: Any, **kwargs: Any) -> None:
        try:
            for train in (True, False):
                dataset_cls(str(self.root), train=train, download=True, **kwargs)
        except Exception as err:  # no network, a proxy, a full disk: all end the same way
            self._download_error = f"{type(err).__name__}: {err}".splitlines()[0][:200]


# ---------------------------------------------------------------------------- IDX datasets


class _IDXDataModule(ClassificationDataModule):
    """(Fashion-)MNIST: four IDX files in ``root/<folder>/raw``, plain or gzipped."""

    folder = "MNIST"
    image_size = (28, 28)
    files = {
        True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
        False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
    }
    #: other folders searched when root has no copy (e.g. a system package's install path)
    fallback_dirs: tuple[str, ...] = ()
    _classes: tuple[str, ...] = ()

    @property
    def class_names(self) -> list[str]:
        return list(self._classes)

    def raw_dirs(self) -> list[Path]:
        return [self.root / self.folder / "raw", *map(Path, self.fallback_dirs)]

    def _locate(self, train: bool) -> tuple[Path, Path] | None:
        for folder in self.raw_dirs():
            found = [find_with_gz(folder, name) for name in self.files[train]]
            if all(found):
                return found[0], found[1]  # type: ignore[return-value]
        return None

    def torchvision_class(self) -> Any:
        raise NotImplementedError

    def fetch(self) -> None:
        if self._locate(True) and self._locate(False):
            return
        self._download_with_torchvision(self.torchvision_class())

    def read_split(self, train: bool) -> Batch:
        located = self._locate(train)
        if located is None:
            how = getattr(self, "_download_error", None)
            how = f"download failed: {how}" if how else "download is off"
            names = [f"{n}[.gz]" for n in self.files[train]]
            raise self._missing(self.root / self.folder / "raw", names, how)
        images, labels = read_idx(located[0]), read_idx(located[1])
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise DataError(
                f"{located[0]} ({tuple(images.shape)}) and {located[1]} ({tuple(labels.shape)})"
                " do not fit together; replace them with a matching pair"
            )
        return images.unsqueeze(1), labels.long()


class MNISTDataModule(_IDXDataModule):
    """MNIST handwritten digits: 60,000 train and 10,000 test images, 28x28 grayscale."""

    name = "MNIST"
    folder = "MNIST"
    mean, std = (0.1307,), (0.3081,)
    _classes = tuple(str(d) for d in range(10))

    def torchvision_class(self) -> Any:
        from torchvision.datasets import MNIST

        return MNIST


class FashionMNISTDataModule(_IDXDataModule):
    """Fashion-MNIST (Zalando): 10 clothing classes in the MNIST format.

    Besides ``root/FashionMNIST/raw`` it looks where Debian's ``dataset-fashion-mnist`` package
    installs the files, so ``apt-get install dataset-fashion-mnist`` is enough offline.
    """

    name = "FashionMNIST"
    folder = "FashionMNIST"
    mean, std = (0.2860,), (0.3530,)
    fallback_dirs = ("/usr/share/datasets/fashion-mnist",)
    _classes = (
        "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
        "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
    )  # fmt: skip

    def torchvision_class(self) -> Any:
        from torchvision.datasets import FashionMNIST

        return FashionMNIST


# ---------------------------------------------------------------------------- CIFAR


class _CIFARDataModule(ClassificationDataModule):
    """CIFAR 'python version' pickle batches in ``root/<folder>``, as torchvision extracts them."""

    image_size = (32, 32)
    folder = "cifar-10-batches-py"
    train_files: tuple[str, ...] = ()
    test_files: tuple[str, ...] = ()
    meta_file, names_key, label_key = "batches.meta", "label_names", "labels"
    _default_names: tuple[str, ...] = ()

    def __init__(self, *args: Any, crop_padding: int = 4, hflip: bool = True, **kwargs: Any):
        super().__init__(*args, crop_padding=crop_padding, hflip=hflip, **kwargs)

    @property
    def class_names(self) -> list[str]:
        meta = self.root / self.folder / self.meta_file
        if meta.is_file():
            return read_cifar_names(meta, self.names_key)
        return list(self._default_names)

    def _paths(self, train: bool) -> list[Path]:
        return [self.root / self.folder / f for f in (self.train_files if train else self.test_files)]

    def torchvision_class(self) -> Any:
        raise NotImplementedError

    def fetch(self) -> None:
        if all(p.is_file() for p in self._paths(True) + self._paths(False)):
            return
        self._download_with_torchvision(self.torchvision_class())

    def read_split(self, train: bool) -> Batch:
        paths = self._paths(train)
        missing = [p.name for p in paths if not p.is_file()]
        if missing:
            how = getattr(self, "_download_error", None)
            how = f"download failed: {how}" if how else "download is off"
            raise self._missing(self.root / self.folder, missing, how)
        return read_cifar_batches(paths, self.label_key)


class CIFAR10DataModule(_CIFARDataModule):
    """CIFAR-10: 50,000 train and 10,000 test colour images, 32x32, 10 classes."""

    name = "CIFAR10"
    folder = "cifar-10-batches-py"
    train_files = tuple(f"data_batch_{i}" for i in range(1, 6))
    test_files = ("test_batch",)
    mean, std = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
    _default_names = (
        "airplane", "automobile", "bird", "cat", "deer",
        "dog", "frog", "horse", "ship", "truck",
    )  # fmt: skip

    def torchvision_class(self) -> Any:
        from torchvision.datasets import CIFAR10

        return CIFAR10


class CIFAR100DataModule(_CIFARDataModule):
    """CIFAR-100: as CIFAR-10 with 100 fine-grained classes."""

    name = "CIFAR100"
    folder = "cifar-100-python"
    train_files, test_files = ("train",), ("test",)
    meta_file, names_key, label_key = "meta", "fine_label_names", "fine_labels"
    mean, std = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)
    _default_names = tuple(f"class_{i:02d}" for i in range(100))

    def torchvision_class(self) -> Any:
        from torchvision.datasets import CIFAR100

        return CIFAR100


# ---------------------------------------------------------------------------- image folders


class ImageFolderDataModule(ClassificationDataModule):
    """Any folder of images: ``folder/train/<class>/*.png`` and ``folder/test/<class>/*.png``.

    Images are converted to ``channels`` (1: grayscale, 3: RGB) and resized to ``image_size``
    once, then cached as one tensor file keyed by the files' content.
    """

    name = "ImageFolder"

    def __init__(
        self,
        folder: str = "cifar10-sample",
        image_size: int = 32,
        channels: int = 3,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
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
            mean, std: per-channel normalisation in [0, 1] units (default 0.5 and 0.25).
            cache_dir: where decoded tensors are cached (default ``$SOFTCAL_CACHE_DIR`` or
                ``~/.cache/softcal``).
        """
        super().__init__(val_size=val_size, crop_padding=crop_padding, hflip=hflip, **kwargs)
        folder_path = Path(folder).expanduser()
        self.folder = folder_path if folder_path.is_absolute() else self.root / folder_path
        self.name = self.folder.name or "ImageFolder"
        self.image_size = (image_size, image_size)
        self.mean = tuple(mean) if mean is not None else (0.5,) * channels
        self.std = tuple(std) if std is not None else (0.25,) * channels
        if len(self.mean) != channels or len(self.std) != channels:
            raise DataError(f"data mean/std need {channels} values each (one per channel)")
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self._classes: list[str] | None = None

    @property
    def class_names(self) -> list[str]:
        if self._classes is None:
            self._classes = list_class_folders(self.folder / "train")
        return self._classes

    def read_split(self, train: bool) -> Batch:
        split_dir = self.folder / ("train" if train else "test")
        return load_image_folder(
            split_dir, self.class_names, self.in_channels, self.image_size, self.cache_dir
        )
