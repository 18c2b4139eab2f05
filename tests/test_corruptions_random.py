"""The random corruptions match make_cifar_c.py in distribution.

Noise: on mid-grey images the change has the canonical size (Gaussian std = sigma, Poisson
variance = x / rate, impulse fraction = amount). The others: the mean absolute change from
the clean image, per severity, is within a few per cent of the reference recipe's
(tests/shift_references.py) run with numpy's own random draws in the script's form
(randint offsets, uniform angles, normal snow, uniform fractal noise, randint frost crops,
uniform elastic shifts) on the same real CIFAR-10 images. Both sides use fixed seeds, so the
outcome is fixed; the tolerances leave room for the sampling noise of the two draws.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from softcal.errors import DataError
from softcal.shift import elastic, frost, glass, motion, noise, weather
from softcal.shift.corruptions import SEVERITIES, corrupt, frost_images_dir
from tests import shift_references as ref

MID_GREY = torch.full((64, 3, 32, 32), 128, dtype=torch.uint8)
X = 128 / 255


@pytest.mark.parametrize("severity", SEVERITIES)
def test_gaussian_noise_has_the_canonical_sigma(severity):
    change = (corrupt(MID_GREY, "gaussian_noise", severity).double() - 128) / 255
    assert change.std().item() == pytest.approx(noise.GAUSSIAN_SIGMAS[severity - 1], rel=0.02)
    assert change.mean().item() == pytest.approx(-0.5 / 255, abs=0.002)  # truncation: half a level down


@pytest.mark.parametrize("severity", SEVERITIES)
def test_shot_noise_variance_is_mean_over_rate(severity):
    rate = noise.SHOT_RATES[severity - 1]
    out = corrupt(MID_GREY, "shot_noise", severity).double() / 255
    assert out.var().item() == pytest.approx(X / rate, rel=0.04)
    assert out.mean().item() == pytest.approx(X - 0.5 / 255, abs=0.002)


@pytest.mark.parametrize("severity", SEVERITIES)
def test_impulse_noise_replaces_the_canonical_fraction_half_by_salt_half_by_pepper(severity):
    amount = noise.IMPULSE_AMOUNTS[severity - 1]
    out = corrupt(MID_GREY, "impulse_noise", severity)
    assert (out != 128).double().mean().item() == pytest.approx(amount, rel=0.06)
    assert set(out.unique().tolist()) == {0, 128, 255}
    salt, pepper = (out == 255).sum().item(), (out == 0).sum().item()
    assert salt / (salt + pepper) == pytest.approx(0.5, abs=0.03)


def test_draws_have_the_scripts_ranges():
    generator = torch.Generator().manual_seed(0)
    (moves,) = glass.glass_draws(5, (3, 32, 32))(generator, 256)
    assert moves.shape == (256, 2, 32, 32)
    shares = torch.bincount(moves.flatten().long(), minlength=4) / moves.numel()
    assert torch.allclose(shares, torch.full((4,), 0.25), atol=0.005)  # (dy, dx) uniform on {-1, 0}^2
    (angles,) = motion.angle_draws(*motion.MOTION_ANGLES)(generator, 4096)
    assert -45 <= angles.min() and angles.max() < 45 and abs(angles.mean()) < 1.5
    assert torch.quantile(angles, 0.25).item() == pytest.approx(-22.5, abs=1.5)
    _, angles = weather.snow_draws(1, (3, 32, 32))(generator, 4096)
    assert -135 <= angles.min() and angles.max() < -45 and abs(angles.mean() + 90) < 1.5
    fractals = weather.plasma_fractal(list(weather.fog_draws(1, (1, 28, 28))(generator, 64)), 3)
    assert fractals.shape == (64, 32, 32)
    assert torch.equal(fractals.amin(dim=(1, 2)), torch.zeros(64))
    assert torch.equal(fractals.amax(dim=(1, 2)), torch.ones(64))


# ----------------------------------------------------------------------------- against the reference


def _reference_draws(name: str, severity: int, rng: np.random.Generator, photos: list[np.ndarray]):
    """One image's reference recipe with numpy's draws, as a function of the image."""
    if name == "glass_blur":
        sigma, _, iterations = glass.GLASS[severity - 1]
        offsets = rng.integers(-1, 1, (iterations, 2, 32, 32))
        return lambda im: ref.glass(im, sigma, iterations, offsets)
    if name == "motion_blur":
        angle = rng.uniform(-45, 45)
        return lambda im: ref.motion(im, *motion.MOTION[severity - 1], angle)
    if name == "snow":
        normal, angle = rng.standard_normal((32, 32)), rng.uniform(-135, -45)
        return lambda im: ref.snow(im, weather.SNOW[severity - 1], normal, angle)
    if name == "fog":
        weight, decay = weather.FOG[severity - 1]
        noises = [rng.random((32 // step, 32 // step)) for step in (32, 16, 8, 4, 2) for _ in range(3)]
        return lambda im: ref.fog(im, weight, ref.plasma_fractal(noises, 32, decay))
    if name == "frost":
        photo = photos[rng.integers(5)]
        start = (rng.integers(0, photo.shape[0] - 32), rng.integers(0, photo.shape[1] - 32))
        return lambda im: ref.frost(im, frost.FROST[severity - 1], photo, start)
    alpha, sigma, shift = (32 * f for f in elastic.ELASTIC[severity - 1])
    shifts = rng.uniform(-shift, shift, (3, 2))
    dx, dy = rng.uniform(-1, 1, (32, 32)), rng.uniform(-1, 1, (32, 32))
    return lambda im: ref.elastic(im, (alpha, sigma, shift), shifts, dx, dy)


#: (images, rounds of draws) per comparison: frost's change depends most on which photograph
#: and crop an image gets (one round of 200 images varies by about 5%), so it pools rounds.
SAMPLE_SIZE = {"frost": (200, 4), "elastic_transform": (100, 1)}
#: over 3 s each on a 2-core machine (the reference loops or scipy calls per image)
SLOW_REFERENCES = ("glass_blur", "snow", "frost", "elastic_transform")


@pytest.mark.skipif(not ref.SAMPLE.is_dir(), reason=f"no CIFAR-10 sample at {ref.SAMPLE}")
@pytest.mark.parametrize(
    "name",
    ["motion_blur", "fog", *(pytest.param(name, marks=pytest.mark.slow) for name in SLOW_REFERENCES)],
)
def test_change_per_severity_matches_the_reference_recipe(name):
    """Mean absolute change from the clean image, ours / reference's, at every severity. The
    reference's own profile is kept in view: glass, motion, frost and elastic do not grow
    monotonically with severity in make_cifar_c.py either, and ours follows it."""
    photos: list[np.ndarray] = []
    kwargs = {}
    if name == "frost":
        try:
            kwargs["frost_dir"] = frost_images_dir()
        except DataError as err:
            pytest.skip(f"frost photographs not available ({err})")
        photos = [p.permute(1, 2, 0).numpy() for p in frost.load_frost_photos(kwargs["frost_dir"])]
    count, rounds = SAMPLE_SIZE.get(name, (60, 1))
    clean = ref.cifar_images(count)
    x = ref.to_nchw(clean)
    ratios, reference_change = [], []
    for severity in SEVERITIES:
        ours = expected = 0.0
        for seed in range(rounds):
            rng = np.random.default_rng((severity, seed))
            reference = np.stack([_reference_draws(name, severity, rng, photos)(image) for image in clean])
            expected += np.abs(reference.astype(float) - clean).mean()
            corrupted = ref.to_nhwc(corrupt(x, name, severity, seed=seed, **kwargs))
            ours += np.abs(corrupted.astype(float) - clean).mean()
        reference_change.append(expected / rounds)
        ratios.append(ours / expected)
    assert np.allclose(ratios, 1, atol=0.05), (ratios, reference_change)
