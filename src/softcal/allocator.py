"""Process memory for fast steps: freed memory stays in the C heap, and the garbage collector
skips the objects that live for the whole run.

Keep freed memory in the C heap, so a training step does not map its tensors afresh.

PyTorch's CPU allocator takes every tensor from ``malloc``. glibc serves large blocks (above a
threshold that starts at 128 KiB) with a fresh ``mmap`` and gives them back with ``munmap`` on
free, and returns free heap top to the kernel beyond 128 KiB. A training step's activations
are MBs each, so every step mapped them, took a page fault per 4 KiB page as they were first
written, had the kernel zero those pages, and unmapped them again. Raising both thresholds keeps
freed blocks in the heap, where the next step finds them.

What it saves on a machine: ``python scripts/benchmark.py --dataset mnist --section
mnist-glibc-malloc --seeds 0 1 2 --skip-overhead --skip-data-path -- --keep_freed_memory false``
against the same without the override (docs/benchmarks.md). The cost is memory: the process
keeps its peak heap instead of shrinking between steps. Linux with glibc only; elsewhere
(macOS, musl) nothing changes.
"""

from __future__ import annotations

import ctypes
import gc
import sys

import lightning as L

# mallopt parameter numbers, from glibc's <malloc.h>
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3

#: Blocks up to this size come from the heap, not from their own mmap (batch-sized activations).
MMAP_THRESHOLD = 256 * 2**20
#: Free memory at the top of the heap is returned to the kernel only beyond this.
TRIM_THRESHOLD = 1 * 2**30


def keep_freed_memory() -> bool:
    """Apply the two thresholds to this process (and to processes it forks from now on).
    Returns whether glibc took them."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )


class FreezeStartupObjects(L.Callback):
    """Keep Python's garbage collector off the objects that exist when training starts.

    Importing torch and Lightning and building the run leaves ~470,000 Python objects. Every
    full collection walks all of them - 0.26 s measured on a 2-core CPU - and the small objects
    that each Lightning step creates set one off at unpredictable moments: alone it can add 2-3%
    to an MNIST epoch. ``gc.freeze()`` moves those objects, alive for the whole run anyway, to a
    generation the collector skips; collections then only see what training creates. They are
    released to the collector again when training ends, however it ends.
    """

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        gc.collect()  # set-up garbage goes now instead of being frozen for good
        gc.freeze()

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        gc.unfreeze()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule,
                     exception: BaseException) -> None:  # fmt: skip
        gc.unfreeze()
