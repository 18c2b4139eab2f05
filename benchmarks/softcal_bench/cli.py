"""The command line (``python scripts/benchmark.py``): one section of the results file per
config or dataset, replaced when it is re-run."""

from __future__ import annotations

import argparse
import math
import os
import shlex
import shutil
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from softcal.allocator import keep_freed_memory
from softcal_bench import readme_numbers, report
from softcal_bench.data_path import measure_data_path
from softcal_bench.machine import commit, load_average, machine_info, reset_peak_rss, rss_mib
from softcal_bench.overhead import median_per_epoch, run_interleaved
from softcal_bench.overlays import config_args, parse_spec
from softcal_bench.profile_run import measure_profile
from softcal_bench.readme_runs import RUNS, selected
from softcal_bench.seeds import REPO, fresh_cache, run_seeds, seed_measures
from softcal_bench.targets import TARGETS
from softcal_bench.test_time_views import measure_views, views_markdown
from softcal_bench.tiny import TINY_ARGS, write_tiny_data
from tests.synthetic_data import write_cifar_dataset

Measured = tuple[str, dict[str, float | None]]  # a part's markdown, the values targets are checked on
#: name -> (config in configs/, whether it trains); the others measure the data path alone.
DATASETS = {"mnist": ("mnist.yaml", True), "cifar10": ("cifar10.yaml", True),
            "synthetic-cifar": ("cifar10.yaml", False),  # on generated CIFAR-10-sized pickles
            "cifar10-sample": ("cifar10_sample.yaml", False)}  # fmt: skip


def data_overrides(overrides: Sequence[str]) -> dict[str, Any]:
    """The ``--data.init_args.NAME VALUE`` pairs among CLI overrides, as datamodule arguments."""
    prefix, pairs = "--data.init_args.", zip(overrides, overrides[1:], strict=False)
    return {flag[len(prefix):]: yaml.safe_load(value) for flag, value in pairs if flag.startswith(prefix)}


@dataclass
class Job:
    """One section: its name (its targets' key), the configs it trains (a base, then its
    overlays), and whether it trains them or measures the data path alone."""

    name: str
    configs: list[Path]
    trains: bool


def shown(config: Path) -> str:
    return str(config.relative_to(REPO) if config.is_relative_to(REPO) else config)


def data_root(job: Job, args: argparse.Namespace, work: Path) -> Path:
    """Generated data (--tiny, synthetic-cifar), else --data-root, $SOFTCAL_DATA_ROOT, data/ or
    ../shared/data, the first that exists."""
    root = work / "data"
    if job.name == "synthetic-cifar":
        write_cifar_dataset(root, 10, n_train=512 if args.tiny else 50_000, n_test=100)
    elif args.tiny:
        write_tiny_data(job.configs, root)
    else:
        found = [args.data_root, os.environ.get("SOFTCAL_DATA_ROOT"), REPO / "data", REPO / "../shared/data"]
        root = next((Path(c) for c in found if c and Path(c).is_dir()), Path("data"))
    return root


def measure_train(job: Job, args: argparse.Namespace, overrides: list[str], work: Path) -> Measured:
    """``train.py`` once per seed, as a user runs it."""
    command = ["scripts/train.py", *config_args(job.configs, shown), *overrides]
    runs = run_seeds([sys.executable, *command], args.seeds or [None], work / "train", args.cold_cache)
    shown_command = " ".join(["python", *command, *(["--seed_everything", "S"] if args.seeds else [])])
    return report.seeds_markdown(shown_command, runs), seed_measures(runs)


