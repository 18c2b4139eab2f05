"""``python scripts/benchmark.py --readme``: every number the README quotes, measured again with
the README's own commands (the runs: :mod:`softcal_bench.readme_runs`).

Each run is ``train.py`` with the README's arguments, in a fresh process (``seeds.run_seeds``:
wall time, peak RSS, results.json) writing to a scratch runs folder; then ``evaluate.py RUN
--conformal`` on the runs the README's conformal table quotes and, with ``--with-shift``,
``evaluate.py RUN --shift all`` on the rows of its calibration-under-shift table, the ensemble of
three ``cifar10_quick`` seeds included (about 45 minutes more on a 2-core CPU, hence opt-in).
The sections ``readme-training``, ``readme-conformal`` and (``--with-shift``) ``readme-shift``
(laid out by :mod:`softcal_bench.readme_report`) each name the command that regenerates them,
the commit and the machine.

A section is written whole from the runs of one invocation, never merged with rows of another,
which may come from another commit or machine: ``--only mnist,fashion_mnist`` writes sections of
its own (``readme-training-mnist-fashion_mnist``, ...) and leaves the full ones as they are.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from softcal_bench import readme_report
from softcal_bench.machine import commit, load_average, machine_info, measure_command
from softcal_bench.readme_report import Measured, Provenance, Step
from softcal_bench.readme_runs import CONFORMAL_COLUMNS, SHIFT_ROWS, ReadmeRun, selected
from softcal_bench.report import machine_block, write_section
from softcal_bench.seeds import REPO, run_seeds
from softcal_bench.tiny import TINY_ARGS, write_tiny_data
from tests.synthetic_data import write_frost_photos

#: --tiny's evaluate: 15 sets (severity 1) of a few images each (generated test splits hold 100-200).
TINY_SHIFT_ARGS = ["--shift-samples", "50", "--shift-severities", "1"]


def shown_dir(run_dir: Path | None, index: int) -> str:
    """The run folder as the README writes it, ``runs/<experiment>/version_<index>``: what a
    user's ``index``-th run of the command gets (these runs went to scratch folders)."""
    experiment = run_dir.parent.name if run_dir is not None else "EXPERIMENT"
    return f"runs/{experiment}/version_{index}"


def evaluate(results: Sequence[dict[str, Any]], options: list[str], extra: list[str], log: Path) -> Step:
    """``evaluate.py`` on the runs of ``results`` with ``options`` (shown) and ``extra`` (--tiny's,
    not shown) in a fresh process; a run that failed to train leaves nothing to evaluate."""
    dirs = [result["run_dir"] for result in results]
    shown = shlex.join(["python", "scripts/evaluate.py", *(shown_dir(d, i) for i, d in enumerate(dirs)),
                        *options])  # fmt: skip
    if any(d is None for d in dirs):
        return Step(shown, -1, None, None)
    print(f"[benchmark] {shown} ...", flush=True)
    command = [sys.executable, "scripts/evaluate.py", *map(str, dirs), *options, *extra]
    found = measure_command(command, log, REPO)
    if found["returncode"] != 0:
        print(log.read_text()[-3000:], file=sys.stderr)
    ok = found["returncode"] == 0
    return Step(shown, found["returncode"], found["wall_s"] if ok else None, found["peak_rss_gb"])


def train(runs: Sequence[ReadmeRun], work: Path, extra: list[str]) -> dict[str, list[dict[str, Any]]]:
    """Each run's command once per seed (its config's own seed: ``None``), a folder each."""
    return {run.name: run_seeds([sys.executable, "scripts/train.py", *run.args, *extra], list(run.seeds),
                                work / run.name, cold_cache=False)
            for run in runs}  # fmt: skip


