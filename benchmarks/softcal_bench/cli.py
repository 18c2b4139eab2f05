"""The benchmark's command line (``python scripts/benchmark.py``): runs each dataset's
measurements and writes its section of the results file."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from softcal.allocator import keep_freed_memory
from softcal_bench.data_path import benchmark_data_path, mnist_data_path
from softcal_bench.machine import load_1min, load_average, machine_info
from softcal_bench.pipelines import (
    interleaved_overhead,
    run_bare_loop,
    run_softcal_fit,
    run_train_script,
    run_tutorial,
    time_imports,
)
from softcal_bench.recipe import REPO, Recipe
from softcal_bench.report import (
    data_path_markdown,
    machine_block,
    mnist_markdown,
    recipe_markdown,
    write_section,
)
from softcal.synthetic import write_idx_dataset

DEFAULT_OUT = REPO / "docs" / "benchmarks.md"
DATASETS = ("mnist", "mnist-recipe", "cifar10-sample", "synthetic-cifar")

#: The default recipe's batch size against the next smaller one, each with its peak learning
#: rate (scaled with the batch): how configs/mnist.yaml's batch size was chosen. The last one is
#: the default with glibc's own malloc thresholds (softcal.allocator switched off).
RECIPE_VARIANTS: dict[str, tuple[dict[str, Any], list[str]]] = {
    "batch 128, lr 0.01": ({"batch_size": 128, "lr": 0.01}, []),
    "batch 256, lr 0.02": ({"batch_size": 256, "lr": 0.02}, []),
    "batch 256, lr 0.02, --keep_freed_memory false": (
        {"batch_size": 256, "lr": 0.02}, ["--keep_freed_memory", "false"]),
}


# --------------------------------------------------------------------------- command line


def find_data_root(explicit: str | None) -> Path:
    """``--data-root``, else ``$SOFTCAL_DATA_ROOT``, else ``data/``, else ``../shared/data``."""
    if explicit:
        return Path(explicit)
    candidates = [os.environ.get("SOFTCAL_DATA_ROOT"), "data", str(REPO / "data"),
                  str(REPO.parent / "shared" / "data")]  # fmt: skip
    for candidate in filter(None, candidates):
        if (Path(candidate) / "MNIST" / "raw").is_dir():
            return Path(candidate)
    return Path(candidates[0] or "data")


def mnist_recipe(data_root: Path, work: Path, tiny: bool) -> tuple[Path, Recipe]:
    """The data root and recipe to run: the real ones, or generated data and a few batches."""
    if not tiny:
        return data_root, Recipe.from_config()
    data_root = work / "data"
    if not (data_root / "MNIST").is_dir():
        write_idx_dataset(data_root, "MNIST", n_train=600, n_test=200)
    return data_root, Recipe.from_config().tiny()


def benchmark_mnist(data_root: Path, work: Path, tiny: bool) -> str:
    data_root, recipe = mnist_recipe(data_root, work, tiny)
    info, load_before = machine_info(), load_average()
    print(f"[benchmark] MNIST from {data_root}; load {load_before}", flush=True)
    startup_s = 0.0 if tiny else time_imports()  # a fresh interpreter costs seconds: not in tiny
    print("[benchmark] (a) python scripts/train.py ...", flush=True)
    script = run_train_script(data_root, recipe, work)
    script.load_after = load_1min()
    print(f"[benchmark]     {script.wall_s:.1f} s, acc {script.acc}", flush=True)
    if script.returncode != 0:
        print(script.log.read_text()[-3000:], file=sys.stderr)
    # (c), (a), (c), (a), (c): alternating spreads a drifting machine load over both sides;
    # on this shared 2-core VM one run of the same loop varies by 5-10% on its own.
    cs, as_ = [], []
    for round_ in range(1, 4):
        print(f"[benchmark] (c) bare loop, run {round_} ...", flush=True)
        cs.append(run_bare_loop(data_root, recipe, f", run {round_}"))
        cs[-1].load_after = load_1min()
        if round_ < 3:
            print(f"[benchmark] (a) Lightning fit in process, run {round_} ...", flush=True)
            as_.append(run_softcal_fit(data_root, recipe, work / f"fit{round_}", round_))
            as_[-1].load_after = load_1min()
    print("[benchmark] (a) with (c) and (c') interleaved, for the overhead ...", flush=True)
    interleaved = interleaved_overhead(data_root, recipe, work, repeats=1 if tiny else 3)
    print("[benchmark] (b) tutorial pipeline ...", flush=True)
    b = run_tutorial(data_root, recipe)
    b.load_after = load_1min()
    print("[benchmark] data path alone ...", flush=True)
    data_path = mnist_data_path(data_root, recipe)
    machine = machine_block(info, load_before, load_average(), tiny)
    return mnist_markdown(script, startup_s, as_, b, cs, interleaved, data_path, machine)


def benchmark_recipe(data_root: Path, work: Path, tiny: bool) -> str:
    """``python scripts/train.py`` with each of RECIPE_VARIANTS for three seeds, alternating
    the order so drifting load spreads over all; then Lightning's overhead at each batch size,
    interleaved as in the MNIST section."""
    data_root, recipe = mnist_recipe(data_root, work, tiny)
    variants = {label: (replace(recipe, **changes), extra)
                for label, (changes, extra) in RECIPE_VARIANTS.items()}  # fmt: skip
    seeds = (0,) if tiny else (0, 1, 2)
    info, load_before = machine_info(), load_average()
    runs = []
    for seed in seeds:
        order = list(variants.items())
        for i, (label, (variant, extra)) in enumerate(order[::-1] if seed % 2 else order):
            print(f"[benchmark] train.py, {label}, seed {seed} ...", flush=True)
            run = run_train_script(data_root, variant, work, [*extra, "--seed_everything", str(seed)],
                                   name=f"variant{i}-seed{seed}")  # fmt: skip
            run.load_after = load_1min()
            runs.append((label, seed, run))
    overheads = {}
    for label, (variant, extra) in variants.items():
        if extra:  # a process-wide setting: the interleaved loops would share it
            continue
        print(f"[benchmark] {label}: (a) with (c) and (c') interleaved ...", flush=True)
        overheads[label] = interleaved_overhead(data_root, variant, work / f"inter{variant.batch_size}",
                                                repeats=1 if tiny else 3)  # fmt: skip
    machine = machine_block(info, load_before, load_average(), tiny)
    return recipe_markdown(runs, overheads, machine)


def benchmark_cifar(kind: str, data_root: Path, work: Path, tiny: bool) -> str:
    info, load_before = machine_info(), load_average()
    print(f"[benchmark] data path, {kind}; load {load_before}", flush=True)
    results, probe = benchmark_data_path(kind, data_root, work, tiny)
    machine = machine_block(info, load_before, load_average(), tiny)
    return data_path_markdown(kind, results, probe, machine)


def main(argv: Sequence[str] | None = None) -> int:
    import softcal_bench as bench  # its docstring describes the whole benchmark

    parser = argparse.ArgumentParser(description=bench.__doc__.split("\n\n")[0])
    parser.add_argument(
        "--dataset",
        nargs="+",
        choices=DATASETS,
        default=["mnist", "synthetic-cifar"],
        help="mnist: the training comparison; mnist-recipe: the default recipe's batch size"
        " against a smaller one, 3 seeds; synthetic-cifar / cifar10-sample: the CIFAR-sized"
        " data path alone (default: mnist synthetic-cifar)",
    )
    parser.add_argument(
        "--tiny",
        action="store_true",
        help="a few batches of generated data: a smoke test in seconds",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="markdown file to update")
    parser.add_argument("--data-root", default=None,
                        help="folder with MNIST/raw and cifar10-sample (default:"
                             " $SOFTCAL_DATA_ROOT, data/, ../shared/data)")  # fmt: skip
    args = parser.parse_args(argv)
    # As train.py does for itself (softcal.allocator): applied to this whole process, so the
    # bare loop, the tutorial pipeline and its forked workers run with the same malloc settings.
    keep_freed_memory()
    data_root = find_data_root(args.data_root)
    work = Path(tempfile.mkdtemp(prefix="softcal-bench-"))
    try:
        for kind in dict.fromkeys(args.dataset):  # each once, in the order given
            if kind == "mnist":
                body = benchmark_mnist(data_root, work, args.tiny)
            elif kind == "mnist-recipe":
                body = benchmark_recipe(data_root, work, args.tiny)
            else:
                body = benchmark_cifar(kind, data_root, work, args.tiny)
            write_section(args.out, kind, body)
            print("\n" + body, flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"[benchmark] written to {args.out}")
    return 0
