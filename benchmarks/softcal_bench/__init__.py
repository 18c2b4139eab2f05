"""Benchmark: Lightning's cost against a bare PyTorch loop, train.py's wall time, and the data path.

For a training config (``--dataset mnist``, ``--config configs/X.yaml``, or a config with
overlays, ``--config configs/X.yaml+configs/Y.yaml``), one section with:

- ``python scripts/train.py --config X`` timed as a user runs it (start-up, data loading,
  training, calibration and test), with the peak RSS of that fresh process, once per
  ``--seeds`` value, optionally with a cold decoded-image cache (:mod:`softcal_bench.seeds`);
- Lightning's overhead per training epoch, measured interleaved in one process against two
  identical bare PyTorch loops, the second one the control (:mod:`softcal_bench.overhead`);
- the data path alone (no model): softcal's in-memory tensors vs a PIL pipeline in DataLoader
  workers, and softcal's peak memory in a fresh process (:mod:`softcal_bench.data_path`).

``--skip-train``, ``--skip-overhead`` and ``--skip-data-path`` leave parts out, so that slow parts
can be run as sections of their own (``--section NAME``).

``--readme`` measures every number the README quotes with the README's own commands
(:mod:`softcal_bench.readme_numbers`).

``--dataset synthetic-cifar`` / ``cifar10-sample`` measure the data path alone. Verdicts come
from the targets declared in :mod:`softcal_bench.targets`. Results go to a markdown file, one
section per config or dataset, replaced when it is re-run.
"""

# The data-path memory probe's fresh process imports this package first: what is imported here
# is part of its "RSS after imports" baseline.
from softcal_bench.cli import main

__all__ = ["main"]
