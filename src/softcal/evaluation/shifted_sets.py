"""A run's test images under dataset shift: the CIFAR-10-C corruptions made one set at a time.

:class:`ShiftedSets` holds the uint8 test split (as the datamodule read it for the test pass)
and hands out its first N images corrupted by one corruption at one severity, with
:func:`softcal.shift.corruptions.corrupt` at seed :data:`SEED`. It works in chunks of
:data:`CHUNK` images, each with ``first_index`` set to its position in the split, so an image
is corrupted exactly as it would be in one call over all N (the library seeds its draws per
absolute image index), while memory stays bounded: a corruption's float64 intermediates for
10,000 CIFAR images would take gigabytes at once.

Only the last set is kept (30 MB for the CIFAR-10 test split): the analyses take the logits
of each set once (:meth:`softcal.evaluation.context.EvaluationContext.shifted_logits` caches
those), so a second copy of the pixels would only cost memory. The frost photographs come
from ``<data root>/frost``, the run's ``data.root`` (else ``$SOFTCAL_DATA_ROOT``, else
``data/``), checked before the first frost set is made.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from softcal.shift.corruptions import corrupt, frost_images_dir
from softcal.shift.frost import load_frost_photos
from softcal.shift.seeding import CHUNK as SEEDED_BLOCK

#: The seed of every random corruption: the same pixels for every run, member and analysis.
SEED = 0
#: Images corrupted per call of ``corrupt``: two of the library's seeded blocks, so no block's
#: draws are made twice. Larger chunks are no faster (defocus blur on 2,000 CIFAR images at once
#: took 2.5 times as long as in chunks of 500) and cost memory (1.7 GB over the start for 2,000
#: at severity 5; about 0.4 GB for 512).
CHUNK = 2 * SEEDED_BLOCK

#: (corruption, severity, number of images): one corrupted set.
SetKey = tuple[str, int, int]


class ShiftedSets:
    """The test split's first N images, corrupted one (corruption, severity) at a time."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, data_root: Path) -> None:
        self.images, self.labels, self.data_root = images, labels, Path(data_root)
        self._last: tuple[SetKey, torch.Tensor] | None = None
        self._frost_dir: Path | None = None
        #: seconds spent corrupting each set (what the shift benchmark reports as generation)
        self.seconds: dict[SetKey, float] = {}

    def count(self, samples: int | None) -> int:
        """How many images a set of ``samples`` holds: the first ``samples``, all when None."""
        return len(self.labels) if samples is None else min(int(samples), len(self.labels))

    def key(self, corruption: str, severity: int, samples: int | None) -> SetKey:
        return corruption, int(severity), self.count(samples)

    def frost_dir(self) -> Path:
        """``<data root>/frost`` once every photograph is found there; the library's one-line
        error (naming the folder) otherwise."""
        if self._frost_dir is None:
            folder = frost_images_dir(self.data_root)
            load_frost_photos(folder)  # every photograph present, or the one line now
            self._frost_dir = folder
        return self._frost_dir

    def corrupted(self, corruption: str, severity: int, samples: int | None = None) -> tuple[
        torch.Tensor, torch.Tensor
    ]:  # fmt: skip
        """(uint8 images, labels) of the first ``samples`` test images (all: None), corrupted."""
        key = self.key(corruption, severity, samples)
        if self._last is None or self._last[0] != key:
            start = time.perf_counter()
            n = key[2]
            frost_dir = self.frost_dir() if corruption == "frost" else None
            parts = [corrupt(self.images[first : min(first + CHUNK, n)], corruption, key[1], seed=SEED,
                             first_index=first, frost_dir=frost_dir)
                     for first in range(0, n, CHUNK)]  # fmt: skip
            self._last = (key, torch.cat(parts) if parts else self.images[:0].clone())
            self.seconds[key] = time.perf_counter() - start
        return self._last[1], self.labels[: key[2]]

    def example(self, corruption: str, severity: int, index: int = 0) -> torch.Tensor:
        """Test image ``index`` (C, H, W) corrupted as it is inside every set holding it."""
        frost_dir = self.frost_dir() if corruption == "frost" else None
        image = self.images[index : index + 1]
        return corrupt(image, corruption, severity, seed=SEED, first_index=index, frost_dir=frost_dir)[0]
