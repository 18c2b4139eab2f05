"""Datamodules read every supported format, split train/val by seed, and keep test apart."""

from __future__ import annotations

import gzip
import shutil

import pytest
import torch

from softcal.data import (
    CIFAR10DataModule,
    CIFAR100DataModule,
    FashionMNISTDataModule,
    ImageFolderDataModule,
    MNISTDataModule,
)
from softcal.errors import DataError
from softcal.synthetic import write_idx_dataset


def test_mnist_from_idx_files(mnist_root):
    dm = MNISTDataModule(root=str(mnist_root), val_size=100, download=False)
    dm.setup("fit")
    (x_train, y_train), (x_val, _) = dm.splits["train"], dm.splits["val"]
    assert x_train.shape == (500, 1, 28, 28) and x_val.shape == (100, 1, 28, 28)
    assert x_train.dtype == torch.uint8 and y_train.dtype == torch.int64
    assert "test" not in dm.splits, "the test set must not be read for fit"
    assert (dm.num_classes, dm.in_channels, dm.image_size) == (10, 1, (28, 28))
    dm.setup("test")
    assert dm.splits["test"][0].shape == (200, 1, 28, 28)


def test_gzipped_idx_and_fashion_mnist(tmp_path):
    write_idx_dataset(tmp_path, "FashionMNIST", n_train=300, n_test=50, gz=True)
    dm = FashionMNISTDataModule(root=str(tmp_path), val_size=0.1, download=False)
    dm.setup("fit")
    assert len(dm.splits["val"][1]) == 30 and len(dm.splits["train"][1]) == 270
    assert dm.class_names[0] == "T-shirt/top" and dm.num_classes == 10


def test_split_is_seeded_disjoint_and_complete(mnist_root):
    def split(seed):
        dm = MNISTDataModule(root=str(mnist_root), val_size=100, split_seed=seed, download=False)
        dm.setup("fit")
        return dm.splits

    a, b, c = split(0), split(0), split(1)
    assert torch.equal(a["val"][0], b["val"][0]) and torch.equal(a["train"][1], b["train"][1])
    assert not torch.equal(a["val"][0], c["val"][0]), "another seed must give another split"
    # disjoint and complete: every training image is in exactly one of train/val
    everything = torch.cat([a["train"][0], a["val"][0]]).flatten(1)
    assert torch.unique(everything, dim=0).shape[0] == torch.unique(
        MNISTDataModule(root=str(mnist_root), download=False).read_split(True)[0].flatten(1), dim=0
    ).shape[0]


@pytest.mark.parametrize("module,fixture,classes", [
    (CIFAR10DataModule, "cifar10_root", 10), (CIFAR100DataModule, "cifar100_root", 100)])  # fmt: skip
def test_cifar_pickles(module, fixture, classes, request):
    root = request.getfixturevalue(fixture)
    dm = module(root=str(root), val_size=50, download=False)
    dm.setup()
    x, y = dm.splits["train"]
    assert x.shape[1:] == (3, 32, 32) and dm.num_classes == classes
    assert int(y.max()) < classes and dm.splits["test"][0].shape[1:] == (3, 32, 32)
    assert (dm.crop_padding, dm.hflip) == (4, True), "CIFAR defaults to crop + flip"
    if classes == 10:
        assert dm.class_names[:2] == ["airplane", "automobile"]


def test_image_folder(image_folder):
    dm = ImageFolderDataModule(folder=str(image_folder), val_size=0.2)
    dm.setup()
    assert dm.class_names == ["circle", "square", "triangle"]
    assert dm.splits["train"][0].shape == (96, 3, 32, 32) and len(dm.splits["test"][1]) == 30
    gray = ImageFolderDataModule(folder=str(image_folder), channels=1, image_size=16)
    gray.setup("test")
    assert gray.splits["test"][0].shape == (30, 1, 16, 16)


def test_image_folder_relative_to_root(image_folder):
    dm = ImageFolderDataModule(root=str(image_folder.parent), folder=image_folder.name)
    assert dm.folder == image_folder and dm.num_classes == 3


def test_missing_data_names_the_folder_and_the_fix(tmp_path):
    dm = MNISTDataModule(root=str(tmp_path / "nowhere"), download=False)
    with pytest.raises(DataError) as err:
        dm.setup("fit")
    message = str(err.value)
    assert "nowhere" in message and "SOFTCAL_DATA_ROOT" in message and "\n" not in message


def test_failed_download_is_reported(tmp_path, monkeypatch):
    dm = MNISTDataModule(root=str(tmp_path))

    def no_network(*args, **kwargs):
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz")

    monkeypatch.setattr(dm, "torchvision_class", lambda: no_network)
    dm.prepare_data()
    with pytest.raises(DataError, match="download failed: RuntimeError"):
        dm.setup("fit")


def test_truncated_idx_file(tmp_path):
    raw = write_idx_dataset(tmp_path, n_train=50, n_test=20)
    path = raw / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(DataError, match="truncated or corrupt"):
        MNISTDataModule(root=str(tmp_path), download=False).setup("fit")


def test_corrupt_gzip(tmp_path):
    raw = write_idx_dataset(tmp_path, n_train=50, n_test=20, gz=True)
    (raw / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(b"\x00\x00\x08")[:-4])
    with pytest.raises(DataError, match="train-labels"):
        MNISTDataModule(root=str(tmp_path), download=False).setup("fit")


def test_labels_out_of_range(tmp_path):
    raw = write_idx_dataset(tmp_path, n_train=50, n_test=20)
    path = raw / "train-labels-idx1-ubyte"
    data = bytearray(path.read_bytes())
    data[-1] = 42
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match="labels run"):
        MNISTDataModule(root=str(tmp_path), download=False, val_size=10).setup("fit")


def test_image_folder_problems(tmp_path, image_folder):
    broken = tmp_path / "broken"
    shutil.copytree(image_folder, broken)
    (broken / "train" / "circle" / "notes.txt").write_text("not an image")
    with pytest.raises(DataError, match="not an image file"):
        ImageFolderDataModule(folder=str(broken)).setup("fit")
    (broken / "train" / "circle" / "notes.txt").unlink()
    (broken / "train" / "circle" / "bad.png").write_bytes(b"\x89PNG garbage")
    with pytest.raises(DataError, match="not a readable image"):
        ImageFolderDataModule(folder=str(broken)).setup("fit")
    (broken / "train" / "circle" / "bad.png").unlink()
    shutil.rmtree(broken / "test" / "square")
    with pytest.raises(DataError, match="differ from the training classes"):
        ImageFolderDataModule(folder=str(broken)).setup("test")
    (broken / "test" / "square").mkdir()
    with pytest.raises(DataError, match="is empty"):
        ImageFolderDataModule(folder=str(broken)).setup("test")


def test_preprocess_normalises_with_dataset_statistics(mnist_root):
    dm = MNISTDataModule(root=str(mnist_root))
    x = torch.full((2, 1, 28, 28), 255, dtype=torch.uint8)
    out = dm.preprocess(x)
    assert out.dtype == torch.float32
    assert torch.allclose(out, torch.full_like(out, (1 - 0.1307) / 0.3081), atol=1e-5)
