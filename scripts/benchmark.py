"""Benchmark softcal's training recipe and data path against the usual pipelines.

    python scripts/benchmark.py                            # MNIST training + CIFAR-sized data path
    python scripts/benchmark.py --dataset mnist            # the training comparison only
    python scripts/benchmark.py --dataset cifar10-sample   # data path on the real CIFAR-10 PNGs
    python scripts/benchmark.py --tiny --out /tmp/b.md     # smoke test on generated data

Numbers go to docs/benchmarks.md (one section per dataset) and to the terminal. The benchmark
code lives in benchmarks/ beside this folder: it is not part of the installed package.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from softcal_bench import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
