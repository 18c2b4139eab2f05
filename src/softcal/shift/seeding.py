"""Seeded random draws that depend on an image's absolute index only, never on the batch.

An evaluation corrupts a test set batch by batch, and the batch size must not change which
noise image i gets. So draws are made for fixed blocks of ``CHUNK`` absolute indices, each
block from its own generator seeded by (seed, corruption, severity, block), and sliced to the
requested range: image ``first_index + i`` gets the same draw whatever batch it comes in.
Every sampler draws a fixed number of values per image (never a count that depends on the
pixels), so a block's draws are the same whichever of its images are asked for.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

#: Images per seeded block. Larger blocks waste more draws on small batches; smaller ones
#: cost more generator set-ups per batch.
CHUNK = 256

#: A sampler draws every random part of a corruption for ``count`` images from a generator;
#: each tensor it returns has ``count`` rows.
Sampler = Callable[[torch.Generator, int], tuple[Tensor, ...]]


def block_generator(seed: int, key: tuple[int, ...], block: int) -> torch.Generator:
    """A CPU generator for one block; numpy's SeedSequence mixes the key into 64 good bits."""
    words = np.random.SeedSequence([seed, *key, block]).generate_state(2, dtype=np.uint32)
    generator = torch.Generator()
    generator.manual_seed((int(words[0]) << 32) | int(words[1]))
    return generator


def seeded_draws(sampler: Sampler, *, seed: int, key: tuple[int, ...], first_index: int,
                 count: int) -> tuple[Tensor, ...]:  # fmt: skip
    """The draws of images first_index .. first_index + count - 1, block by block."""
    first_block, last_block = first_index // CHUNK, (first_index + count - 1) // CHUNK
    pieces: list[tuple[Tensor, ...]] = []
    for block in range(first_block, last_block + 1):
        start = block * CHUNK
        low = max(first_index, start) - start
        high = min(first_index + count, start + CHUNK) - start
        draws = sampler(block_generator(seed, key, block), CHUNK)
        pieces.append(tuple(draw[low:high] for draw in draws))
    return tuple(torch.cat(parts) for parts in zip(*pieces, strict=True))


def uniform(shape: tuple[int, ...]) -> Sampler:
    """A sampler of float64 uniforms on [0, 1), ``shape`` per image."""
    return lambda generator, count: (torch.rand((count, *shape), generator=generator, dtype=torch.float64),)


def standard_normal(shape: tuple[int, ...]) -> Sampler:
    """A sampler of float64 standard normals, ``shape`` per image."""
    return lambda generator, count: (torch.randn((count, *shape), generator=generator, dtype=torch.float64),)
