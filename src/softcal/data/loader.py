"""Batches straight from in-memory tensors, resumable mid-epoch.

``Batch`` is the one batch type of the data layer: (uint8 images (N, C, H, W), int64 labels).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

Batch = tuple[torch.Tensor, torch.Tensor]


@contextmanager
def batch_sized_cpu_ops(device: torch.device) -> Iterator[None]:
    """Run the enclosed CPU ops on one intra-op thread.

    A batch is a few MB: splitting each op over threads saves little, and on a CPU shared with
    other processes every parallel op waits for its slowest thread - measured on 2 busy cores,
    the data path ran 3-9x faster on one thread than on two. GPU work is left alone.
    """
    threads = torch.get_num_threads()
    if device.type != "cpu" or threads == 1:
        yield
        return
    torch.set_num_threads(1)  # ~1 us to switch, per batch
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class TensorBatchLoader:
    """Batches sliced from in-memory tensors: one gather per batch, no per-sample Python.

    * Shuffling draws a permutation from ``seed`` and the epoch number, so the order of every
      epoch is known in advance - a resumed run replays exactly the batches it has not seen.
    * Under multi-process training each process takes every ``world_size``-th index. For
      training the permutation is cut to a multiple of ``world_size`` (every process must take
      the same number of steps); for evaluation nothing is dropped or duplicated, so metrics
      summed over processes equal single-process metrics.
    * ``state_dict``/``load_state_dict`` make it resumable mid-epoch; the datamodule's own
      state carries them through checkpoints (see ``ClassificationDataModule.state_dict``).
    * ``flip_seed`` (None: off) turns on alternating flips: dataset image i gets one random bit
      from that seed, and in epoch e it is served mirrored left-right iff bit XOR (e is odd), so
      every image is seen both ways in every two epochs. The flip depends only on (seed, i, e),
      never on the batch or process that serves it: it survives resumes and sharding as is.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        batch_size: int,
        shuffle: bool,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        pin_memory: bool = False,
        device: torch.device | None = None,
        flip_seed: int | None = None,
    ) -> None:
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images, self.labels = images, labels
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.rank, self.world_size = rank, world_size
        self.pin_memory = pin_memory and torch.cuda.is_available() and device is None
        self.device = device
        self.flip_seed = flip_seed
        self._flip_bits: torch.Tensor | None = None  # made on first use, on the images' device
        self.epoch = 0  # the epoch the next __iter__ serves
        self._skip = 0  # batches of that epoch already consumed before a restart
        self._serving: tuple[int, int] = (0, 0)  # (epoch, batches consumed) of the current pass

    def _indices(self, epoch: int) -> torch.Tensor:
        n = len(self.labels)
        if self.shuffle:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            order = torch.randperm(n, generator=gen)
            order = order[: n - n % self.world_size]  # equal step counts on every process
        else:
            order = torch.arange(n)
        return order[self.rank :: self.world_size]

    def __len__(self) -> int:
        n = len(self._indices(0)) if self.world_size > 1 else len(self.labels)
        if self.shuffle:  # training drops the ragged last batch: BatchNorm dislikes tiny batches
            return max(1, n // self.batch_size)
        return -(-n // self.batch_size)

    def __iter__(self) -> Iterator[Batch]:
        epoch, start = self.epoch, self._skip
        self.epoch, self._skip = epoch + 1, 0
        self._serving = (epoch, start)
        indices = self._indices(epoch)
        if self.device is not None:
            self.images, self.labels = self.images.to(self.device), self.labels.to(self.device)
            indices = indices.to(self.device)
        for b in range(start, len(self)):
            index = indices[b * self.batch_size : (b + 1) * self.batch_size]
            with batch_sized_cpu_ops(self.images.device):
                # index_select copies whole rows: ~5x faster than x[index]'s element gather.
                x, y = self.images.index_select(0, index), self.labels.index_select(0, index)
                if self.flip_seed is not None:
                    x = self._alternate_flip(x, index, epoch)
            if self.pin_memory:
                x, y = x.pin_memory(), y.pin_memory()
            yield x, y

    def flip_bits(self) -> torch.Tensor:
        """One random bool per dataset image, a pure function of ``flip_seed`` and ``len``."""
        if self.flip_seed is None:
            raise ValueError("flip_bits needs a flip_seed")
        if self._flip_bits is None or self._flip_bits.device != self.images.device:
            # The seed of the permutation of "epoch -1", which no epoch ever draws.
            gen = torch.Generator().manual_seed(self.flip_seed * 1_000_003 - 1)
            bits = torch.rand(len(self.labels), generator=gen) < 0.5
            self._flip_bits = bits.to(self.images.device)
        return self._flip_bits

    def _alternate_flip(self, x: torch.Tensor, index: torch.Tensor, epoch: int) -> torch.Tensor:
        """Mirror the images of ``x`` (gathered at dataset ``index``) whose bit, XOR the epoch's
        parity, is set. ``torch.where`` over a mirrored copy costs two batch-sized copies but no
        data-dependent shapes: on a GPU it never waits for the device, unlike a boolean mask."""
        flip = self.flip_bits().index_select(0, index)
        if epoch % 2:
            flip = ~flip
        return torch.where(flip.view(-1, *([1] * (x.dim() - 1))), x.flip(-1), x)

    def mark_consumed(self) -> tuple[int, int]:
        """Record that the model took one more batch; returns its (epoch, index in epoch).

        Called when a batch reaches the model, not when it is fetched: Lightning fetches one
        batch ahead, and a checkpoint must not count the batch it has not trained on.
        """
        epoch, consumed = self._serving
        self._serving = (epoch, consumed + 1)
        return epoch, consumed

    def state_dict(self) -> dict[str, int]:
        """The epoch being served and how many of its batches the model has taken."""
        epoch, consumed = self._serving
        return {"epoch": epoch, "consumed": consumed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Make the next ``__iter__`` serve the batches of ``state``'s epoch it had not served.

        The epoch's order is a function of (seed, epoch), so skipping the consumed batches is
        enough to replay exactly what an uninterrupted loader would have served next.
        """
        epoch, consumed = int(state["epoch"]), int(state["consumed"])
        if consumed >= len(self):  # saved at the end of an epoch: start the next one
            epoch, consumed = epoch + 1, 0
        self.epoch, self._skip = epoch, consumed
        self._serving = (epoch, consumed)
