"""Benchmark: softcal's training recipe against the usual pipelines, and its data path alone.

Three ways to train MNIST, measured in one run on the same machine:

(a) softcal's default recipe: ``python scripts/train.py`` timed as a user runs it (start-up,
    data loading, training, calibration and test included), and the same fit in this process
    with a callback that times each training epoch;
(b) the tutorial way: torchvision's MNIST with PIL ``ToTensor``/``Normalize`` in a DataLoader
    with two workers, a two-conv CNN in a plain LightningModule;
(c) a bare PyTorch loop over the same in-memory tensors with the same net, seed and batch size
    as (a): the floor that (a)'s Lightning overhead is measured against.

Lightning's overhead is measured with (a) and two copies of (c) interleaved step by step in one
process (:class:`softcal_bench.pipelines.Interleave`): timed minutes apart, two runs of the same
loop differ by 5-10% on a shared VM, more than the overhead being measured.

The data-path comparison times the data alone (no model): batches of cropped, flipped and
normalised images from softcal's in-memory tensors vs a PIL pipeline in DataLoader workers.
Results go to a markdown file, one section per dataset, replaced when that dataset is re-run.
"""

# The CIFAR memory probe's fresh process imports this package first: what is imported here is
# part of its "RSS after imports" baseline, as it was when the benchmark was one module.
from softcal_bench.cli import main

__all__ = ["main"]
