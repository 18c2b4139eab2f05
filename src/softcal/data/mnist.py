"""(Fashion-)MNIST: four IDX files, plain or gzipped, in torchvision's ``root/<folder>/raw``."""

from __future__ import annotations

from pathlib import Path

from softcal.data.datamodule import ClassificationDataModule
from softcal.data.loader import Batch
from softcal.data.readers import find_with_gz, read_idx
from softcal.errors import DataError


class IDXDataModule(ClassificationDataModule):
    """The IDX family: a subclass sets the folder, the class names and the statistics."""

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

    def files_dir(self) -> Path:
        return self.root / self.folder / "raw"

    def raw_dirs(self) -> list[Path]:
        return [self.files_dir(), *map(Path, self.fallback_dirs)]

    def _locate(self, train: bool) -> tuple[Path, Path] | None:
        """(images, labels) from the first folder that has both, plain or gzipped."""
        for folder in self.raw_dirs():
            images, labels = (find_with_gz(folder, name) for name in self.files[train])
            if images and labels:
                return images, labels
        return None

    def missing_files(self, train: bool) -> list[str]:
        return [] if self._locate(train) else [f"{n}[.gz]" for n in self.files[train]]

    def read_split(self, train: bool) -> Batch:
        self.check_files(train)
        located = self._locate(train)
        assert located is not None  # check_files has just found them
        images, labels = read_idx(located[0]), read_idx(located[1])
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise DataError(
                f"{located[0]} ({tuple(images.shape)}) and {located[1]} ({tuple(labels.shape)})"
                " do not fit together; replace them with a matching pair"
            )
        return images.unsqueeze(1), labels.long()


class MNISTDataModule(IDXDataModule):
    """MNIST handwritten digits: 60,000 train and 10,000 test images, 28x28 grayscale."""

    name = "MNIST"
    folder = "MNIST"
    torchvision_name = "MNIST"
    mean, std = (0.1307,), (0.3081,)
    _classes = tuple(str(d) for d in range(10))


class FashionMNISTDataModule(IDXDataModule):
    """Fashion-MNIST (Zalando): 10 clothing classes in the MNIST format.

    Besides ``root/FashionMNIST/raw`` it looks where Debian's ``dataset-fashion-mnist`` package
    installs the files, so ``apt-get install dataset-fashion-mnist`` is enough offline.
    """

    name = "FashionMNIST"
    folder = "FashionMNIST"
    torchvision_name = "FashionMNIST"
    mean, std = (0.2860,), (0.3530,)
    fallback_dirs = ("/usr/share/datasets/fashion-mnist",)
    _classes = (
        "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
        "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
    )  # fmt: skip