def measure_overhead(job: Job, args: argparse.Namespace, overrides: list[str], work: Path) -> Measured:
    """(a) with (c) and (c') interleaved, with --overhead-args on top of the section's arguments."""
    extra, repeats = shlex.split(args.overhead_args), 1 if args.tiny else args.repeats
    print(f"[benchmark] (a) with (c) and (c') interleaved, {repeats} repeat(s) ...", flush=True)
    save_dir = ["--trainer.logger.init_args.save_dir", str(work / "interleaved")]
    # The peak of these fits alone, not of an earlier section's data path: n/a where the kernel
    # cannot restart the high-water mark.
    reset = reset_peak_rss()
    runs = run_interleaved([*config_args(job.configs), *overrides, *extra, *save_dir], repeats)
    peak_gb = (rss_mib("VmHWM") or math.nan) * 2**20 / 1e9 if reset else None
    measured = {"overhead": max(median_per_epoch(runs), default=None),
                "control": max(median_per_epoch(runs, "control"), key=abs, default=None),
                "overhead_peak_gb": peak_gb}  # fmt: skip
    return report.interleaved_markdown(runs, extra, peak_gb), measured


def measure_data(job: Job, args: argparse.Namespace, overrides: list[str], work: Path) -> Measured:
    print(f"[benchmark] data path alone, {job.name} ...", flush=True)
    with fresh_cache(work, args.cold_cache):  # cold: its first set-up decodes an image folder
        rows, probe = measure_data_path(job.configs, data_overrides(overrides))
    measured = {"data_speedup": rows[0].per_s / rows[1].per_s,
                "data_peak_gb": probe["peak_mib"] * 2**20 / 1e9}  # fmt: skip
    return report.data_path_markdown(rows, probe), measured


def measure_phases(job: Job, args: argparse.Namespace, overrides: list[str], work: Path) -> Measured:
    """--profile: start-up and one run under Lightning's SimpleProfiler."""
    return measure_profile(config_args(job.configs, shown), overrides, work / "profile")


#: (what it measures, how, the switch that skips it, whether only a training section has it)
PARTS: list[tuple[str, Callable[..., Measured], str, bool]] = [
    ("`train.py` per seed", measure_train, "skip_train", True),
    ("Lightning vs a bare PyTorch loop", measure_overhead, "skip_overhead", True),
    ("the data path", measure_data, "skip_data_path", False),
]


def notes(job: Job, args: argparse.Namespace) -> list[str]:
    given = f", overrides: `{' '.join(args.overrides)}`" if args.overrides else ""
    cache = ("cold: every `train.py` run, and the data path, had a fresh empty `SOFTCAL_CACHE_DIR`, so"
             " decoding an image folder is in their time" if args.cold_cache else "as found"
             " (`$SOFTCAL_CACHE_DIR` or `~/.cache/softcal`): an image folder decoded before is read"
             " from there")  # fmt: skip
    lines = [f"command: `{args.shown_command}`", f"commit: {commit(REPO)}",
             "config: " + " + ".join(f"`{shown(c)}`" for c in job.configs) + given,
             f"decoded-image cache: {cache} (pickled data sets are never cached)",
             "malloc: freed memory kept in the heap (`softcal.allocator`), here and in `train.py`"]
    if args.tiny:
        lines.append("**--tiny smoke run on a few batches of generated data: the numbers mean nothing**")
    return lines


def run_section(job: Job, args: argparse.Namespace) -> str:
    work = Path(tempfile.mkdtemp(prefix=f"softcal-bench-{job.name}-"))
    try:
        os.environ["SOFTCAL_DATA_ROOT"] = str(data_root(job, args, work))  # train.py's too
        info, load_before = machine_info(), load_average()
        overrides = [*(TINY_ARGS if args.tiny else []), *args.overrides]
        parts = [(what, how) for what, how, skip, trains in PARTS
                 if not getattr(args, skip) and (job.trains or not trains)]  # fmt: skip
        if args.profile and job.trains:
            parts.append(("where a `train.py` run spends its time", measure_phases))
        texts, measured = [], {}
        for _, how in parts:
            text, values = how(job, args, overrides, work)
            texts.append(text)
            measured.update(values)
        machine = report.machine_block(info, load_before, load_average(), notes(job, args))
        targets = {k: v for k, v in TARGETS.get(job.name, {}).items() if k in measured}  # measured here
        title = f"{args.section or job.name}: " + ", ".join(what for what, _ in parts)
        return report.section(title, machine, texts, measured, targets)
    finally:
        if args.keep_runs and (work / "train").is_dir():  # the runs, for evaluate and the README
            shutil.copytree(work / "train", args.keep_runs / job.name, dirs_exist_ok=True)
        shutil.rmtree(work, ignore_errors=True)


