"""The benchmark's markdown: tables, verdicts against the targets, and one section per dataset
in the results file."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from softcal.bench.data_path import DataPathResult
from softcal.bench.machine import MIB
from softcal.bench.pipelines import PairedSteps, ScriptRun
from softcal.bench.recipe import TARGET_ACC, PipelineResult

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


def mnist_markdown(
    script: ScriptRun, startup_s: float, as_: Sequence[PipelineResult], b: PipelineResult,
    cs: Sequence[PipelineResult], paired: PairedSteps, data_path: list[DataPathResult],
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
              "- The bare loop and (a) run alternately, (c) (a) (c) (a) (c), same seed, and the"
              " overhead compares their means: a load that drifts during the benchmark lands"
              " on both sides. One run of the same loop varies by 5-10% on this machine.",
              "- Peak RSS: this process's high-water mark, reset before each pipeline (includes"
              " the interpreter, torch and Lightning already loaded)."]  # fmt: skip
    lines += ["", "### Lightning overhead per step, paired short runs", "",
              f"{len(paired.ratios)} rounds, each a bare-loop run and then a Lightning fit of"
              f" {paired.steps} steps (the default recipe: same net, data, seed, batch size,"
              " optimizer and schedule); median time per step, first 20 steps skipped.", ""]
    lines.append(md_table(
        ["round", "(c) bare loop (ms/step)", "(a) Lightning fit (ms/step)", "(a) / (c)"],
        [[str(i + 1), f"{c:.2f}", f"{a:.2f}", f"{a / c:.3f}"] for i, (c, a) in
         enumerate(zip(paired.bare_ms, paired.lightning_ms, strict=True))],
    ))  # fmt: skip
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
    lines += ["", "### Comparisons and targets", ""]
    per_epoch = ", ".join(f"epoch {i + 1}: {100 * o:+.1f}%"
                          for i, o in enumerate(overhead["per_epoch"]))  # fmt: skip
    rows = [
        [f"`train.py` >= {target} test accuracy in <= 45 s wall",
         f"{script.wall_s:.1f} s, {_fmt(script.acc and 100 * script.acc, '.2f', '%')}",
         _verdict(met_acc and script.wall_s <= 45)],
        ["Lightning overhead, (a) vs (c), <= 5%: paired short runs (median of per-round"
         " ratios)",
         f"{_fmt(None if paired.overhead is None else 100 * paired.overhead, '+.1f', '%')} per step",
         _verdict(None if paired.overhead is None else paired.overhead <= 0.05)],
        ["the same from the whole 2-epoch runs above (means of (a) runs vs (c) runs; single"
         " runs vary by 5-10% here)",
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
