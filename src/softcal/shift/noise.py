"""Gaussian, shot and impulse noise, with the CIFAR-10-C amounts of make_cifar_c.py.

Each function takes the random part as an argument (standard normals or uniforms drawn per
image by ``softcal.shift.seeding``), so tests can feed fixed draws and the pixel arithmetic is
the reference's, in float64 as numpy does it.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import Tensor

from softcal.shift.filters import to_uint8

#: make_cifar_c.py gaussian_noise: std of the added noise, in [0, 1] units.
GAUSSIAN_SIGMAS = (0.04, 0.06, 0.08, 0.09, 0.10)
#: shot_noise: photons per unit intensity; the image is Poisson(x * rate) / rate.
SHOT_RATES = (500, 250, 100, 75, 50)
#: impulse_noise: skimage random_noise 's&p' amount, the fraction of values replaced (half
#: by 0, half by 1), each channel value on its own.
IMPULSE_AMOUNTS = (0.01, 0.02, 0.03, 0.05, 0.07)


def gaussian_noise(images: Tensor, severity: int, normal: Tensor) -> Tensor:
    """x + sigma * z, clipped: ``normal`` holds z, standard normals of the images' shape."""
    x = images.double() / 255
    return to_uint8(x + normal * GAUSSIAN_SIGMAS[severity - 1])


def shot_noise(images: Tensor, severity: int, uniforms: Tensor) -> Tensor:
    """Poisson(x * rate) / rate, the Poisson counts drawn by inverting their CDF at ``uniforms``.

    Inverting the CDF uses exactly one uniform per value, so an image's counts do not depend
    on the other images in its seeded block (a rejection sampler's consumption would).
    """
    rate = SHOT_RATES[severity - 1]
    counts = poisson_quantiles(images, uniforms, rate)
    return to_uint8(counts / rate)


def poisson_quantiles(images: Tensor, uniforms: Tensor, rate: int) -> Tensor:
    """The Poisson(v / 255 * rate) quantile at each uniform, v the uint8 pixel value.

    Only 256 means occur, so their CDFs are one table; rows are laid end to end with row v
    shifted up by v, which keeps the whole table sorted, and one ``searchsorted`` of u + v
    finds k = min{k : CDF_v(k) > u} for every value at once.
    """
    table = _shifted_cdf_table(rate)
    width = table.numel() // 256
    values = images.long()
    position = torch.searchsorted(table, (uniforms + values).contiguous(), right=True)
    return (position - values * width).clamp(max=width - 1).double()


@functools.cache
def _shifted_cdf_table(rate: int) -> Tensor:
    """Row v: v + the CDF of Poisson(v / 255 * rate) at 0..K, K far (12 sd) into the tail."""
    width = math.ceil(rate + 12 * math.sqrt(rate) + 12) + 1
    k = torch.arange(width, dtype=torch.float64)
    lam = (torch.arange(256, dtype=torch.float64) / 255 * rate).unsqueeze(1)
    log_pmf = k * torch.log(lam.clamp_min(1e-300)) - lam - torch.lgamma(k + 1)
    pmf = torch.where(lam > 0, log_pmf.exp(), (k == 0).double())
    # The last entry is 1 exactly, so every u < 1 finds its quantile within its own row.
    cdf = pmf.cumsum(1).clamp(max=1.0)
    cdf[:, -1] = 1.0
    return (cdf + torch.arange(256, dtype=torch.float64).unsqueeze(1)).flatten()


def impulse_noise(images: Tensor, severity: int, uniforms: Tensor) -> Tensor:
    """Salt and pepper: a value becomes 1 where u < amount / 2 and 0 where amount / 2 <= u < amount.

    skimage draws "flipped" with probability amount and "salted" with probability 1/2 from two
    uniforms; one uniform cut at amount / 2 and amount gives the same three probabilities.
    """
    amount = IMPULSE_AMOUNTS[severity - 1]
    x = images.double() / 255
    x = torch.where(uniforms < amount / 2, 1.0, x)
    x = torch.where((uniforms >= amount / 2) & (uniforms < amount), 0.0, x)
    return to_uint8(x)
