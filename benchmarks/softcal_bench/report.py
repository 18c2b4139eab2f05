"""The benchmark's markdown: one section per config or dataset in the results file."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from softcal_bench.data_path import DataPathRow
from softcal_bench.overhead import InterleavedRun, median_per_epoch
from softcal_bench.seeds import COLUMNS, aggregate
from softcal_bench.targets import SEED_STAT, show, verdict_rows

HEADER = """# Benchmarks

Written by `python scripts/benchmark.py` (the code and what each number means:
`benchmarks/softcal_bench/`). Each section below is replaced when its config or dataset is
benchmarked again. Timings on a shared machine move with its load: the load average is recorded
with each section.
"""

INTERLEAVED = (
    "(a)'s fit runs the whole recipe; after each of its optimizer steps a callback runs one step"
    " of bare loop (c) and one of an identical bare loop (c'), each training its own copy of the"
    " same Classifier (initial weights, optimizer, schedule, data order and augmentation seeds as"
    " (a)). Any load on the machine hits all three within milliseconds. (a)'s epoch is its wall"
    " time from `on_train_epoch_start` to the epoch-end validation minus the time spent in the"
    " bare steps (its hooks, progress bar, checkpoint checks, data fetch, metrics and the"
    " benchmark's own callback stay in); a bare loop's epoch is the sum of its steps. The overhead"
    " compares (a) with the mean of (c) and (c'); (c') against (c) is the control, the same code"
    " twice, so it shows what the method cannot resolve. The verdict takes each epoch's median"
    " over the repeats."
)


def md_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def percents(values: Iterable[float]) -> str:
    return ", ".join(show(v, "%+") for v in values)


def machine_block(info: Mapping[str, str], load_before: str, load_after: str, notes: Sequence[str]) -> str:
    lines = [f"- {key}: {value}" for key, value in info.items()]
    lines.append(f"- load average before: {load_before}; after: {load_after}")
    return "\n".join(lines + [f"- {note}" for note in notes])


def interleaved_markdown(runs: Sequence[InterleavedRun], extra_args: Sequence[str],
                         peak_gb: float | None) -> str:  # fmt: skip
    rows = [[str(r + 1), str(i + 1), str(e.steps), f"{e.lightning_s:.2f}",
             *(f"{s:.2f}" for s in e.bare_s), show(e.overhead, "%+"), show(e.control, "%+"),
             " / ".join(f"{ms:.2f}" for ms in (e.lightning_step_ms, *e.bare_step_ms))]
            for r, run in enumerate(runs) for i, e in enumerate(run.epochs)]  # fmt: skip
    accs = "; ".join(f"repeat {r + 1}: " + ", ".join(
        f"{who} {show(acc, '%')}" for who, acc in zip(("(a)", "(c)", "(c')"), run.test_acc, strict=True))
        for r, run in enumerate(runs))  # fmt: skip
    same = "; ".join(f"repeat {r + 1}: (c) {'yes' if run.same_weights[0] else 'no'},"
                     f" (c') {'yes' if run.same_weights[1] else 'no'}" for r, run in enumerate(runs))
    return "\n".join([
        f"### Lightning overhead per training epoch, interleaved in one process, {len(runs)} repeat(s)",
        "", INTERLEAVED + (f" The fit here runs with `{' '.join(extra_args)}` on top of the section's"
                           " config and overrides." if extra_args else ""), "",
        md_table(["repeat", "epoch", "steps", "(a) Lightning (s)", "(c) bare (s)", "(c') bare (s)",
                  "(a) vs mean of (c), (c')", "control: (c') vs (c)",
                  "median step (a) / (c) / (c') (ms)"], rows),
        "", f"Median over the repeats, per epoch: overhead {percents(median_per_epoch(runs))};"
        f" control {percents(median_per_epoch(runs, 'control'))}.",
        "", f"Test accuracy of the final weights after training interleaved: {accs}. Final weights"
        f" identical to (a)'s: {same}. Peak RSS of this process during the interleaved fits (three nets"
        f" and their optimizers, one copy of the data): {show(peak_gb, 'GB')}.",
    ])  # fmt: skip


def data_path_markdown(rows: Sequence[DataPathRow], probe: Mapping[str, float]) -> str:
    return "\n".join([
        "### Data path alone (no model), one training epoch", "",
        md_table(["data path", "samples", "samples/s", "epoch (s)", "one-off load (s)", "tensors in memory"],
                 [[d.name, f"{d.samples:,}", f"{d.per_s:,.0f}", f"{d.seconds:.2f}", d.load_s,
                   "n/a" if d.tensor_mib is None else f"{d.tensor_mib:.1f} MiB"] for d in rows]),
        "", "Peak memory of softcal's data path in a fresh process (set-up and one augmented epoch):",
        "", md_table(["RSS after imports", "peak RSS", "increase", "uint8 tensors held"],
                     [[f"{probe['baseline_mib']:.0f} MiB", f"{probe['peak_mib']:.0f} MiB",
                       f"{probe['peak_mib'] - probe['baseline_mib']:.0f} MiB",
                       f"{probe['tensor_mib']:.1f} MiB"]]),
    ])  # fmt: skip


def seeds_markdown(command: str, runs: Sequence[Mapping[str, Any]]) -> str:
    """``train.py`` per seed: a row per run and, over several seeds, their mean, min and max."""
    def row(label: str, values: Mapping[str, Any], code: str = "") -> list[str]:
        return [label, *(show(values.get(c), unit) for c, (_, unit) in COLUMNS.items()), code]

    rows = [row("config's" if r["seed"] is None else str(r["seed"]), r, str(r["returncode"])) for r in runs]
    if len(runs) > 1:
        rows += [row(f"**{stat}**", values) for stat, values in aggregate(runs).items()]
    by_stat: dict[str, list[str]] = {}
    for measure, stat in SEED_STAT.items():
        by_stat.setdefault(stat, []).append(COLUMNS[measure][0])
    checked = "; ".join(f"the {stat} for {', '.join(names)}" for stat, names in by_stat.items())
    return "\n".join([
        f"### `train.py`, {len(runs)} seed(s)", "",
        f"`{command}` as a user runs it, a fresh process per seed (output in a temporary run"
        f" directory). ECE, NLL and Brier on the test set with the raw softmax and after"
        f" temperature scaling by the T fitted on the validation split. Targets over the seeds: {checked}.",
        "", md_table(["seed", *(head for head, _ in COLUMNS.values()), "exit code"], rows),
    ])  # fmt: skip


def section(title: str, machine: str, parts: Sequence[str], measured: Mapping[str, float | None],
            targets: Mapping[str, tuple[str, float]]) -> str:  # fmt: skip
    table = md_table(["target", "measured", "verdict"], verdict_rows(measured, targets))
    return "\n\n".join([f"## {title}", machine, *parts, "### Targets", table]) + "\n"


def write_section(path: Path, key: str, body: str) -> None:
    """Put ``body`` between this key's markers in ``path``, keeping every other section."""
    begin, end = f"<!-- benchmark:{key} -->", f"<!-- /benchmark:{key} -->"
    text = path.read_text() if path.is_file() else HEADER
    block = f"{begin}\n{body.rstrip()}\n{end}"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + block + rest.split(end, 1)[1]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)
