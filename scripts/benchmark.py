"""Benchmark Lightning's overhead, train.py's wall time and the data path (benchmarks/softcal_bench).

    python scripts/benchmark.py                                  # mnist + synthetic-cifar
    python scripts/benchmark.py --dataset mnist                  # train.py, overhead, data path
    python scripts/benchmark.py --config configs/cifar10.yaml    # the same for another config
    python scripts/benchmark.py --dataset mnist --section mnist-b128 -- --data.init_args.batch_size 128
    python scripts/benchmark.py --dataset cifar10-sample         # data path on the real PNGs
    python scripts/benchmark.py --tiny --out /tmp/b.md           # smoke test on generated data
    python scripts/benchmark.py --readme [--with-shift]          # every number the README quotes

Numbers go to docs/benchmarks.md (one section per config or dataset, or per README table) and to
the terminal. The benchmark lives in benchmarks/ beside this folder: it is not part of the
installed package.
"""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "benchmarks"), str(ROOT)]  # the benchmark, and tests/ for generated data

from softcal_bench import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
