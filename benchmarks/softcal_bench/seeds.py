"""``python scripts/train.py`` as a user runs it, once per seed, each in a fresh process: wall time,
peak RSS and results.json's metrics per run, and their mean / min / max over the seeds (which
statistic each target is checked on: ``targets.SEED_STAT``).
"""

from __future__ import annotations

import math
import os
import shutil
import statistics
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from softcal_bench.machine import measure_command
from softcal_bench.targets import SEED_STAT

REPO = Path(__file__).resolve().parents[2]
CACHE_ENV = "SOFTCAL_CACHE_DIR"  # where image folders' decoded tensors are cached

#: column -> results.json metric, each in what train_script returns
METRICS = {"test_acc": "test/acc", "test_ece": "test/ece", "calibrated_ece": "test_calibrated/ece",
           "test_nll": "test/nll", "calibrated_nll": "test_calibrated/nll",
           "test_brier": "test/brier", "calibrated_brier": "test_calibrated/brier",
           "test_aurc": "test/aurc"}  # fmt: skip
#: column -> (header, unit of targets.show): the per-seed table's columns and statistics
#: (AURC is left to the README's table, readme_numbers)
COLUMNS = {"test_acc": ("test acc", "%"), "test_ece": ("ECE raw", "%"),
           "calibrated_ece": ("ECE calibrated", "%"), "test_nll": ("NLL raw", "f"),
           "calibrated_nll": ("NLL calibrated", "f"), "test_brier": ("Brier raw", "f"),
           "calibrated_brier": ("Brier calibrated", "f"), "temperature": ("T", "f"),
           "wall_s": ("wall", "s"), "peak_rss_gb": ("peak RSS", "GB")}  # fmt: skip
STATS: dict[str, Callable[[list[float]], float]] = {"mean": statistics.fmean, "min": min, "max": max}


def train_script(command: list[str], work: Path) -> dict[str, Any]:
    """One run of ``command`` (``python scripts/train.py ...``) in a fresh process, output under
    ``work``: its exit code, a value per metric (None where the run did not report one) and its
    run directory (None without a results.json), for evaluate.py to read."""
    work.mkdir(parents=True, exist_ok=True)
    save_dir, log = work / "runs", work / "train.log"
    run = measure_command([*command, "--trainer.logger.init_args.save_dir", str(save_dir)], log, REPO)
    results: dict[str, Any] = {}
    run_dir = None
    for found in save_dir.glob("*/version_*/results.json"):
        results, run_dir = yaml.safe_load(found.read_text()), found.parent  # JSON is YAML
    if run["returncode"] != 0:
        print(log.read_text()[-3000:], file=sys.stderr)
        run["wall_s"] = None  # a failed run's time answers nothing
    metrics = results.get("metrics", {})
    values = {column: metrics.get(name) for column, name in METRICS.items()}
    return {"returncode": run["returncode"], **values, "temperature": results.get("temperature"),
            "wall_s": run["wall_s"], "peak_rss_gb": run["peak_rss_gb"], "run_dir": run_dir}  # fmt: skip


@contextmanager
def fresh_cache(work: Path, cold: bool) -> Iterator[None]:
    """With ``cold``, ``$SOFTCAL_CACHE_DIR`` names a new empty folder while the block runs (child
    processes inherit it), so an image folder is decoded again; the folder is removed after."""
    if not cold:
        yield
        return
    work.mkdir(parents=True, exist_ok=True)
    folder, before = tempfile.mkdtemp(prefix="cache-", dir=work), os.environ.get(CACHE_ENV)
    os.environ[CACHE_ENV] = folder
    try:
        yield
    finally:
        if before is None:
            del os.environ[CACHE_ENV]
        else:
            os.environ[CACHE_ENV] = before
        shutil.rmtree(folder, ignore_errors=True)


TrainScript = Callable[[list[str], Path], dict[str, Any]]


def run_seeds(command: list[str], seeds: Sequence[int | None], work: Path, cold_cache: bool,
              train: TrainScript = train_script) -> list[dict[str, Any]]:  # fmt: skip
    """``command`` once per seed (None: the config's own seed), each in its own folder and, with
    ``cold_cache``, with a cache folder of its own."""
    runs = []
    for i, seed in enumerate(seeds):
        args = [*command, *(["--seed_everything", str(seed)] if seed is not None else [])]
        print(f"[benchmark] python {' '.join(args[1:])} ...", flush=True)
        with fresh_cache(work, cold_cache):
            runs.append({**train(args, work / f"run-{i}"), "seed": seed})
    return runs


def aggregate(runs: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, float | None]]:
    """``{"mean" | "min" | "max": {column: value}}`` over the runs. A value is None unless every
    run has it: a failed seed is never averaged away."""
    stats: dict[str, dict[str, float | None]] = {stat: {} for stat in STATS}
    for column in COLUMNS:
        values = [run.get(column) for run in runs]
        complete = bool(values) and all(v is not None and not math.isnan(v) for v in values)
        for stat, fn in STATS.items():
            stats[stat][column] = fn(values) if complete else None
    return stats


def seed_measures(runs: Sequence[Mapping[str, Any]]) -> dict[str, float | None]:
    """The values the targets are checked on: SEED_STAT's statistic of each measure."""
    stats = aggregate(runs)
    return {measure: stats[stat][measure] for measure, stat in SEED_STAT.items()}
