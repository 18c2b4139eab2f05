"""Glass blur: blur, shuffle pixels locally, blur again (make_cifar_c.py ``glass_blur``).

The reference's shuffle visits pixels one at a time, bottom-right to top-left over rows and
columns 2 .. size-1 (``range(32 - 1, 1, -1)``), and swaps each with the pixel at a random
offset (dy, dx), each drawn from ``randint(-1, 1)`` - that is from {-1, 0}, never +1: a pixel
only ever swaps with itself or with its upper, left or upper-left neighbour. Because of that
order, a pixel swapped up-left can be carried further on by the swaps still to come.

``shuffle_pixels`` computes the result of that sequential loop for all pixels at once, exactly,
given the same offsets (drawn here as one move code per cell, see MOVES). Since offsets only
point up or left, the pixels that can swap into a cell p are its lower-right, lower and right
neighbours (if visited), in that order, and all of them are visited before p. So:

* the content of p when p is visited, C(p), is the content of the last neighbour that swapped
  into p (as it was when that neighbour was visited), or p's original pixel if none did. That
  is a pointer p -> neighbour that only runs down or right; following it to its end (pointer
  jumping: ceil(log2(H + W)) rounds of ``ptr = ptr[ptr]``) gives C for every cell;
* a visited cell with offset 0, and every cell that is never visited, ends with C(p);
* a visited cell q that swapped into p = q + offset ends with what p held just before: C of
  the neighbour that swapped into p before q did, or p's original pixel if q was the first.

The only difference from the reference is where the offsets come from (a seeded torch
generator per image instead of numpy's global stream); for the same offsets the result is
bit for bit the reference loop's (tests/test_corruptions_reference.py checks it against the loop).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from softcal.shift.filters import gaussian_blur, to_uint8
from softcal.shift.seeding import Sampler

#: glass_blur: (sigma of skimage's Gaussian, max_delta, iterations). max_delta is 1 at every
#: severity; the exact vectorised shuffle relies on it (offsets in {-1, 0}).
GLASS = ((0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2))


#: The offset (dy, dx) of each move code: dy = -(code >> 1), dx = -(code & 1). Two independent
#: draws from {-1, 0} (the reference's randint(-1, 1) twice) are one uniform code in 0..3.
MOVES = {0: (0, 0), 1: (0, -1), 2: (-1, 0), 3: (-1, -1)}


def glass_draws(severity: int, shape: tuple[int, int, int]) -> Sampler:
    """One move code (0..3, see MOVES) per cell and iteration: (count, iterations, H, W) uint8."""
    size = (GLASS[severity - 1][2], shape[1], shape[2])
    return lambda generator, count: (
        torch.randint(0, 4, (count, *size), generator=generator, dtype=torch.uint8),
    )


def glass_blur(images: Tensor, severity: int, moves: Tensor) -> Tensor:
    """skimage gaussian (scipy 'nearest' border, truncate 4), truncated to uint8, the shuffles,
    and the same Gaussian again, as the reference does it (float64)."""
    sigma, _, iterations = GLASS[severity - 1]
    x = to_uint8(gaussian_blur(images.double() / 255, sigma, "nearest"))
    for iteration in range(iterations):
        x = shuffle_pixels(x, moves[:, iteration])
    return to_uint8(gaussian_blur(x.double() / 255, sigma, "nearest"))


class _Neighbours:
    """A grid padded once by one cell of ``fill``, so that each neighbour view is a slice
    (no copy): ``at(down, right)[..., r, c]`` is grid[..., r + down, c + right]."""

    def __init__(self, grid: Tensor, fill: int) -> None:
        self.h, self.w = grid.shape[-2:]
        self.padded = F.pad(grid, (1, 1, 1, 1), value=fill)

    def at(self, down: int, right: int) -> Tensor:
        return self.padded[..., 1 + down : 1 + down + self.h, 1 + right : 1 + right + self.w]


def shuffle_pixels(images: Tensor, moves: Tensor) -> Tensor:
    """One pass of the reference's sequential local swaps on (N, C, H, W), all cells at once.

    ``moves``: (N, H, W) move codes (see MOVES); only cells in rows and columns 2..size-1 are
    visited, the others' codes are ignored. See the module docstring for the method.
    """
    n, c, h, w = images.shape
    rows, cols = torch.arange(h).view(h, 1), torch.arange(w).view(1, w)
    visited = ((rows >= 2) & (cols >= 2)).to(torch.uint8)
    move = _Neighbours(moves * visited, 0)  # 0: no swap, also off the grid
    index = rows * w + cols  # every cell's flat index, (H, W): broadcast over the batch
    cell = _Neighbours(index, 0)
    # Each visited cell swaps with its upper-left (code 3), upper (2) or left (1) neighbour.
    # Seen from a target p: did its lower-right, lower or right neighbour swap into it? The
    # last swap into p decides what p holds when it is visited: the right neighbour (same
    # row, visited last), else the lower one, else the lower-right one, else nobody.
    pointer = torch.where(move.at(1, 1) == 3, cell.at(1, 1), index)
    pointer = torch.where(move.at(1, 0) == 2, cell.at(1, 0), pointer)
    pointer = torch.where(move.at(0, 1) == 1, cell.at(0, 1), pointer)
    root = pointer.reshape(n, h * w)
    for _ in range(math.ceil(math.log2(h + w))):  # chains run down or right: < H + W links
        root = root.gather(1, root)
    held = _Neighbours(root.view(n, h, w), 0)  # C(p) = the original pixel at root(p)
    # A swapper ends with what its target held just before its swap. Code 3 (the first that
    # can swap into its target): the target's original pixel. Code 2: C(target's lower-right)
    # if that one swapped in first. Code 1: C(target's lower), else C(target's lower-right).
    own = move.at(0, 0)
    source = torch.where(own == 3, cell.at(-1, -1), held.at(0, 0))
    from_up = torch.where(move.at(0, 1) == 3, held.at(0, 1), cell.at(-1, 0))
    source = torch.where(own == 2, from_up, source)
    from_left = torch.where(move.at(1, 0) == 3, held.at(1, 0), cell.at(0, -1))
    from_left = torch.where(move.at(1, -1) == 2, held.at(1, -1), from_left)
    source = torch.where(own == 1, from_left, source)
    flat = images.reshape(n, c, h * w)
    return flat.gather(2, source.reshape(n, 1, h * w).expand(n, c, h * w)).view(n, c, h, w)
