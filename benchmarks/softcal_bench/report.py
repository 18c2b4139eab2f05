"""The benchmark's markdown: tables, verdicts against the targets, and one section per dataset
in the results file."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from softcal_bench.data_path import DataPathResult
from softcal_bench.machine import MIB
from softcal_bench.pipelines import InterleavedRun, ScriptRun, median_per_epoch
from softcal_bench.recipe import TARGET_ACC, PipelineResult

# --------------------------------------------------------------------------- markdown


def _fmt(value: float | None, spec: str = ".1f", unit: str = "") -> str:
    return "n/a" if value is None else f"{value:{spec}}{unit}"


def md_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("met" if ok else "**missed**")


def machine_block(info: dict[str, str], load_before: str, load_after: str, tiny: bool) -> str:
    lines = [f"- {key}: {value}" for key, value in info.items()]
    lines.append(f"- load average before: {load_before}; after: {load_after}")
    lines.append("- malloc: freed memory kept in the heap (`softcal.allocator`), for every pipeline"
                 " in this process and for `train.py`")  # fmt: skip
    if tiny:
        lines.append("- **--tiny smoke run on a few batches of generated data: the numbers mean"
                     " nothing**")  # fmt: skip
    return "\n".join(lines)


def lightning_overhead(
    as_: Sequence[PipelineResult], cs: Sequence[PipelineResult]
) -> dict[str, Any]:
    """The runs of (a) against the runs of the bare loop: mean training time per epoch, in
    total and per median step.

    The runs alternate, (c) (a) (c) (a) (c), and each side is averaged, so a load that rises
    or falls during the measurement spreads over both sides instead of landing on one.
    """

    def mean(values: Iterable[float]) -> float:
        values = list(values)
        return sum(values) / len(values)

    cs = [c for c in cs if c.epochs]
    as_ = [a for a in as_ if a.epochs]
    if not as_ or not cs:
        return {"per_epoch": [], "total": None, "step": None}
    n_epochs = min(len(r.epochs) for r in (*as_, *cs))
    per_epoch = [
        mean(a.epochs[k].train_s for a in as_) / mean(c.epochs[k].train_s for c in cs) - 1
        for k in range(n_epochs)
    ]
    total = mean(a.train_s for a in as_) / mean(c.train_s for c in cs) - 1
    a_steps = [a.median_step_s for a in as_ if a.median_step_s]
    c_steps = [c.median_step_s for c in cs if c.median_step_s]
    step = mean(a_steps) / mean(c_steps) - 1 if a_steps and c_steps else None
    return {"per_epoch": per_epoch, "total": total, "step": step}  # fmt: skip


def _percents(values: Iterable[float]) -> str:
    return ", ".join(f"{100 * v:+.1f}%" for v in values)


def interleaved_markdown(runs: Sequence[InterleavedRun]) -> str:
    """The verdict measurement of Lightning's overhead: (a) with (c) and (c') interleaved."""

    def acc(value: float | None) -> str:
        return _fmt(value and 100 * value, ".2f", "%")

    lines = [
        "### Lightning overhead per training epoch, interleaved in one process", "",
        "(a)'s fit runs the whole default recipe; after each of its optimizer steps a callback"
        " runs one step of bare loop (c) and one of an identical bare loop (c'), each on its own"
        " net, optimizer, schedule and data order, all seeded as (a). Any load on the machine"
        " hits all three within milliseconds. (a)'s epoch is its wall time from"
        " `on_train_epoch_start` to the epoch-end validation minus the time spent in the bare"
        " steps (its hooks, progress bar, checkpoint checks, data fetch, metrics and the"
        " benchmark's own timing callbacks stay in); a bare loop's epoch is the sum of its"
        " steps."
        " The overhead compares (a) with the mean of (c) and (c'); (c') against (c) is the"
        f" control, the same code twice, so it shows what the method cannot resolve. Repeated"
        f" {len(runs)} times in this process; the verdict takes each epoch's median.", "",
    ]  # fmt: skip
    lines.append(md_table(
        ["repeat", "epoch", "steps", "(a) Lightning (s)", "(c) bare (s)", "(c') bare (s)",
         "(a) vs mean of (c), (c')", "control: (c') vs (c)", "median step (a) / (c) / (c') (ms)"],
        [[str(r + 1), str(i + 1), str(e.steps), f"{e.lightning_s:.2f}", f"{e.bare_s[0]:.2f}",
          f"{e.bare_s[1]:.2f}", f"{100 * e.overhead:+.1f}%", f"{100 * e.control:+.1f}%",
          f"{e.lightning_step_ms:.2f} / {e.bare_step_ms[0]:.2f} / {e.bare_step_ms[1]:.2f}"]
         for r, run in enumerate(runs) for i, e in enumerate(run.epochs)],
    ))  # fmt: skip
    lines += ["", f"Median over the repeats, per epoch: overhead {_percents(median_per_epoch(runs))};"
              f" control {_percents(median_per_epoch(runs, 'control'))}."]  # fmt: skip
    lines += ["", "Test accuracy after training interleaved: " + "; ".join(
        f"repeat {r + 1}: (a) {acc(run.lightning_acc)}, (c) {acc(run.bare_acc[0])},"
        f" (c') {acc(run.bare_acc[1])}" for r, run in enumerate(runs)) + ". All three trained"
        " the full recipe."]  # fmt: skip
    return "\n".join(lines)


def mnist_markdown(
    script: ScriptRun, startup_s: float, as_: Sequence[PipelineResult], b: PipelineResult,
    cs: Sequence[PipelineResult], interleaved: Sequence[InterleavedRun],
    data_path: list[DataPathResult],
    machine: str,
) -> str:  # fmt: skip
    a = as_[0]
    target = f"{100 * TARGET_ACC:.1f}%"
    lines = ["## MNIST: softcal vs the tutorial pipeline vs a bare loop", "", machine, ""]
    lines.append(
        f"`python scripts/train.py` (default config, as a user runs it; output in a temporary run"
        f" directory): **{script.wall_s:.1f} s wall**, test accuracy"
        f" **{_fmt(script.acc and 100 * script.acc, '.2f', '%')}**, peak RSS"
        f" {script.peak_rss_mib:.0f} MiB, exit code {script.returncode}, 1-minute load average"
        f" {_fmt(script.load_after, '.2f')} when it finished. Start-up of a fresh"
        f" interpreter importing torch, torchvision and lightning: {startup_s:.1f} s."
    )
    lines += ["", "### Training", ""]
    rows = []
    for r in (*as_, b, *cs):
        epochs = " / ".join(f"{e.train_s:.1f}" for e in r.epochs)
        accs = " / ".join(_fmt(e.test_acc and 100 * e.test_acc, ".2f", "%") for e in r.epochs)
        tta = r.time_to(TARGET_ACC)
        rows.append([
            r.name, _fmt(r.images_per_s, ",.0f"), epochs or "n/a",
            _fmt(r.median_step_s and 1000 * r.median_step_s, ".1f"), accs if r.epochs else "n/a",
            _fmt(r.final_acc and 100 * r.final_acc, ".2f", "%"),
            ("not reached" if tta is None and r not in as_ else _fmt(tta, ".1f", " s")),
            _fmt(r.wall_s, ".1f", " s"), _fmt(r.peak_rss_mib, ".0f", " MiB")
            + (f" + workers {r.workers_pss_mib:.0f} MiB PSS" if r.workers_pss_mib else ""),
            _fmt(r.tensor_mib, ".1f", " MiB"), _fmt(r.load_after, ".2f"),
        ])  # fmt: skip
    lines.append(md_table(
        ["pipeline", "train images/s", "epoch train time (s)", "median step (ms)",
         "test acc per epoch",
         "final test acc", f"time to {target}", "wall in process", "peak RSS", "data tensors", "load at end"],
        rows,
    ))  # fmt: skip
    lines += ["", "- (a) per-epoch test accuracy is not measured (it validates on its own"
              " held-out split); its time to accuracy is the `train.py` wall time above.",
              "- (b) and (c): time from building the datasets to the end of the first epoch-end"
              " test evaluation at or above the target, in this process, so without the"
              " interpreter start-up that `train.py`'s wall time includes.",
              "- Epoch train time: from the epoch's first batch to its last optimizer step;"
              " evaluation, checkpoints and figures excluded. Median step: the median time"
              " from one optimizer step to the next, data and hooks included.",
              "- The bare loop and (a) run alternately, (c) (a) (c) (a) (c), same seed; their"
              " means are compared below for information. Runs minutes apart differ by 5-10%"
              " on this machine from load alone, so the overhead verdict comes from the"
              " interleaved measurement.",
              "- Peak RSS: this process's high-water mark, reset before each pipeline (includes"
              " the interpreter, torch and Lightning already loaded)."]  # fmt: skip
    lines += ["", interleaved_markdown(interleaved)]
    lines += ["", "### Data path alone (no model), one training epoch", ""]
    lines.append(md_table(
        ["data path", "samples/s", "epoch (s)", "one-off load (s)", "tensors in memory"],
        [[d.name, _fmt(d.per_s, ",.0f"), _fmt(d.seconds, ".2f"), _fmt(d.load_s, ".2f"),
          _fmt(d.tensor_mib, ".1f", " MiB")] for d in data_path],
    ))  # fmt: skip
    # ---- comparisons and targets
    overhead = lightning_overhead(as_, cs)
    total, step = overhead["total"], overhead["step"]
    tta_b = b.time_to(TARGET_ACC)
    met_acc = script.acc is not None and script.acc >= TARGET_ACC and script.returncode == 0
    speedup = tta_b / script.wall_s if tta_b is not None and met_acc else None
    fair = (tta_b + startup_s) / script.wall_s if speedup is not None else None
    a_met = a.final_acc is not None and a.final_acc >= TARGET_ACC and a.wall_s
    in_process = tta_b / a.wall_s if tta_b is not None and a_met else None
    medians = median_per_epoch(interleaved)
    worst = max(medians, default=None)
    worst_text = "n/a" if worst is None else (
        f"{100 * worst:+.1f}% (medians over {len(interleaved)} repeats, per epoch:"
        f" {_percents(medians)}; control (c') vs (c):"
        f" {_percents(median_per_epoch(interleaved, 'control'))})")
    lines += ["", "### Comparisons and targets", ""]
    per_epoch = ", ".join(f"epoch {i + 1}: {100 * o:+.1f}%"
                          for i, o in enumerate(overhead["per_epoch"]))  # fmt: skip
    rows = [
        [f"`train.py` >= {target} test accuracy in <= 45 s wall",
         f"{script.wall_s:.1f} s, {_fmt(script.acc and 100 * script.acc, '.2f', '%')}",
         _verdict(met_acc and script.wall_s <= 45)],
        ["Lightning overhead per training epoch, (a) vs (c), <= 5%: interleaved in one"
         " process (worst epoch of the medians)", worst_text,
         _verdict(None if worst is None else worst <= 0.05)],
        ["the same from the whole runs above, minutes apart (means of (a) runs vs (c) runs;"
         " single runs vary by 5-10% here)",
         f"training time {_fmt(total and 100 * total, '+.1f', '%')} ({per_epoch or 'n/a'});"
         f" median step {_fmt(step and 100 * step, '+.1f', '%')}", "info"],
        [f"time to {target}: (b) / (a) >= 1.8x",
         (f"{speedup:.2f}x ({tta_b:.1f} s / {script.wall_s:.1f} s); {fair:.2f}x when (b) is"
          f" charged the same {startup_s:.1f} s start-up" if speedup and fair else
          f"n/a: (b) {'did not reach' if tta_b is None else 'reached'} {target}, (a)"
          f" {'reached' if met_acc else 'did not reach'} it"),
         _verdict(None if speedup is None else speedup >= 1.8)],
        [f"the same, both in this process: (b) / (a)'s fit ({_fmt(a.wall_s, '.1f', ' s')},"
         f" final accuracy {_fmt(a.final_acc and 100 * a.final_acc, '.2f', '%')})",
         _fmt(in_process, ".2f", "x"), "info"],
    ]  # fmt: skip
    if len(data_path) == 2:
        ratio = data_path[0].per_s / data_path[1].per_s
        rows.append(["data path samples/s, softcal vs tutorial (MNIST, no augmentation)",
                     f"{ratio:.1f}x", "info"])  # fmt: skip
    lines.append(md_table(["target", "measured", "verdict"], rows))
    return "\n".join(lines) + "\n"


def recipe_markdown(
    runs: Sequence[tuple[str, int, ScriptRun]], overheads: dict[str, list[InterleavedRun]],
    machine: str,
) -> str:
    """``train.py`` per batch size and seed, each batch size's mean, and its Lightning
    overhead."""

    def pct(value: float | None, spec: str = ".2f") -> str:
        return _fmt(None if value is None else 100 * value, spec, "%")

    lines = ["## MNIST recipe: batch size and malloc settings of the default config", "", machine, "",
             "`python scripts/train.py` as a user runs it (start-up, training, temperature"
             " fit and test included): each batch size with its peak learning rate, and the"
             " default with glibc's own malloc thresholds (`--keep_freed_memory false`); three"
             " seeds, the order reversed every other seed.", ""]  # fmt: skip
    lines.append(md_table(
        ["recipe", "seed", "wall (s)", "test acc", "test ECE (T = 1)", "exit code", "load at end"],
        [[label, str(seed), f"{r.wall_s:.1f}", pct(r.acc), pct(r.metrics.get("test/ece")),
          str(r.returncode), _fmt(r.load_after, ".2f")] for label, seed, r in runs],
    ))  # fmt: skip
    summary = []
    for label in dict.fromkeys(label for label, _, _ in runs):
        mine = [r for name, _, r in runs if name == label]
        accs = [r.acc for r in mine if r.acc is not None]
        summary.append([
            label, f"{sum(r.wall_s for r in mine) / len(mine):.1f}",
            pct(sum(accs) / len(accs) if accs else None), pct(min(accs, default=None)),
        ])  # fmt: skip
    lines += ["", md_table(["recipe", "mean wall (s)", "mean test acc", "worst test acc"],
                           summary)]  # fmt: skip
    lines += ["", "Lightning's overhead per training epoch at each batch size, measured as in the"
              " MNIST section ((a) with two bare loops interleaved in one process, repeated)."
              " Lightning's"
              " cost is per step, so it weighs half as much when a step carries twice the"
              " images.", ""]  # fmt: skip
    lines.append(md_table(
        ["recipe", "median per epoch: (a) vs mean of (c), (c')", "each repeat",
         "control: (c') vs (c)"],
        [[label, _percents(median_per_epoch(runs)),
          "; ".join(_percents(e.overhead for e in run.epochs) for run in runs),
          _percents(median_per_epoch(runs, "control"))]
         for label, runs in overheads.items()],
    ))  # fmt: skip
    return "\n".join(lines) + "\n"


def data_path_markdown(
    kind: str, results: list[DataPathResult], probe: dict[str, float] | None, machine: str
) -> str:
    title = {"synthetic-cifar": "generated CIFAR-10-sized data (pickles, 50,000 x 3 x 32 x 32)",
             "cifar10-sample": "the real CIFAR-10 sample (PNG folders)"}[kind]  # fmt: skip
    lines = [f"## Data path alone: {title}", "", machine, "",
             "Random crop (padding 4) + horizontal flip + normalise, batch 256, one training"
             " epoch, no model.", ""]  # fmt: skip
    lines.append(md_table(
        ["data path", "samples", "samples/s", "epoch (s)", "one-off load (s)", "tensors in memory"],
        [[d.name, f"{d.samples:,}" if d.samples else "-",
          _fmt(d.per_s, ",.0f") if d.samples else "-",
          _fmt(d.seconds, ".2f") if d.samples else "-", _fmt(d.load_s, ".2f"),
          _fmt(d.tensor_mib, ".1f", " MiB")] for d in results],
    ))  # fmt: skip
    timed = [d for d in results if d.samples]
    ratio = timed[0].per_s / timed[-1].per_s if len(timed) == 2 else None
    rows = [["softcal samples/s >= 10x the PIL DataLoader's", _fmt(ratio, ".1f", "x"),
             _verdict(None if ratio is None else ratio >= 10)]]  # fmt: skip
    if probe is not None:
        lines += ["", "Peak memory of softcal's data path in a fresh process (read the pickles,"
                  " split train/val, one augmented epoch):", ""]  # fmt: skip
        lines.append(md_table(
            ["RSS after imports", "peak RSS", "increase", "uint8 tensors held"],
            [[f"{probe['baseline_mib']:.0f} MiB", f"{probe['peak_mib']:.0f} MiB",
              f"{probe['peak_mib'] - probe['baseline_mib']:.0f} MiB",
              f"{probe['tensor_mib']:.1f} MiB"]],
        ))  # fmt: skip
        rows.append(["CIFAR-10-sized data path peak memory < 1.5 GB",
                     f"{probe['peak_mib'] * MIB / 1e9:.2f} GB", _verdict(probe["peak_mib"] * MIB
                                                                   < 1.5e9)])  # fmt: skip
    lines += ["", md_table(["target", "measured", "verdict"], rows)]
    return "\n".join(lines) + "\n"


HEADER = """# Benchmarks

Written by `python scripts/benchmark.py` (see `src/softcal/bench/` for what each number
means). Each section below is replaced when its dataset is benchmarked again
(`--dataset mnist`, `--dataset synthetic-cifar`, `--dataset cifar10-sample`). Timings on a
shared machine move with its load: the load average is recorded with each section.
"""


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
