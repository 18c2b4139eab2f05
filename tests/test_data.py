"""Datamodules read every supported format into exactly the stored pixels and labels, split
train/val by seed, keep test apart, and report missing or broken files in one line.

The generated datasets come from ``tests.synthetic_data.class_images``; regenerating those arrays
with the same seed gives the expected tensors without going through any reader under test.
"""

from __future__ import annotations

import gzip
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from softcal.data import (
    CIFAR10DataModule,
    CIFAR100DataModule,
    FashionMNISTDataModule,
    ImageFolderDataModule,
    MNISTDataModule,
)
from softcal.errors import DataError
from tests.synthetic_data import class_images, write_idx_dataset


def expected(
    n: int, num_classes: int, channels: int, size: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """What the writers in tests.synthetic_data stored: (N, C, H, W) uint8 images and labels."""
    images, labels = class_images(n, num_classes, channels, size, seed)
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(labels)


def pairs(images: torch.Tensor, labels: torch.Tensor) -> Counter:
    """The multiset of (pixels, label): equal for two sets of samples in any order."""
    return Counter(zip((bytes(x.numpy().tobytes()) for x in images), labels.tolist(), strict=True))


def assert_split_partitions(dm, images: torch.Tensor, labels: torch.Tensor) -> None:
    """train + val hold every stored sample exactly once, each with its own label."""
    (x_train, y_train), (x_val, y_val) = dm.splits["train"], dm.splits["val"]
    together = pairs(torch.cat([x_train, x_val]), torch.cat([y_train, y_val]))
    assert together == pairs(images, labels)


# --------------------------------------------------------------------------- the formats


def test_mnist_reads_the_stored_digits_and_keeps_test_apart(mnist_root):
    dm = MNISTDataModule(root=str(mnist_root), val_size=100, download=False)
    dm.setup("fit")
    assert "test" not in dm.splits, "the test set must not be read for fit"
    assert len(dm.splits["val"][1]) == 100 and len(dm.splits["train"][1]) == 500
    assert_split_partitions(dm, *expected(600, 10, 1, 28, seed=0))
    dm.setup("test")
    test_images, test_labels = expected(200, 10, 1, 28, seed=1)
    assert torch.equal(dm.splits["test"][0], test_images)  # in file order, unshuffled
    assert torch.equal(dm.splits["test"][1], test_labels)
    assert (dm.num_classes, dm.in_channels, dm.image_size) == (10, 1, (28, 28))


def test_gzipped_files_read_the_same_as_plain_ones(tmp_path):
    write_idx_dataset(tmp_path / "plain", "FashionMNIST", n_train=300, n_test=50)
    write_idx_dataset(tmp_path / "gz", "FashionMNIST", n_train=300, n_test=50, gz=True)
    assert not list((tmp_path / "gz").rglob("*-ubyte")), "only .gz files in the gzipped copy"
    plain, gz = (FashionMNISTDataModule(root=str(tmp_path / r), val_size=0.1, download=False)
                 for r in ("plain", "gz"))  # fmt: skip
    for dm in (plain, gz):
        dm.setup()
    for split in ("train", "val", "test"):
        assert torch.equal(plain.splits[split][0], gz.splits[split][0])
        assert torch.equal(plain.splits[split][1], gz.splits[split][1])
    assert len(gz.splits["val"][1]) == 30  # 0.1 of 300: a fraction below 1 is a share
    assert gz.class_names[0] == "T-shirt/top" and gz.class_names[-1] == "Ankle boot"


def test_split_is_seeded_and_a_partition(mnist_root):
    def split(seed: int) -> dict:
        dm = MNISTDataModule(root=str(mnist_root), val_size=100, split_seed=seed, download=False)
        dm.setup("fit")
        assert_split_partitions(dm, *expected(600, 10, 1, 28, seed=0))
        return dm.splits

    a, b, c = split(0), split(0), split(1)
    for name in ("train", "val"):
        assert torch.equal(a[name][0], b[name][0]) and torch.equal(a[name][1], b[name][1])
    assert pairs(*a["val"]) != pairs(*c["val"]), "another seed must hold out other images"


def test_val_split_seed_seeds_the_split_alone(mnist_root):
    """Ensemble members trained with other seeds and one val_split_seed hold out the same
    images; their shuffling still follows their own seed."""

    def module(seed: int, val_split_seed: int | None) -> MNISTDataModule:
        dm = MNISTDataModule(root=str(mnist_root), val_size=100, batch_size=50, split_seed=seed,
                             val_split_seed=val_split_seed, download=False)  # fmt: skip
        dm.setup("fit")
        return dm

    own, shared, other = module(0, None), module(1, 0), module(1, None)
    assert pairs(*shared.splits["val"]) == pairs(*own.splits["val"]) != pairs(*other.splits["val"])
    assert pairs(*shared.splits["train"]) == pairs(*own.splits["train"])
    first = [next(iter(dm.train_dataloader()))[1] for dm in (own, shared)]
    assert not torch.equal(*first), "the training order is the run seed's, not the split's"


@pytest.mark.parametrize("module,fixture,classes,n_train,n_test", [
    (CIFAR10DataModule, "cifar10_root", 10, 500, 100),
    (CIFAR100DataModule, "cifar100_root", 100, 400, 100),
])  # fmt: skip
def test_cifar_pickles_read_the_stored_images_and_labels(module, fixture, classes, n_train, n_test, request):
    root = request.getfixturevalue(fixture)
    dm = module(root=str(root), val_size=50, download=False)
    dm.setup()
    # CIFAR-100's labels are the fine ones: the coarse ones (k % 20) would fail here.
    assert_split_partitions(dm, *expected(n_train, classes, 3, 32, seed=0))
    test_images, test_labels = expected(n_test, classes, 3, 32, seed=1)
    assert torch.equal(dm.splits["test"][0], test_images)
    assert torch.equal(dm.splits["test"][1], test_labels)
    assert (dm.crop_padding, dm.hflip) == (4, True), "CIFAR defaults to crop + flip"
    first = "airplane" if classes == 10 else "fine_0"  # read from the meta file
    assert dm.num_classes == classes and dm.class_names[0] == first


def test_cifar_class_names_without_the_meta_file(tmp_path, cifar10_root):
    shutil.copytree(cifar10_root, tmp_path, dirs_exist_ok=True)
    (tmp_path / "cifar-10-batches-py" / "batches.meta").unlink()
    assert CIFAR10DataModule(root=str(tmp_path)).class_names[-1] == "truck"


def folder_order(labels: torch.Tensor) -> torch.Tensor:
    """The order an image folder lists the samples in: by class folder, then by file name
    (the writer names files by their index)."""
    return torch.cat([torch.nonzero(labels == k).flatten() for k in range(int(labels.max()) + 1)])


def test_image_folder_reads_the_pixels_and_labels_of_each_class_folder(image_folder):
    dm = ImageFolderDataModule(folder=str(image_folder), val_size=0.2)
    dm.setup()
    assert dm.class_names == ["circle", "square", "triangle"]
    assert len(dm.splits["val"][1]) == 24  # 0.2 of 120
    assert_split_partitions(dm, *expected(120, 3, 3, 32, seed=0))
    test_images, test_labels = expected(30, 3, 3, 32, seed=1)
    order = folder_order(test_labels)
    assert torch.equal(dm.splits["test"][0], test_images[order])
    assert torch.equal(dm.splits["test"][1], test_labels[order])


def test_image_folder_converts_to_grayscale_and_resizes(image_folder):
    dm = ImageFolderDataModule(folder=str(image_folder), channels=1, image_size=16)
    dm.setup("test")
    stored, labels = class_images(30, 3, 3, 32, 1)
    order = folder_order(torch.from_numpy(labels))
    # What PIL makes of the stored RGB pixels: ITU-R 601 luma, then a bilinear 32 -> 16 resize.
    gray = [np.array(Image.fromarray(stored[i]).convert("L").resize((16, 16), Image.BILINEAR))
            for i in order.tolist()]  # fmt: skip
    assert torch.equal(dm.splits["test"][0], torch.from_numpy(np.stack(gray)).unsqueeze(1))
    assert dm.in_channels == 1 and dm.mean == (0.5,)


def test_image_folder_relative_to_root(image_folder):
    dm = ImageFolderDataModule(root=str(image_folder.parent), folder=image_folder.name)
    assert dm.folder == image_folder and dm.num_classes == 3


@pytest.mark.slow
def test_the_file_readers_and_the_loader_import_without_lightning():
    """predict reads images and reports a wrong path before paying for Lightning's import."""
    code = (
        "import sys, softcal.data, softcal.data.readers, softcal.data.loader, softcal.data.augment;"
        " print(sorted(m for m in ('lightning', 'lightning.pytorch') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stdout + out.stderr[-2000:]


def test_preprocess_normalises_with_dataset_statistics(mnist_root):
    dm = MNISTDataModule(root=str(mnist_root))
    x = torch.full((2, 1, 28, 28), 255, dtype=torch.uint8)
    out = dm.preprocess(x)
    assert out.dtype == torch.float32
    assert torch.allclose(out, torch.full_like(out, (1 - 0.1307) / 0.3081), atol=1e-5)


# --------------------------------------------------------------------------- missing files, download


def test_missing_mnist_names_the_folder_the_files_and_the_fix(tmp_path):
    dm = MNISTDataModule(root=str(tmp_path / "nowhere"), download=False)
    with pytest.raises(DataError) as err:
        dm.setup("fit")
    assert str(err.value) == (
        f"MNIST not found: looked in {(tmp_path / 'nowhere' / 'MNIST' / 'raw').resolve()} for"
        " train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz] (download is off). Put the"
        " files there, or point data.root / SOFTCAL_DATA_ROOT at a folder that has them."
    )


def test_missing_cifar_lists_only_the_missing_files(tmp_path, cifar10_root):
    shutil.copytree(cifar10_root, tmp_path, dirs_exist_ok=True)
    folder = tmp_path / "cifar-10-batches-py"
    (folder / "data_batch_2").unlink()
    (folder / "data_batch_5").unlink()
    with pytest.raises(DataError) as err:
        CIFAR10DataModule(root=str(tmp_path), download=False).setup("fit")
    assert str(err.value).startswith(  # and in cifar10/train: see tests/test_data_recipe.py
        f"CIFAR10 not found: looked in {folder.resolve()} for data_batch_2, data_batch_5 and in"
        f" {(tmp_path / 'cifar10' / 'train').resolve()} for PNG class folders airplane/, automobile/,"
        " ... (download is off)."
    )
    CIFAR10DataModule(root=str(tmp_path), download=False).setup("test")  # test_batch is there


class RecordingDownload:
    """Stands in for a torchvision dataset class: records the calls, optionally fails."""

    def __init__(self, error: Exception | None = None) -> None:
        self.calls: list[tuple[str, bool, bool]] = []
        self.error = error

    def __call__(self, root: str, train: bool, download: bool) -> None:
        self.calls.append((root, train, download))
        if self.error is not None:
            raise self.error


def test_failed_download_is_reported_in_one_line(tmp_path, monkeypatch):
    dm = MNISTDataModule(root=str(tmp_path))
    fake = RecordingDownload(RuntimeError("Error downloading train-images-idx3-ubyte.gz:\nretry"))
    monkeypatch.setattr(dm, "torchvision_class", lambda: fake)
    dm.prepare_data()
    assert fake.calls == [(str(tmp_path), True, True)]  # the first failure ends the attempt
    with pytest.raises(DataError) as err:
        dm.setup("fit")
    message = str(err.value)
    assert "(download failed: RuntimeError: Error downloading train-images-idx3-ubyte.gz:)." in message
    assert "\n" not in message


def test_download_fetches_both_splits_only_when_files_are_missing(tmp_path, mnist_root, monkeypatch):
    fake = RecordingDownload()
    monkeypatch.setattr(MNISTDataModule, "torchvision_class", lambda self: fake)
    MNISTDataModule(root=str(mnist_root)).prepare_data()
    MNISTDataModule(root=str(tmp_path), download=False).prepare_data()
    assert fake.calls == [], "nothing to fetch when the files are there, or when download is off"
    dm = MNISTDataModule(root=str(tmp_path))
    dm.prepare_data()
    assert fake.calls == [(str(tmp_path), True, True), (str(tmp_path), False, True)]
    with pytest.raises(
        DataError,
        match=re.escape(
            "-ubyte[.gz] (not downloaded by this process). Put the files there, or point data.root /"
            " SOFTCAL_DATA_ROOT at a folder that has them."
        ),
    ):
        dm.setup("fit")  # the fake "succeeded" without writing anything


def test_each_dataset_downloads_with_its_own_torchvision_class():
    import torchvision.datasets as tv

    assert MNISTDataModule().torchvision_class() is tv.MNIST
    assert FashionMNISTDataModule().torchvision_class() is tv.FashionMNIST
    assert CIFAR10DataModule().torchvision_class() is tv.CIFAR10
    assert CIFAR100DataModule().torchvision_class() is tv.CIFAR100
    ImageFolderDataModule().prepare_data()  # nothing to download for a folder of images


# --------------------------------------------------------------------------- broken files


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


def test_a_file_that_is_not_idx(tmp_path):
    raw = write_idx_dataset(tmp_path, n_train=50, n_test=20)
    (raw / "train-images-idx3-ubyte").write_bytes(b"PK\x03\x04 a zip, say" * 10)
    with pytest.raises(DataError, match="train-images-idx3-ubyte is not an IDX file of unsigned bytes"):
        MNISTDataModule(root=str(tmp_path), download=False).setup("fit")


def test_a_corrupt_cifar_pickle(tmp_path, cifar10_root):
    shutil.copytree(cifar10_root, tmp_path, dirs_exist_ok=True)
    batch = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    batch.write_bytes(batch.read_bytes()[:500])
    with pytest.raises(DataError, match=r"cannot read .*data_batch_3 \(.*\); download or copy it again"):
        CIFAR10DataModule(root=str(tmp_path), download=False).setup("fit")


def test_a_missing_image_folder(tmp_path):
    with pytest.raises(DataError) as err:
        ImageFolderDataModule(folder=str(tmp_path / "nothing")).setup("fit")
    assert str(err.value) == (
        f"image folder {tmp_path}/nothing/train not found; it must hold one sub-folder per class (e.g."
        " train/cat/*.png) - set data.init_args.folder or SOFTCAL_DATA_ROOT"
    )


def test_images_and_labels_of_different_lengths(tmp_path):
    raw = write_idx_dataset(tmp_path, n_train=50, n_test=20)
    shutil.copy(raw / "t10k-labels-idx1-ubyte", raw / "train-labels-idx1-ubyte")
    with pytest.raises(DataError) as err:
        MNISTDataModule(root=str(tmp_path), download=False, val_size=10).setup("fit")
    assert str(err.value) == (
        f"{raw}/train-images-idx3-ubyte ((50, 28, 28)) and {raw}/train-labels-idx1-ubyte ((20,)) do not fit"
        " together; replace them with a matching pair"
    )


def test_labels_out_of_range(tmp_path):
    raw = write_idx_dataset(tmp_path, n_train=50, n_test=20)
    path = raw / "train-labels-idx1-ubyte"
    data = bytearray(path.read_bytes())
    data[-1] = 42
    path.write_bytes(bytes(data))
    with pytest.raises(
        DataError,
        match=re.escape(
            "MNIST training labels run 0..42, expected 0..9; the label file does not match the images"
        )
        + "$",
    ):
        MNISTDataModule(root=str(tmp_path), download=False, val_size=10).setup("fit")


def test_val_size_that_leaves_nothing(mnist_root):
    with pytest.raises(
        DataError,
        match=(
            r"^data\.val_size=600 leaves no training or no validation images out of (\d+); use a count"
            r" between 1 and (\d+) or a fraction like 0\.1$"
        ),
    ):
        MNISTDataModule(root=str(mnist_root), download=False, val_size=600).setup("fit")


def test_image_folder_problems(tmp_path: Path, image_folder: Path):
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
    with pytest.raises(
        DataError,
        match=re.escape(
            "/test (circle, triangle) differ from the training classes (circle, square, triangle); train"
            " and test must have the same class folders"
        ),
    ):
        ImageFolderDataModule(folder=str(broken)).setup("test")
    (broken / "test" / "square").mkdir()
    with pytest.raises(DataError, match="is empty"):
        ImageFolderDataModule(folder=str(broken)).setup("test")
