"""softcal.shift against independent references (tests/shift_references.py: make_cifar_c.py's
recipes in numpy, scipy and PIL) on 20 real CIFAR-10 test images, at every severity.

Deterministic corruptions are compared as they are; random ones with their random parts
fixed (the same normals, uniforms, offsets, angles or crops fed to both). Every one must be
within one grey level everywhere; most are bit for bit equal, and where float rounding
before the reference's truncation (np.uint8) can tip a value, the share of values off by one
is bounded too.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from softcal.errors import DataError
from softcal.shift import blur, digital, elastic, frost, glass, motion, noise, weather
from softcal.shift.corruptions import SEVERITIES, frost_images_dir
from tests import shift_references as ref

pytestmark = pytest.mark.skipif(not ref.SAMPLE.is_dir(), reason=f"no CIFAR-10 sample at {ref.SAMPLE}")


@pytest.fixture(scope="module")
def clean() -> np.ndarray:
    return ref.cifar_images(20)


def assert_close(ours: torch.Tensor, expected: np.ndarray, max_off_share: float = 0.0) -> None:
    """Within one grey level everywhere; at most ``max_off_share`` of the values off at all."""
    diff = np.abs(ref.to_nhwc(ours).astype(int) - expected.astype(int))
    assert diff.max() <= 1, f"max difference {diff.max()} grey levels"
    assert (diff > 0).mean() <= max_off_share, f"{(diff > 0).mean():.5f} of values differ by one"


def per_image(function, images: np.ndarray, *args_per_image) -> np.ndarray:
    return np.stack([function(image, *(a[i] for a in args_per_image)) for i, image in enumerate(images)])


# ----------------------------------------------------------------------------- deterministic


@pytest.mark.parametrize("severity", SEVERITIES)
def test_contrast_pixelate_jpeg_and_defocus_are_bit_exact(clean, severity):
    x = ref.to_nchw(clean)
    cases = [
        (digital.contrast, ref.contrast, digital.CONTRAST),
        (digital.pixelate, ref.pixelate, digital.PIXELATE),
        (digital.jpeg_compression, ref.jpeg, digital.JPEG_QUALITY),
        (blur.defocus_blur, lambda im, c: ref.defocus(im, *c), blur.DEFOCUS),
    ]
    for ours, reference, table in cases:
        expected = np.stack([reference(image, table[severity - 1]) for image in clean])
        assert_close(ours(x, severity), expected)


@pytest.mark.parametrize("severity", SEVERITIES)
def test_brightness_matches_hsv_within_float_rounding(clean, severity):
    """We scale r, g, b by v'/v instead of the HSV round trip (colorsys here, skimage in the
    script): the same map, so only values a float rounding away from a whole level differ."""
    expected = np.stack([ref.brightness(image, digital.BRIGHTNESS[severity - 1]) for image in clean])
    assert_close(digital.brightness(ref.to_nchw(clean), severity), expected, max_off_share=0.01)


@pytest.mark.parametrize("severity", SEVERITIES)
def test_zoom_blur_matches_scipy_zoom(clean, severity):
    """The script sums scipy.ndimage.zoom outputs in float32; we sum the same maps in another
    order (one matrix), so a float32 rounding can tip a truncation."""
    end = (1.06, 1.11, 1.16, 1.21, 1.26)[severity - 1]
    expected = np.stack([ref.zoom_blur(image, end) for image in clean])
    assert_close(blur.zoom_blur(ref.to_nchw(clean), severity), expected, max_off_share=0.005)


def test_zoom_factors_are_numpys_arange():
    assert [len(z) for z in blur.ZOOM_FACTORS] == [7, 12, 16, 21, 26]
    assert blur.ZOOM_FACTORS[2][-1] == pytest.approx(1.15) and blur.ZOOM_FACTORS[0][-1] == pytest.approx(1.06)


# ----------------------------------------------------------------------------- random parts fixed


@pytest.mark.parametrize("severity", SEVERITIES)
def test_noise_with_given_draws(clean, severity):
    rng = np.random.default_rng(severity)
    x = ref.to_nchw(clean)
    normal = rng.standard_normal(clean.shape)
    expected = per_image(ref.gaussian_noise, clean, [noise.GAUSSIAN_SIGMAS[severity - 1]] * 20, normal)
    ours = noise.gaussian_noise(x, severity, torch.from_numpy(normal.transpose(0, 3, 1, 2)))
    assert_close(ours, expected)
    uniform = rng.random(clean.shape)
    expected = per_image(ref.shot_noise, clean, [noise.SHOT_RATES[severity - 1]] * 20, uniform)
    assert_close(noise.shot_noise(x, severity, torch.from_numpy(uniform.transpose(0, 3, 1, 2))), expected)


@pytest.mark.parametrize("severity", SEVERITIES)
def test_glass_blur_with_given_offsets_equals_the_sequential_loop(clean, severity):
    """The vectorised shuffle is the script's loop, exactly (next test); the two Gaussian blurs
    around it sum in another order than scipy, so a truncation can tip by one level."""
    sigma, _, iterations = glass.GLASS[severity - 1]
    moves = torch.randint(0, 4, (20, iterations, 32, 32), generator=torch.Generator().manual_seed(severity))
    codes = moves.numpy().astype(int)
    offsets = np.stack([-(codes >> 1), -(codes & 1)], axis=2)  # (N, iterations, 2, H, W)
    expected = per_image(lambda im, off: ref.glass(im, sigma, iterations, off), clean, offsets)
    assert_close(glass.glass_blur(ref.to_nchw(clean), severity, moves), expected, max_off_share=1e-3)


def test_pixel_shuffle_alone_is_the_loop_on_odd_shapes():
    rng = np.random.default_rng(0)
    for h, w in [(32, 32), (28, 28), (7, 11), (3, 3), (5, 2)]:
        images = rng.integers(0, 256, (3, 2, h, w), dtype=np.uint8)
        codes = rng.integers(0, 4, (3, h, w))
        ours = glass.shuffle_pixels(torch.from_numpy(images), torch.from_numpy(codes.astype(np.uint8)))
        for i in range(3):
            expected = ref.shuffle(images[i].transpose(1, 2, 0), -(codes[i] >> 1), -(codes[i] & 1))
            np.testing.assert_array_equal(ours[i].permute(1, 2, 0).numpy(), expected)


@pytest.mark.parametrize("severity", SEVERITIES)
def test_motion_blur_with_given_angles_is_imagemagicks_sum(clean, severity):
    angles = np.random.default_rng(severity).uniform(-45, 45, 20)
    radius, sigma = motion.MOTION[severity - 1]
    expected = per_image(lambda im, a: ref.motion(im, radius, sigma, a), clean, angles)
    # float32 sums rounded to levels: a value a hair from .5 may round the other way.
    assert_close(motion.motion_blur(ref.to_nchw(clean), severity, torch.from_numpy(angles)), expected, 1e-4)


@pytest.mark.parametrize("severity", SEVERITIES)
def test_snow_with_given_draws(clean, severity):
    rng = np.random.default_rng(severity)
    normal, angles = rng.standard_normal((20, 32, 32)), rng.uniform(-135, -45, 20)
    params = weather.SNOW[severity - 1]
    expected = per_image(lambda im, z, a: ref.snow(im, params, z, a), clean, normal, angles)
    ours = weather.snow(ref.to_nchw(clean), severity, torch.from_numpy(normal), torch.from_numpy(angles))
    assert_close(ours, expected, max_off_share=0.002)


@pytest.mark.parametrize("severity", SEVERITIES)
def test_fog_with_given_uniforms_is_the_scripts_plasma_fractal(clean, severity):
    draws = weather.fog_draws(severity, (3, 32, 32))(torch.Generator().manual_seed(severity), 20)
    weight, decay = weather.FOG[severity - 1]
    fractals = []
    for i in range(20):  # the script draws squares, then both diamond sets, level by level
        noises = [level[i, k].numpy() for level in draws for k in range(3)]
        fractals.append(ref.plasma_fractal(noises, 32, decay))
    ours = weather.plasma_fractal(list(draws), decay).numpy()
    np.testing.assert_allclose(ours, np.stack(fractals), atol=1e-12)
    expected = per_image(lambda im, f: ref.fog(im, weight, f), clean, fractals)
    assert_close(weather.fog(ref.to_nchw(clean), severity, *draws), expected)


@pytest.mark.parametrize("severity", SEVERITIES)
def test_elastic_transform_with_given_draws_matches_scipy(clean, severity):
    """Both warps are bilinear with the script's borders. The remaining difference: OpenCV's
    warpAffine (and here scipy's affine_transform) and our gather order float operations
    differently, and the script rounds sample positions to 1/32 pixel (OpenCV), which neither
    this reference nor we do."""
    rng = np.random.default_rng(severity)
    points, field = rng.random((20, 3, 2)), rng.random((20, 2, 32, 32))
    alpha, sigma, shift = (32 * f for f in elastic.ELASTIC[severity - 1])
    def reference(image: np.ndarray, p: np.ndarray, f: np.ndarray) -> np.ndarray:
        return ref.elastic(image, (alpha, sigma, shift), -shift + 2 * shift * p, f[0] * 2 - 1, f[1] * 2 - 1)

    expected = per_image(reference, clean, points, field)
    x = ref.to_nchw(clean)
    ours = elastic.elastic_transform(x, severity, torch.from_numpy(points), torch.from_numpy(field))
    assert_close(ours, expected, max_off_share=0.01)


@pytest.fixture(scope="module")
def frost_dir():
    try:
        return frost_images_dir()
    except DataError as err:
        pytest.skip(f"frost photographs not available ({err})")


def test_frost_photographs_are_shrunk_as_opencv_does(frost_dir):
    """cv2.resize(fx=0.2) written out as bilinear interpolation lands on whole pixels 5k + 2."""
    photos = frost.load_frost_photos(frost_dir)
    for name, photo in zip(frost.USED_FROST_FILES, photos, strict=True):
        from PIL import Image

        original = np.asarray(Image.open(frost_dir / name).convert("RGB"))
        np.testing.assert_array_equal(photo.permute(1, 2, 0).numpy(), ref.cv2_shrink(original))


@pytest.mark.parametrize("severity", SEVERITIES)
def test_frost_with_given_picks(clean, frost_dir, severity):
    photos = frost.load_frost_photos(frost_dir)
    picks = np.random.default_rng(severity).random((20, 3))
    crops = frost.frost_crops(photos, torch.from_numpy(picks), (3, 32, 32))
    expected = []
    for image, (u_photo, u_row, u_col) in zip(clean, picks, strict=True):
        shrunk = photos[int(u_photo * 5)].permute(1, 2, 0).numpy()
        # np.random.randint(0, rows - 32) for a uniform u: int(u * (rows - 32)).
        start = (int(u_row * (shrunk.shape[0] - 32)), int(u_col * (shrunk.shape[1] - 32)))
        expected.append(ref.frost(image, frost.FROST[severity - 1], shrunk, start))
    assert_close(frost.frost(ref.to_nchw(clean), severity, crops), np.stack(expected))
