"""The CIFAR recipe's data features: CIFAR from PNG class folders, reflect padding for the random
crop, and flips that alternate between epochs - each checked against an independent reference,
with the defaults checked to be what they were before."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from softcal.data import CIFAR10DataModule, CIFAR100DataModule, TensorBatchLoader
from softcal.data.augment import augment_batch, normalize, random_crop
from softcal.errors import DataError
from tests.synthetic_data import class_images, write_cifar_dataset, write_image_folder

CIFAR10_CLASSES = CIFAR10DataModule._default_names
CUDA = pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU"))


def gen(seed: int, device: str = "cpu") -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


def stored(n: int, num_classes: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """What write_image_folder stored, in the order a class-folder reader lists it (by class,
    then by file name, which is the sample's index)."""
    images, labels = class_images(n, num_classes, 3, 32, seed)
    order = np.argsort(labels, kind="stable")
    return torch.from_numpy(images[order]).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(labels[order])


def reference_crop(images: torch.Tensor, padding: int, mode: str, hflip: bool, seed: int) -> torch.Tensor:
    """Crop (and flip) the plain way: ``F.pad`` the float batch, slice each window, mirror; the
    random numbers are drawn as augment.crop_and_flip draws them (dy, dx, then flip)."""
    n, _, h, w = images.shape
    g = gen(seed, images.device.type)
    dy = torch.randint(0, 2 * padding + 1, (n, 1), generator=g, device=images.device)
    dx = torch.randint(0, 2 * padding + 1, (n, 1), generator=g, device=images.device)
    flip = (
        torch.rand(n, generator=g, device=images.device) < 0.5 if hflip else torch.zeros(n, dtype=torch.bool)
    )
    padded = F.pad(images.float(), (padding,) * 4, mode="reflect" if mode == "reflect" else "constant")
    out = torch.stack([padded[i, :, dy[i, 0] : dy[i, 0] + h, dx[i, 0] : dx[i, 0] + w] for i in range(n)])
    out = torch.where(flip.view(n, 1, 1, 1).to(out.device), out.flip(-1), out)
    return out.to(images.dtype)


# --------------------------------------------------------------------------- CIFAR from PNG folders


def test_cifar10_reads_a_png_folder_and_needs_no_download(tmp_path, monkeypatch):
    write_image_folder(tmp_path / "cifar10", CIFAR10_CLASSES, n_train=40, n_test=20)
    dm = CIFAR10DataModule(root=str(tmp_path), val_size=10)
    monkeypatch.setattr(dm, "torchvision_class", lambda: pytest.fail("downloads although the PNGs are there"))
    dm.prepare_data()
    dm.setup()
    test_images, test_labels = stored(20, 10, seed=1)
    assert torch.equal(dm.splits["test"][0], test_images) and torch.equal(dm.splits["test"][1], test_labels)
    train_images, train_labels = stored(40, 10, seed=0)
    (x, y), (x_val, y_val) = dm.splits["train"], dm.splits["val"]
    order = torch.randperm(40, generator=gen(0))  # the datamodule's seeded split
    assert torch.equal(torch.cat([x_val, x]), train_images[order])
    assert torch.equal(torch.cat([y_val, y]), train_labels[order])


def test_cifar100_reads_a_png_folder_named_by_its_real_classes(tmp_path):
    names = CIFAR100DataModule._default_names
    assert names[:2] == ("apple", "aquarium_fish") and len(set(names)) == 100
    write_image_folder(tmp_path / "cifar100", names, n_train=100, n_test=100)
    dm = CIFAR100DataModule(root=str(tmp_path), val_size=10, download=False)
    dm.setup("test")
    assert torch.equal(dm.splits["test"][1], stored(100, 100, seed=1)[1])


def test_the_pickles_win_over_a_png_folder(tmp_path):
    write_cifar_dataset(tmp_path, 10, n_train=50, n_test=20)
    write_image_folder(tmp_path / "cifar10", CIFAR10_CLASSES, n_train=30, n_test=20, seed=7)
    dm = CIFAR10DataModule(root=str(tmp_path), val_size=10, download=False)
    dm.setup("test")
    pickled, labels = class_images(20, 10, 3, 32, seed=1)  # the pickles' test split, in file order
    assert torch.equal(dm.splits["test"][0], torch.from_numpy(pickled).permute(0, 3, 1, 2))
    assert torch.equal(dm.splits["test"][1], torch.from_numpy(labels))


@pytest.mark.parametrize("classes,detail", [
    (("circle", "square", "triangle"),
     "missing: airplane, automobile, bird, cat, deer, ...; not a class: circle, square, triangle"),
    ((*CIFAR10_CLASSES, "zebra"), "not a class: zebra"),
])  # fmt: skip
def test_a_png_folder_with_other_classes_is_refused(tmp_path, classes, detail):
    write_image_folder(tmp_path / "cifar10", classes, n_train=len(classes), n_test=len(classes))
    with pytest.raises(DataError) as err:
        CIFAR10DataModule(root=str(tmp_path), download=False).setup("fit")
    assert str(err.value) == (
        f"{tmp_path / 'cifar10' / 'train'} is not a CIFAR10 PNG folder: its class folders differ"
        f" from CIFAR10's 10 classes ({detail})"
    )


def test_nothing_found_names_both_layouts(tmp_path):
    with pytest.raises(DataError) as err:
        CIFAR10DataModule(root=str(tmp_path), download=False).setup("test")
    assert str(err.value) == (
        f"CIFAR10 not found: looked in {(tmp_path / 'cifar-10-batches-py').resolve()} for test_batch"
        f" and in {(tmp_path / 'cifar10' / 'test').resolve()} for PNG class folders airplane/,"
        " automobile/, ... (download is off). Put either there, or point data.root /"
        " SOFTCAL_DATA_ROOT at a folder that has them."
    )


# --------------------------------------------------------------------------- reflect padding


@pytest.mark.parametrize("device", ["cpu", CUDA])
@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
@pytest.mark.parametrize("padding,hflip", [(1, False), (2, True), (4, True), (6, False)])
def test_reflect_crop_equals_reflect_padding_then_slicing(device, dtype, padding, hflip):
    images = torch.randint(0, 256, (48, 3, 7, 9), generator=gen(0)).to(dtype).to(device)
    out = augment_batch(images, padding, hflip, gen(3, device), pad_mode="reflect")
    assert out.dtype == dtype and out.device == images.device
    assert torch.equal(out, reference_crop(images, padding, "reflect", hflip, seed=3))


@pytest.mark.parametrize("hflip", [False, True])
def test_the_default_zero_padding_is_what_it_was(hflip):
    images = torch.randint(0, 256, (48, 3, 7, 9), generator=gen(0), dtype=torch.uint8)
    assert torch.equal(
        augment_batch(images, 3, hflip, gen(4)), reference_crop(images, 3, "zeros", hflip, seed=4)
    )


def test_reflect_needs_a_border_thinner_than_the_image():
    images = torch.zeros(2, 1, 4, 6)
    assert random_crop(images, 3, gen(0), pad_mode="reflect").shape == images.shape
    with pytest.raises(ValueError, match="reflect padding 4 needs images larger"):
        random_crop(images, 4, gen(0), pad_mode="reflect")
    with pytest.raises(ValueError, match="pad_mode must be"):
        random_crop(images, 1, gen(0), pad_mode="wrap")
    with pytest.raises(DataError, match="crop_padding=32 is too deep"):
        CIFAR10DataModule(crop_padding=32, crop_pad_mode="reflect")
    with pytest.raises(DataError, match="crop_pad_mode must be"):
        CIFAR10DataModule(crop_pad_mode="edge")


def test_the_datamodule_crops_with_its_pad_mode(cifar10_root):
    images = torch.randint(0, 256, (16, 3, 32, 32), generator=gen(1), dtype=torch.uint8)
    for mode in ("zeros", "reflect"):
        dm = CIFAR10DataModule(root=str(cifar10_root), crop_padding=2, crop_pad_mode=mode, download=False)
        mean, std = torch.tensor(dm.mean), torch.tensor(dm.std)
        expected = normalize(reference_crop(images, 2, mode, True, seed=5), mean, std)
        assert torch.equal(dm.preprocess(images, train=True, generator=gen(5)), expected)
        assert torch.equal(dm.preprocess(images), normalize(images, mean, std))  # evaluation: as is


# --------------------------------------------------------------------------- alternating flips


def images_ids(n: int, shape: tuple[int, ...] = (2, 3, 5)) -> tuple[torch.Tensor, torch.Tensor]:
    """n distinct random images whose left-right mirror differs from them; labels name them."""
    images = torch.randint(0, 256, (n, *shape), generator=gen(0), dtype=torch.uint8)
    assert all(not torch.equal(x, x.flip(-1)) for x in images)
    return images, torch.arange(n)


def flip_states(batches, images: torch.Tensor) -> dict[int, bool]:
    """{image id: served mirrored?} over ``batches``, each image checked to be itself or its mirror."""
    states = {}
    for x, y in batches:
        x, y = x.cpu(), y.cpu()  # from a device-resident loader too
        for served, i in zip(x, y.tolist(), strict=True):
            mirrored = torch.equal(served, images[i].flip(-1))
            assert mirrored or torch.equal(served, images[i]), "an image is served as is or mirrored"
            assert i not in states, "every image once per epoch"
            states[i] = mirrored
    return states


def flip_loader(images, labels, rank: int = 0, world_size: int = 1, **kwargs) -> TensorBatchLoader:
    return TensorBatchLoader(
        images, labels, 8, shuffle=True, seed=5, rank=rank, world_size=world_size, **kwargs
    )


def interrupt(loader: TensorBatchLoader, in_epoch_1: int) -> None:
    """Serve epoch 0, then ``in_epoch_1`` batches of epoch 1 to the model: an odd epoch, so a
    resume that lost the epoch would flip the wrong way."""
    list(loader)
    batches = iter(loader)
    for _ in range(in_epoch_1):
        next(batches)
        loader.mark_consumed()


@pytest.mark.parametrize("device", ["cpu", CUDA])
@pytest.mark.parametrize("world_size", [1, 2])
def test_alternate_flips_show_every_image_both_ways_in_two_epochs(world_size, device):
    images, labels = images_ids(96)
    on = torch.device(device)  # the data moves there, as with device_resident
    loaders = [flip_loader(images, labels, r, world_size, flip_seed=11, device=on) for r in range(world_size)]
    epochs = []
    for _ in range(3):  # each epoch's batches from every process together
        epochs.append(flip_states([batch for loader in loaders for batch in loader], images))
    assert sorted(epochs[0]) == list(range(96))
    assert all(epochs[1][i] != epochs[0][i] for i in range(96)), "epoch 1 mirrors what epoch 0 did not"
    assert epochs[2] == epochs[0]
    assert 20 < sum(epochs[0].values()) < 76, "the per-image bits are random"
    bits = loaders[0].flip_bits().cpu()
    assert epochs[0] == {i: bool(bits[i]) for i in range(96)}  # a function of the index alone
    other = flip_states(flip_loader(images, labels, flip_seed=12), images)
    assert other != epochs[0], "another run seed, other bits"


def test_a_resumed_loader_flips_as_an_uninterrupted_one():
    images, labels = images_ids(100)
    uninterrupted = flip_loader(images, labels, flip_seed=3)
    reference = [list(uninterrupted) for _ in range(3)]
    interrupted = flip_loader(images, labels, flip_seed=3)
    interrupt(interrupted, in_epoch_1=5)
    assert interrupted.state_dict() == {"epoch": 1, "consumed": 5}
    restored = flip_loader(images, labels, flip_seed=3, device=torch.device("cpu"))
    restored.load_state_dict(interrupted.state_dict())
    for got, want in zip([list(restored), list(restored)], [reference[1][5:], reference[2]], strict=True):
        assert len(got) == len(want)
        assert all(
            torch.equal(a, b)
            for (x, y), (x0, y0) in zip(got, want, strict=True)
            for a, b in ((x, x0), (y, y0))
        )


def test_by_default_nothing_is_flipped_by_the_loader_and_preprocess_is_unchanged(cifar10_root):
    images, labels = images_ids(100)
    loader = flip_loader(images, labels)
    for _ in range(2):
        for x, y in loader:
            assert torch.equal(x, images[y])
    dm = CIFAR10DataModule(root=str(cifar10_root), val_size=100, download=False)
    assert (dm.crop_pad_mode, dm.alternate_flips, dm.flip_seed) == ("zeros", False, None)
    assert dm.train_dataloader().flip_seed is None
    batch = dm.splits["train"][0][:64]
    expected = normalize(
        reference_crop(batch, 4, "zeros", True, seed=9), torch.tensor(dm.mean), torch.tensor(dm.std)
    )
    assert torch.equal(dm.preprocess(batch, train=True, generator=gen(9)), expected)


def test_the_datamodule_alternates_flips_and_then_only_crops(cifar10_root):
    def datamodule() -> CIFAR10DataModule:
        dm = CIFAR10DataModule(
            root=str(cifar10_root), val_size=100, batch_size=50, download=False, split_seed=4,
            crop_padding=2, crop_pad_mode="reflect", alternate_flips=True,
        )  # fmt: skip
        dm.setup("fit")
        dm.splits["train"] = (images, labels)  # distinct images, named by their labels
        return dm

    images, labels = images_ids(400, (3, 32, 32))
    dm = datamodule()
    assert dm.flip_seed == 4
    loader = dm.train_dataloader()
    first, second = flip_states(loader, images), flip_states(loader, images)
    assert sorted(first) == list(range(400)) and all(first[i] != second[i] for i in range(400))
    batch = images[:64]
    mean, std = torch.tensor(dm.mean), torch.tensor(dm.std)
    expected = normalize(reference_crop(batch, 2, "reflect", False, seed=2), mean, std)
    assert torch.equal(dm.preprocess(batch, train=True, generator=gen(2)), expected), "crop, no second flip"

    reference = datamodule().train_dataloader()
    reference_epochs = [list(reference), list(reference)]
    interrupted = datamodule()
    interrupt(interrupted.train_dataloader(), in_epoch_1=3)
    resumed = datamodule()
    resumed.load_state_dict(interrupted.state_dict())  # what Lightning does with a checkpoint
    got = list(resumed.train_dataloader())
    assert len(got) == len(reference_epochs[1][3:]) == 5  # 400 // 50 batches, 3 consumed
    assert all(torch.equal(x, x0) for (x, _), (x0, _) in zip(got, reference_epochs[1][3:], strict=True))


# --------------------------------------------------------------------------- options of every dataset


def test_every_datamodule_has_the_pad_mode_and_alternating_flips(tmp_path):
    """The options live on the base class: an image folder gets them too, and its own image
    size (an argument, not a class fact) bounds the reflected border."""
    from softcal.data import ImageFolderDataModule, MNISTDataModule

    write_image_folder(tmp_path / "shapes", n_train=20, size=8)
    dm = ImageFolderDataModule(root=str(tmp_path), folder="shapes", image_size=8, val_size=8,
                               crop_padding=2, crop_pad_mode="reflect", alternate_flips=True,
                               split_seed=6, download=False)  # fmt: skip
    assert dm.train_dataloader().flip_seed == 6
    batch = dm.splits["train"][0][:16]
    expected = normalize(reference_crop(batch, 2, "reflect", False, seed=3),
                         torch.tensor(dm.mean), torch.tensor(dm.std))  # fmt: skip
    assert torch.equal(dm.preprocess(batch, train=True, generator=gen(3)), expected), "crop, no second flip"
    with pytest.raises(DataError, match=r"crop_padding=8 is too deep to reflect ImageFolder's 8x8 images"):
        ImageFolderDataModule(root=str(tmp_path), folder="shapes", image_size=8, crop_padding=8,
                              crop_pad_mode="reflect")  # fmt: skip
    assert MNISTDataModule(crop_padding=2, crop_pad_mode="reflect").crop_pad_mode == "reflect"
    with pytest.raises(DataError, match="crop_padding=28 is too deep to reflect MNIST's 28x28"):
        MNISTDataModule(crop_padding=28, crop_pad_mode="reflect")