EXAMPLES = """examples:
  %(prog)s --dataset mnist                      train.py, overhead and data path for configs/mnist.yaml
  %(prog)s --config configs/cifar10.yaml --seeds 0 1 2 --cold-cache --skip-overhead
  %(prog)s --config configs/cifar10.yaml+configs/cifar10_quick.yaml --seeds 0 1 2
  %(prog)s --config configs/cifar10.yaml --section cifar10-overhead --skip-train --skip-data-path \\
      --overhead-args="--trainer.max_epochs 2 --trainer.limit_train_batches 30"
  %(prog)s --tiny --out /tmp/b.md               smoke test on generated data
  %(prog)s --readme                             every README number, its command (about 20 min)
  %(prog)s --readme --with-shift                and the calibration-under-shift table (about 80 min)
  %(prog)s --readme --only mnist,fashion_mnist  some of the README's runs: sections of their own"""


def parser() -> argparse.ArgumentParser:
    import softcal_bench  # its docstring describes the whole benchmark

    p = argparse.ArgumentParser(description=softcal_bench.__doc__.split("\n\n")[0], epilog=EXAMPLES,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--dataset", nargs="+", choices=DATASETS, default=[],
                   help="mnist, cifar10: train configs/<name>.yaml; synthetic-cifar,"
                        " cifar10-sample: the data path alone (default: mnist synthetic-cifar)")  # fmt: skip
    p.add_argument("--config", nargs="+", default=[],
                   help="train these configs, a section each named after the file; A.yaml+B.yaml trains A"
                        " with the overlay B (train.py --config A --config B), section named B")  # fmt: skip
    p.add_argument("--section", help="the section's name in --out (one section only)")
    p.add_argument("--seeds", nargs="+", type=int, help="a train.py run per seed (default: the config's)")
    p.add_argument("--cold-cache", action="store_true",
                   help="a fresh empty SOFTCAL_CACHE_DIR per train.py run: decoding is in its wall time")
    p.add_argument("--overhead-args", default="",
                   help='overrides for the interleaved fit only: --overhead-args="--trainer.max_epochs 2"')
    for part, what in (("train", "the train.py runs"), ("overhead", "the interleaved overhead"),
                       ("data-path", "the data path alone")):  # fmt: skip
        p.add_argument(f"--skip-{part}", action="store_true", help=f"leave out {what}")
    p.add_argument("--profile", action="store_true",
                   help="also time start-up and one train.py run under Lightning's SimpleProfiler")
    p.add_argument("--tiny", action="store_true", help="generated data, a few batches: a smoke test")
    p.add_argument("--keep-runs", type=Path, help="copy the train.py runs here (a folder a section)")
    p.add_argument("--repeats", type=int, default=3, help="of the interleaved measurement")
    p.add_argument("--out", type=Path, default=REPO / "docs" / "benchmarks.md")
    p.add_argument("--data-root",
                   help="default: $SOFTCAL_DATA_ROOT, data/, ../shared/data (--readme: as train.py finds it)")
    p.add_argument("--readme", action="store_true",
                   help="the README's runs with its commands, then evaluate as its tables say: the"
                        " readme-* sections (softcal_bench.readme_numbers)")  # fmt: skip
    p.add_argument("--with-shift", action="store_true",
                   help="with --readme: --shift all and the ensemble of 3 cifar10_quick runs too")
    p.add_argument("--only", type=lambda text: [name for name in text.split(",") if name], default=[],
                   metavar="RUN,...", help="with --readme: these runs only, into sections of their own"
                   f" ({', '.join(RUNS)})")  # fmt: skip
    p.add_argument("--views", nargs="+", type=Path, metavar="RUN",
                   help="trained runs of a WhitenedCNN config: each scored with every set of test-time"
                        " views (image, mirror, shifts, both; softcal_bench.test_time_views)")  # fmt: skip
    p.add_argument("overrides", nargs="*", help="after --: CLI overrides, e.g. -- --model.lr 0.01")
    return p


