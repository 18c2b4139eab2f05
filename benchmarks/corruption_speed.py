"""How fast softcal.shift generates CIFAR-10-C: seconds per 1,000 CIFAR-10 test images for
each corruption at severities 3 and 5, and the projected time for all 75 sets (15 corruptions
x 5 severities) of the 10,000 test images, i.e. 750,000 corrupted images.

    SOFTCAL_DATA_ROOT=../shared/data python benchmarks/corruption_speed.py [--threads N]

Each timing is the best of ``--repeats`` calls of ``corrupt`` on one batch of 1,000 images,
after a warm-up call that fills the caches a run fills once (frost photographs, zoom and
Poisson tables). The projection takes each corruption's mean of severities 3 and 5 as its
mean over the five severities. Wall-clock and process CPU seconds are both printed: on a
shared machine the wall clock also counts other processes' load.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from softcal.data.datamodule import default_data_root
from softcal.shift.corruptions import CORRUPTIONS, corrupt, frost_images_dir

SEVERITIES = (3, 5)
TEST_IMAGES = 10_000


def load_images(count: int) -> torch.Tensor:
    """The first ``count`` CIFAR-10 test PNGs (the sample folder has 1,000), as (N, 3, 32, 32) uint8."""
    for folder in ("cifar10-sample", "cifar10"):
        files = sorted((default_data_root() / folder / "test").glob("*/*.png"))
        if len(files) >= count:
            pixels = np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files[:count]])
            return torch.from_numpy(pixels).permute(0, 3, 1, 2).contiguous()
    raise SystemExit(f"no {count} CIFAR-10 test PNGs under {default_data_root()}; set SOFTCAL_DATA_ROOT")


def time_call(images: torch.Tensor, name: str, severity: int, frost_dir: Path,
              repeats: int) -> tuple[float, float]:  # fmt: skip
    """Best wall-clock and best CPU seconds of ``repeats`` calls."""
    best_wall = best_cpu = float("inf")
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        corrupt(images, name, severity, frost_dir=frost_dir)
        best_wall = min(best_wall, time.perf_counter() - wall)
        best_cpu = min(best_cpu, time.process_time() - cpu)
    return best_wall, best_cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    images, frost_dir = load_images(args.images), frost_images_dir()
    per_thousand = 1000 / args.images
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.images} images per call")
    header = f"{'corruption':<18} {'s3 wall':>8} {'s5 wall':>8} {'s3 cpu':>8} {'s5 cpu':>8}"
    print(f"{header}   (s / 1,000 images)")
    total_wall = total_cpu = 0.0
    for name in CORRUPTIONS:
        corrupt(images[:8], name, 1, frost_dir=frost_dir)  # warm-up: caches and lazy imports
        timings = [time_call(images, name, s, frost_dir, args.repeats) for s in SEVERITIES]
        walls, cpus = zip(*timings, strict=True)
        walls, cpus = [w * per_thousand for w in walls], [c * per_thousand for c in cpus]
        total_wall += np.mean(walls)
        total_cpu += np.mean(cpus)
        print(f"{name:<18} {walls[0]:8.3f} {walls[1]:8.3f} {cpus[0]:8.3f} {cpus[1]:8.3f}")
    sets = len(CORRUPTIONS) * 5
    scale = 5 * TEST_IMAGES / 1000  # five severities of 10,000 images, per corruption
    print(f"mean per set of 1,000 images: {total_wall / len(CORRUPTIONS):.3f} s wall, "
          f"{total_cpu / len(CORRUPTIONS):.3f} s cpu")  # fmt: skip
    print(f"projected for {sets} sets x {TEST_IMAGES:,} images ({sets * TEST_IMAGES:,} images): "
          f"{total_wall * scale / 60:.1f} min wall, {total_cpu * scale / 60:.1f} min cpu")  # fmt: skip


if __name__ == "__main__":
    main()
