"""``scripts/benchmark.py --profile``: where one ``train.py`` run spends its wall time.

Two measurements, each a fresh process as a user starts it:

* start-up: ``train.py --help``, i.e. the imports and the command line's parser, which every
  run pays before its first batch;
* one run with Lightning's own ``SimpleProfiler`` (``--trainer.profiler``), whose fit and test
  reports time every hook, step, backward pass, optimizer step, data-module set-up and
  callback (figures, checkpoints, calibration). The profiler adds a few microseconds a hook.

Lightning's actions nest (an epoch contains its batches, a batch its forward and backward), so
the shares of the rows do not add up; the wall time outside both reports is start-up, the
data's first reading before ``fit`` and what runs after the test (the results table, exit).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from softcal_bench.machine import measure_command
from softcal_bench.report import md_table
from softcal_bench.seeds import REPO

PROFILER = "lightning.pytorch.profilers.SimpleProfiler"


@dataclass(frozen=True)
class ProfileRow:
    action: str
    calls: int
    total_s: float


def parse_report(text: str) -> list[ProfileRow]:
    """The rows of a SimpleProfiler report (``extended``: action, mean, calls, total, share)."""
    rows = []
    for line in text.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) != 5 or cells[0] in ("Action", "Total"):
            continue
        try:
            rows.append(ProfileRow(cells[0], int(cells[2]), float(cells[3])))
        except ValueError:
            continue
    return rows


def profile_args(work: Path) -> list[str]:
    return ["--trainer.profiler", PROFILER, "--trainer.profiler.init_args.dirpath", str(work),
            "--trainer.profiler.init_args.filename", "profile"]  # fmt: skip


def measure_profile(configs_args: list[str], overrides: list[str], work: Path,
                    top: int = 25) -> tuple[str, dict[str, float | None]]:  # fmt: skip
    """Start-up, then one profiled run; a table of the ``top`` actions by total time."""
    work.mkdir(parents=True, exist_ok=True)
    print("[benchmark] profile: start-up (train.py --help) ...", flush=True)
    startup = measure_command([sys.executable, "scripts/train.py", "--help"], work / "help.log", REPO)
    print("[benchmark] profile: one train.py run with SimpleProfiler ...", flush=True)
    save_dir = ["--trainer.logger.init_args.save_dir", str(work / "runs")]
    command = [sys.executable, "scripts/train.py", *configs_args, *overrides, *save_dir, *profile_args(work)]
    run = measure_command(command, work / "profiled.log", REPO)
    # The profiler keeps counting across stages: the test report holds the fit's actions too.
    report = next((f for f in (work / "test-profile.txt", work / "fit-profile.txt") if f.is_file()), None)
    rows = parse_report(report.read_text()) if report else []
    wall = run["wall_s"]
    shown = sorted(rows, key=lambda r: r.total_s, reverse=True)[:top]
    table = md_table(["action (Lightning's name)", "calls", "total", "share of the run's wall"],
                     [[f"`{r.action}`", str(r.calls), f"{r.total_s:.2f} s",
                       f"{100 * r.total_s / wall:.1f}%"] for r in shown])  # fmt: skip
    lines = [
        f"`python scripts/train.py {' '.join(configs_args + overrides)}` with `--trainer.profiler"
        f" {PROFILER}`: **{wall:.1f} s wall** (exit code {run['returncode']}), peak RSS"
        f" {run['peak_rss_gb']:.2f} GB. Start-up alone (`python scripts/train.py --help`, imports and"
        f" the parser): **{startup['wall_s']:.1f} s**.",
        f"The {top} longest actions of the whole run, fit and test (they nest: an epoch holds its"
        " batches, a batch its forward, backward and optimizer step):",
        table,
    ]
    return "\n\n".join(lines), {"profile_wall_s": wall, "startup_s": startup["wall_s"]}