def measure(runs: Sequence[ReadmeRun], args: argparse.Namespace, work: Path) -> Measured:
    """The training runs, then evaluate on those the conformal (and shift) tables quote."""
    trained = train(runs, work, TINY_ARGS if args.tiny else [])
    conformal = {name: evaluate(trained[name], ["--conformal"], [], work / f"{name}-conformal.log")
                 for name in dict.fromkeys(name for name, _ in CONFORMAL_COLUMNS)
                 if name in trained}  # fmt: skip
    shift, extra = {}, TINY_SHIFT_ARGS if args.tiny else []
    for name in [name for name in SHIFT_ROWS if name in trained] if args.with_shift else []:
        ensemble = ["--ensemble"] if len(trained[name]) > 1 else []
        log = work / f"{name}-shift.log"
        shift[name] = evaluate(trained[name], [*ensemble, "--shift", "all"], extra, log)
    return Measured(trained, conformal, shift)


def regenerate_command(args: argparse.Namespace) -> str:
    """The benchmark command that rewrites these sections (its output file left out)."""
    words = ["python", "scripts/benchmark.py", "--readme", *(["--with-shift"] if args.with_shift else []),
             *(["--only", ",".join(args.only)] if args.only else []),
             *(["--tiny"] if args.tiny else [])]  # fmt: skip
    return shlex.join(words)


def notes(args: argparse.Namespace) -> list[str]:
    if args.tiny:
        shift = f", evaluate `--shift` with `{' '.join(TINY_SHIFT_ARGS)}`" if args.with_shift else ""
        return [f"**--tiny smoke run on generated data: the numbers mean nothing** (train.py with"
                f" `{' '.join(TINY_ARGS)}`{shift})"]
    given = "the folder `--data-root` names" if args.data_root else "`$SOFTCAL_DATA_ROOT`, else `data/`"
    return [f"data: {given}, as train.py finds it",
            "decoded-image cache: as found (`$SOFTCAL_CACHE_DIR` or `~/.cache/softcal`): an image folder"
            " decoded before (CIFAR-10's PNGs) is read from there, not decoded in the wall time"]


def prepare_data(runs: Sequence[ReadmeRun], args: argparse.Namespace, work: Path) -> None:
    """--tiny: generated data in each run's format (and frost photographs for --shift);
    otherwise the data train.py would find, or --data-root's."""
    if args.tiny:
        root = work / "data"
        for configs in dict.fromkeys(tuple(run.configs()) for run in runs):
            write_tiny_data(list(configs), root)
        write_frost_photos(root)
        os.environ["SOFTCAL_DATA_ROOT"] = str(root)  # the child processes' too
    elif args.data_root:
        os.environ["SOFTCAL_DATA_ROOT"] = str(args.data_root)


def section_key(base: str, only: Sequence[str]) -> str:
    """``readme-training``, or with --only its own section (``readme-training-mnist``)."""
    return "-".join([base, *only])


def main(args: argparse.Namespace) -> int:
    """Measure, write each section to ``args.out``; 1 when a command failed (its row says so)."""
    runs = selected(args.only, args.with_shift)
    work = Path(tempfile.mkdtemp(prefix="softcal-readme-"))
    try:
        prepare_data(runs, args, work)
        info, load_before = machine_info(), load_average()
        measured = measure(runs, args, work)
        machine = machine_block(info, load_before, load_average(), notes(args))
        provenance = Provenance(regenerate_command(args), commit(REPO), machine)
        for base, text in readme_report.sections(measured, provenance).items():
            if args.only:  # a section of its own: its heading names its runs
                heading, rest = text.split("\n", 1)
                text = f"{heading}: {', '.join(args.only)}\n{rest}"
            write_section(args.out, section_key(base, args.only), text)
            print("\n" + text, flush=True)
    finally:
        if args.keep_runs:  # the runs themselves, for the README's figures
            shutil.copytree(work, args.keep_runs / "readme", dirs_exist_ok=True,
                            ignore=shutil.ignore_patterns("data"))  # fmt: skip
        shutil.rmtree(work, ignore_errors=True)
    print(f"[benchmark] written to {args.out}")
    return 0 if measured.all_succeeded() else 1
