"""The command line (``python scripts/benchmark.py``): one section of the results file per
config or dataset, replaced when it is re-run."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from softcal.allocator import keep_freed_memory
from softcal.synthetic import write_cifar_dataset, write_idx_dataset, write_image_folder
from softcal_bench import report
from softcal_bench.data_path import measure_data_path
from softcal_bench.machine import load_average, machine_info, measure_command
from softcal_bench.overhead import median_per_epoch, run_interleaved
from softcal_bench.targets import TARGETS

REPO = Path(__file__).resolve().parents[2]
#: name -> (config in configs/, whether it trains); the others measure the data path alone.
DATASETS = {"mnist": ("mnist.yaml", True), "cifar10": ("cifar10.yaml", True),
            "synthetic-cifar": ("cifar10.yaml", False),  # on generated CIFAR-10-sized pickles
            "cifar10-sample": ("cifar10_sample.yaml", False)}  # fmt: skip
#: --tiny: any config on a few batches of generated data, a smoke test in seconds.
TINY_ARGS = ["--trainer.max_epochs", "1", "--trainer.limit_train_batches", "3",
             "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
             "--data.init_args.batch_size", "32", "--data.init_args.eval_batch_size", "100",
             "--data.init_args.val_size", "100"]  # fmt: skip


def data_overrides(overrides: Sequence[str]) -> dict[str, Any]:
    """The ``--data.init_args.NAME VALUE`` pairs among CLI overrides, as datamodule arguments."""
    prefix, pairs = "--data.init_args.", zip(overrides, overrides[1:], strict=False)
    return {flag[len(prefix):]: yaml.safe_load(value) for flag, value in pairs if flag.startswith(prefix)}


def write_tiny_data(config: Path, root: Path) -> None:
    """A few hundred generated images in the format the config's datamodule reads."""
    data = yaml.safe_load(config.read_text())["data"]
    kind = data["class_path"].rsplit(".", 1)[1].removesuffix("DataModule")
    if kind in ("MNIST", "FashionMNIST"):
        write_idx_dataset(root, kind)
    elif kind in ("CIFAR10", "CIFAR100"):
        write_cifar_dataset(root, int(kind[5:]), n_train=500 if kind == "CIFAR10" else 400)
    else:  # an image folder
        write_image_folder(root / data["init_args"]["folder"], tuple(f"c{i}" for i in range(10)),
                           n_train=300, n_test=100)  # fmt: skip


def shown(config: Path) -> str:
    return str(config.relative_to(REPO) if config.is_relative_to(REPO) else config)


def data_root(name: str, config: Path, args: argparse.Namespace, work: Path) -> Path:
    """Generated data (--tiny, synthetic-cifar), else --data-root, $SOFTCAL_DATA_ROOT, data/ or
    ../shared/data, the first that exists."""
    root = work / "data"
    if name == "synthetic-cifar":
        write_cifar_dataset(root, 10, n_train=512 if args.tiny else 50_000, n_test=100)
    elif args.tiny:
        write_tiny_data(config, root)
    else:
        found = [args.data_root, os.environ.get("SOFTCAL_DATA_ROOT"), REPO / "data", REPO / "../shared/data"]
        root = next((Path(c) for c in found if c and Path(c).is_dir()), Path("data"))
    return root


def train_script(command: list[str], work: Path) -> dict[str, Any]:
    """``python scripts/train.py`` as a user runs it: wall time, peak RSS, results.json's metrics."""
    save_dir, log = work / "runs", work / "train.log"
    run = measure_command([*command, "--trainer.logger.init_args.save_dir", str(save_dir)], log, REPO)
    run["metrics"] = {}
    for results in save_dir.glob("*/version_*/results.json"):
        run["metrics"] = yaml.safe_load(results.read_text())["metrics"]  # JSON is YAML
    if run["returncode"] != 0:
        print(log.read_text()[-3000:], file=sys.stderr)
        run["wall_s"] = None  # a failed run's time answers nothing
    return run


