"""The in-memory data path: batch augmentation, equality with torchvision's datasets, the
image-folder cache, TensorBatchLoader's epochs and shards."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from softcal.data import (
    CIFAR10DataModule,
    ImageFolderDataModule,
    MNISTDataModule,
    TensorBatchLoader,
    readers,
)
from softcal.data.augment import augment_batch, normalize, random_crop, random_hflip
from tests.synthetic_data import write_image_folder


def label_coded_images(n: int, channels: int = 3, size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Images whose every pixel is 10 + 20 * label: any mix-up of labels shows in the pixels."""
    labels = torch.arange(n) % 10
    images = (10 + 20 * labels).to(torch.uint8).view(n, 1, 1, 1).expand(n, channels, size, size)
    return images.contiguous(), labels


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def shifted(image: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """``image`` moved by (dy, dx) pixels with zeros filling in: a crop of the padded image."""
    out = torch.zeros_like(image)
    h, w = image.shape[-2:]
    out[..., max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = image[
        ..., max(-dy, 0) : h + min(-dy, 0), max(-dx, 0) : w + min(-dx, 0)
    ]
    return out


# --------------------------------------------------------------------------- augmentation


def test_augmented_batches_keep_labels_shapes_and_dtypes(cifar10_root):
    dm = CIFAR10DataModule(root=str(cifar10_root), batch_size=32, download=False)
    assert dm.crop_padding == 4 and dm.hflip
    dm.splits["train"] = label_coded_images(200)
    mean, std = torch.tensor(dm.mean).view(1, 3, 1, 1), torch.tensor(dm.std).view(1, 3, 1, 1)
    seen = 0
    for b, (images, labels) in enumerate(dm.train_dataloader()):
        assert images.dtype == torch.uint8 and images.shape == (32, 3, 32, 32)
        assert labels.dtype == torch.int64 and labels.shape == (32,)
        x = dm.preprocess(images, train=True, generator=gen(b))
        assert x.dtype == torch.float32 and x.shape == (32, 3, 32, 32)
        pixels = ((x * std + mean) * 255).round().to(torch.int64)  # back to uint8 values
        for image, label in zip(pixels, labels, strict=True):
            values = set(image.unique().tolist()) - {0}  # 0: the crop's zero padding
            assert values == {10 + 20 * int(label)}
        seen += len(labels)
    assert seen == 192  # 200 // 32 full batches; the ragged one is dropped in training


def test_crop_and_flip_are_seeded():
    images = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8)
    first = augment_batch(images, 4, True, gen(1))
    assert torch.equal(first, augment_batch(images, 4, True, gen(1)))
    assert not torch.equal(first, augment_batch(images, 4, True, gen(2)))
    assert torch.equal(random_crop(images, 4, gen(3)), random_crop(images, 4, gen(3)))
    assert not torch.equal(random_crop(images, 4, gen(3)), random_crop(images, 4, gen(4)))
    assert torch.equal(random_hflip(images, gen(5)), random_hflip(images, gen(5)))
    assert not torch.equal(random_hflip(images, gen(5)), random_hflip(images, gen(6)))
    assert augment_batch(images, 0, False) is images  # nothing asked, nothing done


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_flip_mirrors_each_image_or_leaves_it(dtype):
    images = torch.randint(0, 256, (64, 3, 8, 9)).to(dtype)
    out = random_hflip(images, gen(0))
    assert out.dtype == dtype and out.shape == images.shape
    flipped = [torch.equal(o, i.flip(-1)) for o, i in zip(out, images, strict=True)]
    kept = [torch.equal(o, i) for o, i in zip(out, images, strict=True)]
    assert all(f or k for f, k in zip(flipped, kept, strict=True))
    assert any(flipped) and any(kept)  # 64 fair coins: both sides come up


@pytest.mark.parametrize("padding", [1, 4])
def test_crop_only_shifts_by_at_most_the_padding(padding):
    # Pixel values 1..H*W name their source position; 0 can only be padding.
    plane = torch.arange(1, 11 * 12 + 1, dtype=torch.float32).view(1, 1, 11, 12)
    images = plane.expand(40, 2, 11, 12).contiguous()
    out = random_crop(images, padding, gen(0))
    assert out.shape == images.shape and out.dtype == images.dtype
    shifts = set()
    for image, cropped in zip(images, out, strict=True):
        found = [
            (dy, dx)
            for dy, dx in itertools.product(range(-padding, padding + 1), repeat=2)
            if torch.equal(cropped, shifted(image, dy, dx))
        ]
        assert len(found) == 1, "every crop is the image moved by at most the padding"
        shifts.add(found[0])
    assert len(shifts) > 1  # and the shifts are random, not all the same


def test_crop_and_flip_together_equal_crop_then_flip():
    images = torch.randint(0, 256, (32, 3, 16, 16), dtype=torch.uint8)
    g = gen(7)
    expected = random_hflip(random_crop(images, 3, g), g)
    assert torch.equal(augment_batch(images, 3, True, gen(7)), expected)


def test_normalize_matches_the_formula_for_uint8_and_float():
    images = torch.randint(0, 256, (4, 3, 5, 5), dtype=torch.uint8)
    mean, std = torch.tensor([0.1, 0.5, 0.9]), torch.tensor([0.2, 0.3, 0.4])
    expected = (images.double() / 255 - mean.double().view(1, 3, 1, 1)) / std.double().view(1, 3, 1, 1)
    for x in (images, images.float()):
        out = normalize(x, mean, std)
        assert out.dtype == torch.float32
        assert torch.allclose(out.double(), expected, atol=1e-5)
    floats = images.float()
    normalize(floats, mean, std)
    assert torch.equal(floats, images.float())  # the input is never changed in place


# --------------------------------------------------------------------------- same as torchvision


def _positions(reference: torch.Tensor, images: torch.Tensor) -> list[int]:
    """Where each of ``images`` sits in ``reference`` (matched by pixel bytes)."""
    where = {bytes(img.numpy().tobytes()): i for i, img in enumerate(reference)}
    assert len(where) == len(reference), "generated images must be distinct for this test"
    return [where[bytes(img.numpy().tobytes())] for img in images]


def _check_split_is_a_partition(dm, ref_images: torch.Tensor, ref_labels: torch.Tensor) -> None:
    positions = []
    for split in ("train", "val"):
        images, labels = dm.splits[split]
        found = _positions(ref_images, images)
        assert torch.equal(labels, ref_labels[found])
        positions += found
    assert sorted(positions) == list(range(len(ref_labels)))  # every sample exactly once


def test_mnist_tensors_equal_torchvision(mnist_root):
    from torchvision.datasets import MNIST

    dm = MNISTDataModule(root=str(mnist_root), val_size=100, download=False)
    dm.setup()
    for train in (True, False):
        ref = MNIST(str(mnist_root), train=train, download=False)
        ref_images, ref_labels = ref.data.unsqueeze(1), ref.targets
        if train:
            _check_split_is_a_partition(dm, ref_images, ref_labels)
            assert len(dm.splits["val"][1]) == 100
        else:
            assert torch.equal(dm.splits["test"][0], ref_images)
            assert torch.equal(dm.splits["test"][1], ref_labels)


def test_cifar10_tensors_equal_torchvision(cifar10_root):
    from torchvision.datasets import CIFAR10

    class GeneratedCIFAR10(CIFAR10):
        """torchvision's reader without the MD5 check of the official files."""

        def _check_integrity(self) -> bool:
            return True

        def _load_meta(self) -> None:
            self.classes = []

    dm = CIFAR10DataModule(root=str(cifar10_root), val_size=50, download=False)
    dm.setup()
    for train in (True, False):
        ref = GeneratedCIFAR10(str(cifar10_root), train=train, download=False)
        ref_images = torch.from_numpy(ref.data).permute(0, 3, 1, 2)  # HWC -> CHW
        ref_labels = torch.tensor(ref.targets)
        if train:
            _check_split_is_a_partition(dm, ref_images, ref_labels)
        else:
            assert torch.equal(dm.splits["test"][0], ref_images)
            assert torch.equal(dm.splits["test"][1], ref_labels)


# --------------------------------------------------------------------------- image-folder cache


def test_image_folder_cache_is_used_then_rebuilt_when_a_file_changes(tmp_path, monkeypatch):
    folder = write_image_folder(tmp_path / "shapes", n_train=6, n_test=3)
    cache = Path(readers.default_cache_dir())  # the test's own, from conftest

    def load() -> tuple[torch.Tensor, torch.Tensor]:
        return ImageFolderDataModule(folder=str(folder), download=False).read_split(train=True)

    images, labels = load()
    files = list(cache.glob("imagefolder-*.pt"))
    assert len(files) == 1

    real_decode = readers.decode_images

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded although the cache holds these files")

    monkeypatch.setattr(readers, "decode_images", no_decoding)
    again, again_labels = load()
    assert torch.equal(again, images) and torch.equal(again_labels, labels)

    # The first file of the first class is sample 0; give it new pixels.
    first_class = sorted(p for p in (folder / "train").iterdir() if p.is_dir())[0]
    target = sorted(first_class.iterdir())[0]
    Image.fromarray(np.full((32, 32, 3), (250, 5, 128), dtype=np.uint8)).save(target)
    monkeypatch.setattr(readers, "decode_images", real_decode)
    changed, changed_labels = load()
    assert torch.equal(changed_labels, labels)
    assert changed[0].flatten(1).unique(dim=1).T.tolist() == [[250, 5, 128]]
    assert torch.equal(changed[1:], images[1:])
    assert len(list(cache.glob("imagefolder-*.pt"))) == 2  # a new key for the new content


def count_decodes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Makes readers.decode_images record each call (it still decodes); returns the record."""
    calls: list[int] = []
    real = readers.decode_images

    def counting(*args, **kwargs):
        calls.append(len(args[0]))
        return real(*args, **kwargs)

    monkeypatch.setattr(readers, "decode_images", counting)
    return calls


@pytest.mark.parametrize("damage", [
    "truncated", "garbage", "empty", "not a dict", "fewer images", "other labels"])  # fmt: skip
def test_a_broken_cache_file_is_decoded_again_and_replaced(tmp_path, monkeypatch, damage):
    folder = write_image_folder(tmp_path / "shapes", n_train=6, n_test=3)

    def load() -> tuple[torch.Tensor, torch.Tensor]:
        return ImageFolderDataModule(folder=str(folder)).read_split(train=True)

    images, labels = load()
    (cache_file,) = Path(readers.default_cache_dir()).glob("imagefolder-*.pt")
    good = cache_file.read_bytes()
    broken = {  # what a killed copy, a disk error or a stray file could leave under that name
        "truncated": lambda: cache_file.write_bytes(good[: len(good) // 2]),
        "garbage": lambda: cache_file.write_bytes(b"\x80\x02not a torch file" * 40),
        "empty": lambda: cache_file.write_bytes(b""),
        "not a dict": lambda: torch.save(images, cache_file),
        "fewer images": lambda: torch.save({"images": images[:2], "labels": labels[:2]}, cache_file),
        "other labels": lambda: torch.save({"images": images, "labels": labels.flip(0)}, cache_file),
    }
    broken[damage]()
    decodes = count_decodes(monkeypatch)
    again, again_labels = load()
    assert decodes == [6], "the broken cache must not be used"
    assert torch.equal(again, images) and torch.equal(again_labels, labels)
    replaced = torch.load(cache_file, weights_only=True)
    assert torch.equal(replaced["images"], images) and torch.equal(replaced["labels"], labels)
    load()
    assert decodes == [6], "the replaced cache file is used again"


def test_an_unwritable_cache_location_only_costs_a_decode(tmp_path, image_folder):
    blocker = tmp_path / "a-file"
    blocker.write_text("the cache folder cannot be made below a file")
    cached = ImageFolderDataModule(folder=str(image_folder)).read_split(train=True)
    uncached = ImageFolderDataModule(folder=str(image_folder), cache_dir=str(blocker / "cache"))
    images, labels = uncached.read_split(train=True)
    assert torch.equal(images, cached[0]) and torch.equal(labels, cached[1])
    assert not (blocker / "cache").exists()


# --------------------------------------------------------------------------- TensorBatchLoader


def ids_loader(n: int, batch_size: int, shuffle: bool, **kwargs) -> TensorBatchLoader:
    ids = torch.arange(n)
    return TensorBatchLoader(ids.view(n, 1), ids, batch_size, shuffle=shuffle, **kwargs)


def epoch_ids(loader: TensorBatchLoader) -> list[int]:
    out = []
    for images, labels in loader:
        assert torch.equal(images.view(-1), labels)  # images and labels stay paired
        out += labels.tolist()
    return out


def test_every_sample_once_per_epoch_and_a_new_order_each_epoch():
    loader = ids_loader(120, 16, shuffle=True, seed=3)
    first, second = epoch_ids(loader), epoch_ids(loader)
    assert len(first) == len(second) == 112  # 7 full batches; the ragged rest is dropped
    assert len(set(first)) == 112 and len(set(second)) == 112
    assert first != second
    assert epoch_ids(ids_loader(120, 16, shuffle=True, seed=3)) == first  # seeded
    assert epoch_ids(ids_loader(120, 16, shuffle=True, seed=4)) != first
    assert sorted(epoch_ids(ids_loader(120, 12, shuffle=True))) == list(range(120))
    assert epoch_ids(ids_loader(103, 10, shuffle=False)) == list(range(103))  # eval: all, in order


def test_shards_split_without_duplicates():
    for shuffle, n in ((True, 121), (False, 121)):
        shards = [epoch_ids(ids_loader(n, 8, shuffle=shuffle, rank=r, world_size=3)) for r in range(3)]
        together = [i for shard in shards for i in shard]
        assert len(together) == len(set(together)), "no sample on two processes"
        if shuffle:
            assert len({len(s) for s in shards}) == 1  # the same number of steps everywhere
        else:
            assert sorted(together) == list(range(n))  # evaluation: nothing dropped


def random_loader(rank: int = 0, world_size: int = 1) -> TensorBatchLoader:
    """A shuffling loader over 100 random images (labels 0..99 name them), batches of 8."""
    images = torch.randint(0, 256, (100, 3, 4, 4), generator=gen(0)).to(torch.uint8)
    return TensorBatchLoader(images, torch.arange(100), 8, shuffle=True, seed=5,
                             rank=rank, world_size=world_size)  # fmt: skip


def take(loader: TensorBatchLoader, epochs: int) -> list[list[tuple[torch.Tensor, torch.Tensor]]]:
    """``epochs`` whole epochs, each batch marked consumed as the model takes it."""
    out = []
    for _ in range(epochs):
        out.append([])
        for batch in loader:
            loader.mark_consumed()
            out[-1].append(batch)
    return out


def assert_same_batches(got: list, want: list) -> None:
    assert len(got) == len(want)
    for (x, y), (x_ref, y_ref) in zip(got, want, strict=True):
        assert torch.equal(x, x_ref) and torch.equal(y, y_ref)


@pytest.mark.parametrize("rank,world_size", [(0, 1), (1, 2)])
def test_a_loader_restored_mid_epoch_serves_exactly_the_batches_left(rank, world_size):
    reference = take(random_loader(rank, world_size), epochs=3)
    interrupted = random_loader(rank, world_size)
    take(interrupted, epochs=1)
    batches = iter(interrupted)
    for _ in range(3):  # the model trains on 3 batches of epoch 1 ...
        next(batches)
        interrupted.mark_consumed()
    next(batches)  # ... while Lightning has fetched a 4th, which must not count
    state = interrupted.state_dict()
    assert state == {"epoch": 1, "consumed": 3}

    restored = random_loader(rank, world_size)
    restored.load_state_dict(state)
    rest = iter(restored)
    first = next(rest)
    assert restored.mark_consumed() == (1, 3)  # the augmentation seed of an uninterrupted run
    assert_same_batches([first, *rest], reference[1][3:])
    assert_same_batches(take(restored, epochs=1)[0], reference[2])  # then the next epoch


def test_a_state_saved_at_an_epochs_end_starts_the_next_epoch():
    reference = take(random_loader(), epochs=2)
    finished = random_loader()
    take(finished, epochs=1)
    state = finished.state_dict()
    assert state == {"epoch": 0, "consumed": 12}  # all of epoch 0's 100 // 8 batches
    restored = random_loader()
    restored.load_state_dict(state)
    assert_same_batches(take(restored, epochs=1)[0], reference[1])


def test_the_datamodule_state_carries_the_loader_position(mnist_root):
    def datamodule() -> MNISTDataModule:
        return MNISTDataModule(root=str(mnist_root), val_size=100, batch_size=32, download=False)

    reference = list(datamodule().train_dataloader())
    interrupted = datamodule()
    assert interrupted.state_dict() == {}, "no loader yet, nothing to save"
    loader = interrupted.train_dataloader()
    batches = iter(loader)
    for _ in range(5):
        next(batches)
        loader.mark_consumed()
    resumed = datamodule()
    resumed.load_state_dict(interrupted.state_dict())  # what Lightning does with a checkpoint
    assert_same_batches(list(resumed.train_dataloader()), reference[5:])
