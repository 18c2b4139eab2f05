"""softcal.shift.corruptions, the public API: names, parsing, one-line errors, shapes, seeding
that does not depend on the batch, and how the pixel change grows with severity.

How close each corruption is to make_cifar_c.py is in test_corruptions_reference.py (fixed
draws, every severity) and test_corruptions_random.py (the random parts' distributions).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from softcal.errors import DataError, SoftcalError
from softcal.shift.corruptions import (
    CORRUPTIONS,
    SEVERITIES,
    corrupt,
    frost_images_dir,
    parse_corruptions,
    parse_severities,
)
from tests import shift_references as ref

NAMES = ", ".join(CORRUPTIONS)
RANDOM = {
    "gaussian_noise", "shot_noise", "impulse_noise", "glass_blur", "motion_blur", "snow", "frost", "fog",
    "elastic_transform",
}  # fmt: skip
NEEDS_SAMPLE = pytest.mark.skipif(not ref.SAMPLE.is_dir(), reason=f"no CIFAR-10 sample at {ref.SAMPLE}")


@pytest.fixture(scope="module")
def frost_dir() -> Path:
    """The shared frost photographs ($SOFTCAL_DATA_ROOT/frost); CI has them."""
    try:
        return frost_images_dir()
    except DataError as err:
        pytest.skip(f"frost photographs not available ({err})")


def run(images: torch.Tensor, name: str, severity: int, request: pytest.FixtureRequest,
        **kwargs) -> torch.Tensor:  # fmt: skip
    """corrupt(), with the frost folder fixture only for frost (the others run without it)."""
    if name == "frost":
        kwargs["frost_dir"] = request.getfixturevalue("frost_dir")
    return corrupt(images, name, severity, **kwargs)


def random_images(shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, shape, generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


# ----------------------------------------------------------------------------- names and parsing


def test_the_fifteen_names_in_canonical_order():
    assert CORRUPTIONS == (
        "gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur",
        "zoom_blur", "snow", "frost", "fog", "brightness", "contrast", "elastic_transform", "pixelate",
        "jpeg_compression",
    )  # fmt: skip
    assert SEVERITIES == (1, 2, 3, 4, 5)


def test_parse_corruptions_and_severities():
    assert parse_corruptions("all") == list(CORRUPTIONS)
    assert parse_corruptions("fog, snow,fog") == ["fog", "snow"]
    assert parse_severities("1,3, 5") == [1, 3, 5]
    assert parse_severities("all") == [1, 2, 3, 4, 5]
    assert parse_severities("2,2") == [2]


def test_unknown_names_and_severities_are_one_line_errors_listing_the_valid_ones():
    with pytest.raises(SoftcalError) as caught:
        parse_corruptions("fog,fogg")
    assert str(caught.value) == (
        "unknown corruption 'fogg'; valid names: gaussian_noise, shot_noise, impulse_noise, defocus_blur,"
        " glass_blur, motion_blur, zoom_blur, snow, frost, fog, brightness, contrast, elastic_transform,"
        " pixelate, jpeg_compression or all"
    )
    for text, shown in [("0", "0"), ("1,6", "6"), ("x", "x"), ("", "")]:
        with pytest.raises(SoftcalError) as caught:
            parse_severities(text)
        assert str(caught.value) == f"unknown severity '{shown}'; valid severities: 1, 2, 3, 4, 5"
    images = random_images((2, 3, 32, 32))
    with pytest.raises(SoftcalError) as caught:
        corrupt(images, "all", 1)
    assert str(caught.value) == f"unknown corruption 'all'; valid names: {NAMES}"
    for severity in (0, 6):
        with pytest.raises(SoftcalError) as caught:
            corrupt(images, "fog", severity)
        assert str(caught.value) == f"unknown severity '{severity}'; valid severities: 1, 2, 3, 4, 5"


def test_a_missing_frost_folder_or_photograph_is_a_one_line_error_naming_the_folder(tmp_path, monkeypatch):
    with pytest.raises(DataError) as caught:
        frost_images_dir(tmp_path)
    assert str(caught.value) == (
        f"frost photographs not found: {tmp_path / 'frost'} does not exist; put frost1.png ... frost6.jpg"
        " from github.com/hendrycks/robustness (ImageNet-C/create_c/) there"
    )
    monkeypatch.setenv("SOFTCAL_DATA_ROOT", str(tmp_path))
    with pytest.raises(DataError, match="frost photographs not found: "):
        corrupt(random_images((1, 3, 32, 32)), "frost", 1)  # the default folder, under the data root
    (tmp_path / "frost").mkdir()
    (tmp_path / "frost" / "frost1.png").write_bytes(b"")
    with pytest.raises(DataError) as caught:
        corrupt(random_images((1, 3, 32, 32)), "frost", 1, frost_dir=tmp_path / "frost")
    assert str(caught.value) == (
        f"frost photographs missing in {tmp_path / 'frost'}: frost2.png, frost3.png, frost4.jpg, frost5.jpg;"
        " copy frost1.png ... frost6.jpg from github.com/hendrycks/robustness (ImageNet-C/create_c/) there"
    )


def test_bad_image_tensors_are_refused():
    with pytest.raises(ValueError, match="uint8 tensor of shape"):
        corrupt(torch.zeros(1, 3, 32, 32), "fog", 1)
    with pytest.raises(ValueError, match="1 or 3 channels"):
        corrupt(torch.zeros(1, 2, 32, 32, dtype=torch.uint8), "fog", 1)
    assert corrupt(torch.zeros(0, 3, 32, 32, dtype=torch.uint8), "fog", 1).shape == (0, 3, 32, 32)


# ----------------------------------------------------------------------------- shapes and seeding


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_grey_and_other_sizes_keep_shape_and_dtype(name, request):
    """MNIST-like grey 28 x 28 and a non-square colour size: same shape and dtype back, and
    the images do change."""
    for shape in [(3, 1, 28, 28), (2, 3, 20, 36)]:
        images = random_images(shape)
        out = run(images, name, 3, request)
        assert out.shape == images.shape and out.dtype == torch.uint8
        assert not torch.equal(out, images)


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_seeded_and_independent_of_the_batch(name, request):
    """Image i of a set gets the same draw whatever batch it is in: 100 images at once equal
    the same images in batches of 7 (first_index set), bit for bit. Same seed, same result;
    another seed, another result (for the random corruptions)."""
    images = random_images((100, 3, 32, 32), seed=1)
    whole = run(images, name, 4, request, seed=3)
    pieces = [run(images[i : i + 7], name, 4, request, seed=3, first_index=i) for i in range(0, 100, 7)]
    assert torch.equal(torch.cat(pieces), whole)
    assert torch.equal(run(images, name, 4, request, seed=3), whole)
    other_seed = run(images, name, 4, request, seed=4)
    assert torch.equal(other_seed, whole) == (name not in RANDOM)


def test_blocks_past_the_first_are_seeded_by_absolute_index():
    """Images 250..269 straddle the first block boundary (256): asked alone, they get the
    draws they get inside a run over the whole set."""
    images = random_images((300, 1, 8, 8), seed=2)
    whole = corrupt(images, "gaussian_noise", 2)
    assert torch.equal(corrupt(images[250:270], "gaussian_noise", 2, first_index=250), whole[250:270])
    assert not torch.equal(corrupt(images[250:270], "gaussian_noise", 2), whole[250:270])


# ----------------------------------------------------------------------------- severity


#: The canonical parameters of these four do not make the pixel change grow with severity (the
#: script's numbers, not ours): glass blur blurs more but shuffles the same, motion blur's
#: severities 3 and 4 differ only in taps whose weight is below 1e-9, frost's image weight
#: falls while its frost weight levels off, and elastic's affine part shrinks with severity.
#: test_corruptions_random.py checks that our change per severity is the reference's.
NOT_MONOTONE = {"glass_blur", "motion_blur", "frost", "elastic_transform"}


@pytest.fixture(scope="module")
def cifar() -> torch.Tensor:
    return ref.to_nchw(ref.cifar_images(60))


@NEEDS_SAMPLE
@pytest.mark.parametrize("name", CORRUPTIONS)
def test_the_change_grows_with_severity(name, cifar, request):
    change = [(run(cifar, name, s, request).float() - cifar.float()).abs().mean().item() for s in SEVERITIES]
    if name in NOT_MONOTONE:
        assert change[4] > change[0] * 0.5 and min(change) > 1, change
    else:
        assert all(a < b for a, b in zip(change, change[1:], strict=False)), change
