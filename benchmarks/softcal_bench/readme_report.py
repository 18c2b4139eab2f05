"""The markdown of ``--readme``'s sections: the README's tables, each number formatted as the
README prints it, with the commands that gave them, the commit and the machine.
:mod:`softcal_bench.readme_numbers` measures; this lays out what it measured."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from softcal_bench.readme_runs import (
    CONFORMAL_COLUMNS,
    CONFORMAL_METHODS,
    README_RUNS,
    RUNS,
    SHIFT_ROWS,
    ReadmeRun,
)
from softcal_bench.report import md_table
from softcal_bench.targets import show


@dataclass(frozen=True)
class Step:
    """A command a section shows, with what it cost; wall time None: it failed."""

    shown: str
    returncode: int
    wall_s: float | None
    peak_rss_gb: float | None


@dataclass
class Measured:
    """One invocation's measurements: run name -> run_seeds' result per seed, and run name ->
    its ``evaluate.py --conformal`` and ``--shift all`` steps."""

    trained: dict[str, list[dict[str, Any]]]
    conformal: dict[str, Step]
    shift: dict[str, Step]

    def all_succeeded(self) -> bool:
        codes = [r["returncode"] for results in self.trained.values() for r in results]
        codes += [step.returncode for step in (*self.conformal.values(), *self.shift.values())]
        return not any(codes)


@dataclass(frozen=True)
class Provenance:
    """What every section states: how to regenerate it, from which code, on what machine."""

    regenerate: str
    commit: str
    machine: str  # report.machine_block's lines

    def block(self) -> str:
        return f"- regenerate: `{self.regenerate}`\n- commit: {self.commit}\n{self.machine}"


def number(value: float | None, digits: int, percent: bool = False) -> str:
    """As the README prints it: ``99.24%`` (percent, 2 digits), ``0.0246``, ``1.054``."""
    if value is None or math.isnan(value):
        return "n/a"
    return f"{100 * value:.{digits}f}%" if percent else f"{value:.{digits}f}"


def pair(raw: float | None, calibrated: float | None, digits: int, percent: bool = False) -> str:
    return f"{number(raw, digits, percent)} -> {number(calibrated, digits, percent)}"


def eval_file(result: Mapping[str, Any], folder: str, name: str) -> dict[str, Any]:
    """A JSON file evaluate wrote in the run's ``folder``; empty when it did not (a failed
    training or evaluate, whose exit code the section shows)."""
    path = result["run_dir"] / folder / name if result["run_dir"] is not None else None
    return json.loads(path.read_text()) if path is not None and path.is_file() else {}


def step_rows(steps: Sequence[Step]) -> str:
    return md_table(["command", "wall", "peak RSS", "exit code"],
                    [[f"`{s.shown}`", show(s.wall_s, "s"), show(s.peak_rss_gb, "GB"), str(s.returncode)]
                     for s in steps])  # fmt: skip


TRAINING_ABOUT = (
    "Each row is the README's command as a user types it, with the config's seed (0), in a fresh"
    " process that writes its run to a scratch folder (`--trainer.logger.init_args.save_dir`)."
    " Test split, from the run's results.json: raw softmax -> after the calibration its config"
    " names (`calibration.method`: temperature scaling; for CIFAR-100 `top_label_beta` on top of"
    " it), fitted on the validation split; T: the temperature; AURC of the raw softmax (selective"
    " prediction); wall time from start-up to the printed table; the process's peak RSS."
)


def training_row(run: ReadmeRun, result: Mapping[str, Any]) -> list[str]:
    return [run.label, f"`{run.command()}`", number(result["test_acc"], 2, True),
            pair(result["test_ece"], result["calibrated_ece"], 2, True),
            pair(result["test_nll"], result["calibrated_nll"], 4), number(result["temperature"], 3),
            number(result["test_aurc"], 3, True), show(result["wall_s"], "s"),
            show(result["peak_rss_gb"], "GB"), str(result["returncode"])]  # fmt: skip


def training_section(measured: Measured, provenance: Provenance) -> str:
    rows = [training_row(run, measured.trained[run.name][0])
            for run in README_RUNS if run.name in measured.trained]  # fmt: skip
    header = ["run, seed 0", "command", "test accuracy", "ECE raw -> calibrated", "NLL raw -> calibrated",
              "T", "AURC raw", "wall", "peak RSS", "exit code"]  # fmt: skip
    return "\n\n".join(["## The README's training runs", provenance.block(), TRAINING_ABOUT,
                        md_table(header, rows)])  # fmt: skip


def conformal_cell(records: Sequence[Mapping[str, Any]], method: str, alpha: float) -> str:
    """``coverage / mean set size`` of the raw probabilities' sets, as the README's table."""
    for r in records:
        if r["method"] == method and r["probabilities"] == "raw" and math.isclose(r["alpha"], alpha):
            return f"{number(r['coverage'], 2, True)} / {r['mean_set_size']:.2f}"
    return "n/a"


def conformal_section(measured: Measured, provenance: Provenance) -> str:
    columns = [(name, alpha) for name, alpha in CONFORMAL_COLUMNS if name in measured.conformal]
    records = {name: eval_file(measured.trained[name][0], "eval", "conformal.json").get("records", [])
               for name, _ in columns}  # fmt: skip
    rows = [[label, *(conformal_cell(records[name], method, alpha) for name, alpha in columns)]
            for method, label in CONFORMAL_METHODS.items()]  # fmt: skip
    about = ("`python scripts/evaluate.py RUN --conformal` on the runs of the training section (RUN: the"
             " folder the run's training command wrote), raw probabilities: coverage / mean set size on"
             " the test split, thresholds fitted on the validation split.")  # fmt: skip
    header = ["method", *(f"{RUNS[name].dataset}, alpha {alpha:g}" for name, alpha in columns)]
    return "\n\n".join(["## The README's conformal prediction sets", provenance.block(), about,
                        md_table(header, rows), step_rows(list(measured.conformal.values()))])  # fmt: skip


def shift_cells(found: Mapping[str, Any]) -> list[str]:
    """T, clean accuracy, clean ECE raw -> TS, corrupted accuracy, corrupted ECE raw -> TS from
    shift.json's summary rows for severity 0 (clean) and all corrupted sets (their mean)."""
    rows = {row["severity"]: row for row in found.get("summary", [])}
    if 0 not in rows or "all" not in rows:
        return [number(found.get("temperature"), 3), *["n/a"] * 4]
    clean, shifted = rows[0], rows["all"]

    def mean(row: Mapping[str, Any], stage: str, metric: str) -> float:
        return row[stage][metric]["mean"]

    return [number(found["temperature"], 3), number(mean(clean, "raw", "acc"), 2, True),
            pair(mean(clean, "raw", "ece"), mean(clean, "calibrated", "ece"), 2, True),
            number(mean(shifted, "raw", "acc"), 2, True),
            pair(mean(shifted, "raw", "ece"), mean(shifted, "calibrated", "ece"), 2, True)]  # fmt: skip