def measure(name: str, config: Path, trains: bool, overrides: list[str], work: Path,
            repeats: int) -> tuple[list[str], dict[str, float | None]]:  # fmt: skip
    """One section's measurements: markdown parts, and the values the targets are checked on."""
    parts, measured = [], {}
    if trains:
        command = ["scripts/train.py", "--config", shown(config), *overrides]
        print(f"[benchmark] python {' '.join(command)} ...", flush=True)
        run = train_script([sys.executable, *command], work)
        metrics = run["metrics"]
        measured = {"test_acc": metrics.get("test/acc"), "wall_s": run["wall_s"],
                    "test_ece": metrics.get("test/ece"), "calibrated_ece": metrics.get("test_calibrated/ece"),
                    "peak_rss_gb": run["peak_rss_gb"]}  # fmt: skip
        print(f"[benchmark] (a) with (c) and (c') interleaved, {repeats} repeat(s) ...", flush=True)
        runs = run_interleaved(["--config", str(config), *overrides,
                                "--trainer.logger.init_args.save_dir", str(work / "interleaved")], repeats)
        measured["overhead"] = max(median_per_epoch(runs), default=None)
        measured["control"] = max(median_per_epoch(runs, "control"), key=abs, default=None)
        parts += [report.train_script_markdown(f"python {' '.join(command)}", run),
                  report.interleaved_markdown(runs)]  # fmt: skip
    print(f"[benchmark] data path alone, {name} ...", flush=True)
    rows, probe = measure_data_path(config, data_overrides(overrides))
    measured["data_speedup"] = rows[0].per_s / rows[1].per_s
    measured["data_peak_gb"] = probe["peak_mib"] * 2**20 / 1e9
    return [*parts, report.data_path_markdown(rows, probe)], measured


def run_section(name: str, config: Path, trains: bool, args: argparse.Namespace) -> str:
    work = Path(tempfile.mkdtemp(prefix=f"softcal-bench-{name}-"))
    try:
        os.environ["SOFTCAL_DATA_ROOT"] = str(data_root(name, config, args, work))  # train.py's too
        info, load_before = machine_info(), load_average()
        overrides = [*(TINY_ARGS if args.tiny else []), *args.overrides]
        parts, measured = measure(name, config, trains, overrides, work, 1 if args.tiny else args.repeats)
        given = f", overrides: `{' '.join(args.overrides)}`" if args.overrides else ""
        notes = [f"config: `{shown(config)}`{given}",
                 "malloc: freed memory kept in the heap (`softcal.allocator`), here and in `train.py`"]
        if args.tiny:
            notes.append("**--tiny smoke run on a few batches of generated data: the numbers mean nothing**")
        title = f"{name}: Lightning vs a bare PyTorch loop, and the data path" if trains else \
            f"{name}: the data path alone"
        machine = report.machine_block(info, load_before, load_average(), notes)
        return report.section(title, machine, parts, measured, TARGETS.get(name, {}))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    import softcal_bench  # its docstring describes the whole benchmark

    parser = argparse.ArgumentParser(description=softcal_bench.__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", nargs="+", choices=DATASETS, default=[],
                        help="mnist, cifar10: train configs/<name>.yaml; synthetic-cifar,"
                             " cifar10-sample: the data path alone (default: mnist synthetic-cifar)")
    parser.add_argument("--config", nargs="+", type=Path, default=[],
                        help="train these configs (a section each, named after the file)")
    parser.add_argument("--section", help="the section's name in --out (one section only)")
    parser.add_argument("--tiny", action="store_true", help="generated data, a few batches: a smoke test")
    parser.add_argument("--repeats", type=int, default=3, help="of the interleaved measurement")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "benchmarks.md")
    parser.add_argument("--data-root", help="default: $SOFTCAL_DATA_ROOT, data/, ../shared/data")
    parser.add_argument("overrides", nargs="*", help="after --: CLI overrides, e.g. -- --model.lr 0.01")
    args = parser.parse_args(argv)
    names = args.dataset or ([] if args.config else ["mnist", "synthetic-cifar"])
    jobs = [(name, REPO / "configs" / DATASETS[name][0], DATASETS[name][1]) for name in names]
    jobs += [(Path(c).stem, Path(c).resolve(), True) for c in args.config]
    if args.section and len(jobs) != 1:
        parser.error("--section names one section: give one dataset or config")
    keep_freed_memory()  # as train.py does: the fits, bare loops and data paths all run with it
    for name, config, trains in jobs:
        text = run_section(name, config, trains, args)
        report.write_section(args.out, args.section or name, text)
        print("\n" + text, flush=True)
    print(f"[benchmark] written to {args.out}")
    return 0
