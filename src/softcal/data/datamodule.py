"""The base datamodule: every dataset decoded once into uint8 tensors held in memory.

One class does the common work - the seeded train/val split, batching straight from tensors,
normalisation and augmentation per batch on the training device, the download of missing files.
Each dataset subclass (``idx``, ``cifar``, ``folder``) only says where its files are, how to read
them and what its classes are called. The official test set is read only when testing; the
validation set is carved from the training set.
"""

from __future__ import annotations

import os
from importlib import import_module
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch

from softcal.checks import above, at_least, check_options
from softcal.data.augment import augment_batch, normalize
from softcal.data.download import not_found, torchvision_download, why_missing
from softcal.data.loader import Batch, TensorBatchLoader, batch_sized_cpu_ops
from softcal.errors import DataError


def default_data_root() -> Path:
    """``$SOFTCAL_DATA_ROOT`` when set (e.g. a data folder shared by several checkouts), else ``data/``."""
    return Path(os.environ.get("SOFTCAL_DATA_ROOT") or "data")


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
        val_split_seed: int | None = None,
        crop_padding: int = 0,
        hflip: bool = False,
        crop_pad_mode: Literal["zeros", "reflect"] = "zeros",
        alternate_flips: bool = False,
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
            split_seed: seed of the train/val split and of the shuffling order (linked to
                ``seed_everything``); ``val_split_seed``, when set, seeds the split alone: an
                ensemble's members given one value hold out the same validation images.
            crop_padding: random-crop augmentation: pad by this many pixels, crop back (0: off).
            hflip: random horizontal flips (for natural images, not digits).
            crop_pad_mode: what the random crop translates in at the border: "zeros" or
                "reflect" (the image mirrored at its edge, no black bars).
            alternate_flips: with ``hflip``, each training image gets one random flip bit per
                run (from the run seed) and is mirrored in epoch e iff bit XOR (e is odd):
                every image is seen both ways in every two epochs, instead of by coin toss.
            download: try torchvision's download when the files are missing.
            pin_memory: pin batches in page-locked memory for faster copies to a GPU.
            device_resident: keep the whole uint8 dataset on the GPU (small datasets only):
                batches are gathered there and nothing crosses the bus per step.
        """
        super().__init__()
        check_options("data.init_args", {
            "batch_size": (batch_size, at_least(1), "128"),
            "eval_batch_size": (eval_batch_size, at_least(1), "1000"),
            "val_size": (val_size, above(0), "0.1"),
            "crop_padding": (crop_padding, at_least(0), "4"),
        })  # fmt: skip
        self.root = Path(root) if root else default_data_root()
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.val_size, self.split_seed, self.val_split_seed = val_size, split_seed, val_split_seed
        self.crop_padding, self.hflip = crop_padding, hflip
        if crop_pad_mode not in ("zeros", "reflect"):
            raise DataError(f"data.crop_pad_mode must be 'zeros' or 'reflect', not {crop_pad_mode!r}")
        self.crop_pad_mode, self.alternate_flips = crop_pad_mode, alternate_flips
        self.check_crop_depth()
        self.download, self.pin_memory = download, pin_memory
        self.device_resident = device_resident
        self.splits: dict[str, Batch] = {}
        self._train_loader: TensorBatchLoader | None = None
        self._resume_state: dict[str, int] | None = None
        self._stats: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}
        self._download_error: str | None = None  # why prepare_data's download failed

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

    def check_crop_depth(self) -> None:
        """A reflected border cannot be deeper than the image; a subclass whose image size is
        an argument (image folders) sets it before calling ``__init__``."""
        if self.crop_pad_mode == "reflect" and self.crop_padding >= min(self.image_size):
            raise DataError(
                f"data.crop_padding={self.crop_padding} is too deep to reflect {self.name}'s"
                f" {self.image_size[0]}x{self.image_size[1]} images; use at most {min(self.image_size) - 1}"
            )

    # ------------------------------------------------------------------ files and download
    #: the ``torchvision.datasets`` class that can download the files ("": none can)
    torchvision_name: str = ""

    def read_split(self, train: bool) -> Batch:
        """Return (uint8 images (N, C, H, W), int64 labels) of the official train or test set.

        Subclasses with named files call :meth:`check_files` first.
        """
        raise NotImplementedError

    def files_dir(self) -> Path:
        """The folder the dataset's files belong in, named in the "not found" error."""
        return self.root

    def missing_files(self, train: bool) -> list[str]:
        """Names of the files :meth:`read_split` needs and cannot find; empty when all are there."""
        return []

    def torchvision_class(self) -> Any:
        """The ``torchvision.datasets`` class named by :attr:`torchvision_name`."""
        return getattr(import_module("torchvision.datasets"), self.torchvision_name)

    def prepare_data(self) -> None:
        """Download the files with torchvision when some are missing and ``download`` is on.

        Lightning calls this on one process per node; a failure is kept, not raised, so that
        :meth:`check_files` can say why the files are missing if no copy is found at all.
        """
        if not self.download or not self.torchvision_name:
            return
        if self.missing_files(True) or self.missing_files(False):
            self._download_error = torchvision_download(self.torchvision_class(), self.root)

    def check_files(self, train: bool) -> None:
        """Raise the one-line "not found" error when files of the split are missing."""
        missing = self.missing_files(train)
        if missing:
            reason = why_missing(self.download, self._download_error)
            raise not_found(self.name, self.files_dir(), missing, reason)

    # ------------------------------------------------------------------ splitting
    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit", "validate") and "train" not in self.splits:
            images, labels = self._checked(*self.read_split(train=True), "training")
            n_val = self._val_count(len(labels))
            seed = self.split_seed if self.val_split_seed is None else self.val_split_seed
            order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
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
            flip_seed=self.flip_seed if train else None,
        )

    @property
    def flip_seed(self) -> int | None:
        """The training loader's ``flip_seed``: the run seed with ``alternate_flips``, else None.
        A hand-built training loader (e.g. a benchmark's bare loop) passes it to flip the same."""
        return self.split_seed if self.hflip and self.alternate_flips else None

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
        evaluation, prediction and export alike, so all of them see identical inputs. With
        ``alternate_flips`` the training loader has already flipped the batch: only the crop
        is left to do here."""
        hflip = self.hflip and not self.alternate_flips
        with batch_sized_cpu_ops(images.device):
            if train and (self.crop_padding > 0 or hflip):
                images = augment_batch(images, self.crop_padding, hflip, generator, self.crop_pad_mode)
            return normalize(images, *self._stats_on(images.device))

    def training_sample(self, n: int) -> torch.Tensor:
        """The first ``n`` training images, normalised and not augmented (the split is already
        shuffled): what a net with a data-dependent first layer is fitted on."""
        if "train" not in self.splits:
            self.setup("fit")
        return self.preprocess(self.splits["train"][0][:n])

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
