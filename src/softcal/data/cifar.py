"""CIFAR-10 and CIFAR-100: the official 'python version' pickle batches, as torchvision extracts
them, or the same images as PNG files in one folder per class.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from softcal.data.datamodule import ClassificationDataModule
from softcal.data.download import why_missing
from softcal.data.loader import Batch
from softcal.data.readers import list_class_folders, load_image_folder, read_cifar_batches, read_cifar_names
from softcal.errors import DataError


class CIFARDataModule(ClassificationDataModule):
    """The CIFAR family; crop + flip augmentation by default.

    Files, in the order they are looked for, per split: the pickles in ``root/<folder>``, else
    ``root/<png_folder>/{train,test}/<class>/*.png`` (class folders named as the dataset's
    classes; alphabetical, which is the label order), decoded once and cached by content hash
    in ``$SOFTCAL_CACHE_DIR`` or ``~/.cache/softcal``; else torchvision's download.
    """

    image_size = (32, 32)
    folder = "cifar-10-batches-py"
    png_folder = "cifar10"
    train_files: tuple[str, ...] = ()
    test_files: tuple[str, ...] = ()
    meta_file, names_key, label_key = "batches.meta", "label_names", "labels"
    #: class names used when the meta file is absent (the data files still load without it)
    _default_names: tuple[str, ...] = ()

    def __init__(self, *args: Any, crop_padding: int = 4, hflip: bool = True, **kwargs: Any) -> None:
        super().__init__(*args, crop_padding=crop_padding, hflip=hflip, **kwargs)

    # ------------------------------------------------------------------ files
    @property
    def class_names(self) -> list[str]:
        meta = self.files_dir() / self.meta_file
        if meta.is_file():
            return read_cifar_names(meta, self.names_key)
        return list(self._default_names)

    def files_dir(self) -> Path:
        return self.root / self.folder

    def png_dir(self, train: bool) -> Path:
        """The PNG folder of one split: ``root/<png_folder>/train`` or ``.../test``."""
        return self.root / self.png_folder / ("train" if train else "test")

    def _paths(self, train: bool) -> list[Path]:
        return [self.files_dir() / f for f in (self.train_files if train else self.test_files)]

    def _missing_pickles(self, train: bool) -> list[str]:
        return [p.name for p in self._paths(train) if not p.is_file()]

    def missing_files(self, train: bool) -> list[str]:
        # A PNG folder is a complete copy: nothing to download then.
        return [] if self.png_dir(train).is_dir() else self._missing_pickles(train)

    def check_files(self, train: bool) -> None:
        """The one-line "not found" error, naming both layouts that were looked for."""
        missing = self.missing_files(train)
        if missing:
            png, names = self.png_dir(train), self.class_names
            raise DataError(
                f"{self.name} not found: looked in {self.files_dir().resolve()} for {', '.join(missing)}"
                f" and in {png.resolve()} for PNG class folders {names[0]}/, {names[1]}/, ..."
                f" ({why_missing(self.download, self._download_error)}). Put either there, or point"
                " data.root / SOFTCAL_DATA_ROOT at a folder that has them."
            )

    def read_split(self, train: bool) -> Batch:
        if not self._missing_pickles(train):  # the official files win over any other copy
            return read_cifar_batches(self._paths(train), self.label_key)
        self.check_files(train)
        return self._read_png_folder(self.png_dir(train))

    def _read_png_folder(self, split_dir: Path) -> Batch:
        """A split from PNG class folders, refused unless the folders are the dataset's classes:
        a folder's labels come from the folder names, so any other set would mislabel it."""
        found, names = list_class_folders(split_dir), self.class_names
        if found != names:
            missing = [name for name in names if name not in found]
            extra = [name for name in found if name not in names]
            detail = "; ".join(
                f"{what}: {', '.join(which[:5])}{', ...' if len(which) > 5 else ''}"
                for what, which in (("missing", missing), ("not a class", extra))
                if which
            )
            raise DataError(
                f"{split_dir} is not a {self.name} PNG folder: its class folders differ from"
                f" {self.name}'s {len(names)} classes ({detail or 'in another order'})"
            )
        return load_image_folder(split_dir, names, self.in_channels, self.image_size)


class CIFAR10DataModule(CIFARDataModule):
    """CIFAR-10: 50,000 train and 10,000 test colour images, 32x32, 10 classes."""

    name = "CIFAR10"
    folder, png_folder = "cifar-10-batches-py", "cifar10"
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
    folder, png_folder = "cifar-100-python", "cifar100"
    torchvision_name = "CIFAR100"
    train_files, test_files = ("train",), ("test",)
    meta_file, names_key, label_key = "meta", "fine_label_names", "fine_labels"
    mean, std = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)
    # The official meta file's fine label names (alphabetical, so also a PNG folder's order).
    _default_names = tuple(
        """
        apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus
        butterfly camel can castle caterpillar cattle chair chimpanzee clock cloud cockroach couch
        crab crocodile cup dinosaur dolphin elephant flatfish forest fox girl hamster house
        kangaroo keyboard lamp lawn_mower leopard lion lizard lobster man maple_tree motorcycle
        mountain mouse mushroom oak_tree orange orchid otter palm_tree pear pickup_truck pine_tree
        plain plate poppy porcupine possum rabbit raccoon ray road rocket rose sea seal shark shrew
        skunk skyscraper snail snake spider squirrel streetcar sunflower sweet_pepper table tank
        telephone television tiger tractor train trout tulip turtle wardrobe whale willow_tree wolf
        woman worm
    """.split()
    )