def shift_rows(measured: Measured, name: str) -> list[list[str]]:
    """A run's row; or an ensemble's (its files in the first member's eval_ensemble/), then a
    row per member (each member's own eval/, written by the same command)."""
    results, label = measured.trained[name], RUNS[name].label
    if len(results) == 1:
        return [[label, *shift_cells(eval_file(results[0], "eval", "shift.json"))]]
    members = [[f"its member, seed {r['seed']}", *shift_cells(eval_file(r, "eval", "shift.json"))]
               for r in results]  # fmt: skip
    return [[label, *shift_cells(eval_file(results[0], "eval_ensemble", "shift.json"))], *members]


def member_steps(run: ReadmeRun, results: Sequence[Mapping[str, Any]]) -> list[Step]:
    """The ensemble members' training commands, one per seed, with what each cost."""
    return [Step(run.command().replace("--seed_everything S", f"--seed_everything {r['seed']}"),
                 r["returncode"], r["wall_s"], r["peak_rss_gb"]) for r in results]  # fmt: skip


SHIFT_ABOUT = (
    "`evaluate.py RUN --shift all` on the runs of the training section, and `--ensemble --shift all`"
    " on three `cifar10_quick` seeds that hold out one validation split: the 15 CIFAR-10-C"
    " corruptions x 5 severities, generated in-process; corrupted: the mean over those 75 sets."
    " TS: the temperature T each run (or the ensemble) fitted on clean validation data. Per"
    " severity and per corruption: each run's `eval/shift.md`."
)


def shift_section(measured: Measured, provenance: Provenance) -> str:
    names = [name for name in SHIFT_ROWS if name in measured.shift]
    rows = [row for name in names for row in shift_rows(measured, name)]
    steps = [step for name in names if len(measured.trained[name]) > 1
             for step in member_steps(RUNS[name], measured.trained[name])]  # fmt: skip
    steps += [measured.shift[name] for name in names]
    header = ["model", "T", "clean acc", "clean ECE raw -> TS", "corrupted acc", "corrupted ECE raw -> TS"]
    return "\n\n".join(["## Calibration under shift", provenance.block(), SHIFT_ABOUT, md_table(header, rows),
                        step_rows(steps)])  # fmt: skip


def sections(measured: Measured, provenance: Provenance) -> dict[str, str]:
    """Section name -> markdown, for what this invocation measured."""
    found = {"readme-training": training_section(measured, provenance) if
             any(run.name in measured.trained for run in README_RUNS) else None,
             "readme-conformal": conformal_section(measured, provenance) if measured.conformal else None,
             "readme-shift": shift_section(measured, provenance) if measured.shift else None}  # fmt: skip
    return {name: text + "\n" for name, text in found.items() if text is not None}