def readme(args: argparse.Namespace) -> int:
    """--readme: the README's commands, nothing of the per-config benchmark."""
    if not args.readme:
        parser().error("--with-shift and --only go with --readme")
    if args.dataset or args.config or args.overrides or args.section:
        parser().error("--readme runs the README's own commands: leave out --dataset, --config, --section"
                       " and overrides")  # fmt: skip
    try:
        selected(args.only, args.with_shift)
    except ValueError as err:
        parser().error(str(err))
    return readme_numbers.main(args)


def views(args: argparse.Namespace) -> int:
    """--views: one section of the given runs scored under each set of test-time views."""
    info, load_before = machine_info(), load_average()
    scores = measure_views(args.views, args.overrides)
    runs = ", ".join(dict.fromkeys(score.run for score in scores))
    given = f" -- {' '.join(args.overrides)}" if args.overrides else ""
    notes = [f"command: `python scripts/benchmark.py --views RUN ...{given}` on the runs {runs}",
             f"commit: {commit(REPO)}"]  # fmt: skip
    machine = report.machine_block(info, load_before, load_average(), notes)
    name = args.section or "test-time-views"
    title = f"## {name}: what averaging test-time views buys"
    text = "\n\n".join([title, machine, views_markdown(scores)]) + "\n"
    report.write_section(args.out, name, text)
    print("\n" + text, flush=True)
    return 0


#: options whose value is a place on this machine: a section shows the option, not the path
PATH_OPTIONS = {"--keep-runs": "DIR", "--out": "FILE", "--data-root": "DIR"}


def placeholders(words: Sequence[str]) -> list[str]:
    """The command line with the paths of PATH_OPTIONS replaced by DIR or FILE (either form)."""
    shown, after = [], None
    for word in words:
        name, eq, _ = word.partition("=")
        if after:
            shown.append(after)
            after = None
        elif word in PATH_OPTIONS:
            shown.append(word)
            after = PATH_OPTIONS[word]
        elif eq and name in PATH_OPTIONS:
            shown.append(f"{name}={PATH_OPTIONS[name]}")
        else:
            shown.append(word)
    return shown


def main(argv: Sequence[str] | None = None) -> int:
    given = sys.argv[1:] if argv is None else list(argv)
    args = parser().parse_args(given)
    # each section names it, with DIR and FILE for this machine's paths
    args.shown_command = shlex.join(["python", "scripts/benchmark.py", *placeholders(given)])
    if args.readme or args.with_shift or args.only:
        return readme(args)
    if args.views:
        return views(args)
    names = args.dataset or ([] if args.config else ["mnist", "synthetic-cifar"])
    jobs = [Job(name, [REPO / "configs" / DATASETS[name][0]], DATASETS[name][1]) for name in names]
    jobs += [Job(*parse_spec(spec), trains=True) for spec in args.config]
    if args.section and len(jobs) != 1:
        parser().error("--section names one section: give one dataset or config")
    keep_freed_memory()  # as train.py does: the fits, bare loops and data paths all run with it
    for job in jobs:
        text = run_section(job, args)
        report.write_section(args.out, args.section or job.name, text)
        print("\n" + text, flush=True)
    print(f"[benchmark] written to {args.out}")
    return 0
