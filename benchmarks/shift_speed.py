"""How long ``evaluate.py RUN --shift all`` takes: seconds per corrupted set, generation (the
corruptions of softcal.shift) against inference (the set's pass through the net), and the total.

    python benchmarks/shift_speed.py runs/cifar10/version_0   # data under $SOFTCAL_DATA_ROOT
    ... --shift-samples 200    # a quick check: the first 200 test images of each set
    ... --out evals/shift      # keep shift.json, shift.md and the figures too

It runs the shift analysis (``softcal.evaluation.shift``) on the run exactly as evaluate does -
the options parsed by evaluate's own parser, the same context - into a temporary folder, after
the test pass (timed apart: evaluate makes that pass with or without ``--shift``). Generation
is the time ``ShiftedSets`` spends corrupting each set, inference the time of each set's pass
(``EvaluationContext.shift_seconds``); "other" is the rest of the analysis (scoring, the
example images, figures, files). The section ``shift-speed-<dataset>`` of ``--doc``
(docs/benchmarks.md; :func:`section_name`) is replaced with the numbers, the command, the
commit and the machine.

Target: all 75 sets of the 10,000 CIFAR-10 test images (750,000 images) in at most 15 minutes
on the 2-core CPU, with configs/cifar10.yaml's net, generation included.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# softcal_bench (beside this file) imports tests/ for its generated data: both on the path, as
# scripts/benchmark.py puts them.
sys.path[:0] = [str(REPO / "benchmarks"), str(REPO)]

from softcal_bench.machine import commit, load_average, machine_info  # noqa: E402
from softcal_bench.report import machine_block, md_table, write_section  # noqa: E402

from softcal.apps.evaluate import parse_args as evaluate_args  # noqa: E402
from softcal.evaluation.context import EvaluationContext  # noqa: E402
from softcal.evaluation.shift import ANALYSIS  # noqa: E402

TARGET_S = 15 * 60
FULL_SETS, FULL_IMAGES = 75, 10_000


def measure(run: str, shift_args: list[str], keep: Path | None = None) -> dict:
    """The test pass, then the shift analysis; every timing. The analysis's files go to
    ``keep`` when given (the same files evaluate writes), else to a folder removed after."""
    args, overrides = evaluate_args([run, *shift_args])
    start = time.perf_counter()
    ctx = EvaluationContext.open(run, "test", overrides)
    ctx.evaluation()
    test_s = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(keep or scratch)
        out.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        result = ANALYSIS.run(ctx, out, args)
        total_s = time.perf_counter() - start
    generation, inference = ctx.shifted_sets.seconds, ctx.shift_seconds
    sets = [(key, generation.get(key, 0.0), inference[key]) for key in inference]
    return {"dataset": ctx.dataset, "checkpoint": str(ctx.run.checkpoint), "test_s": test_s,
            "total_s": total_s, "sets": sets, "table": result.table}  # fmt: skip


def report(found: dict) -> tuple[list[str], dict[str, float]]:
    """Printed lines (one per set, then the totals) and the totals."""
    lines = [f"{'corruption':<18}{'severity':>9}{'images':>8}{'generation s':>14}{'inference s':>13}"]
    for (name, severity, n), gen, inf in found["sets"]:
        lines.append(f"{name:<18}{severity:>9}{n:>8}{gen:>14.3f}{inf:>13.3f}")
    gen = sum(g for _, g, _ in found["sets"])
    inf = sum(i for _, _, i in found["sets"])
    total = found["total_s"]
    totals = {"sets": len(found["sets"]), "generation": gen, "inference": inf, "other": total - gen - inf,
              "total": total, "test": found["test_s"]}  # fmt: skip
    count = max(totals["sets"], 1)
    lines += ["", f"{totals['sets']} sets: generation {gen:.1f} s ({gen / count:.3f} s per set), inference"
              f" {inf:.1f} s ({inf / count:.3f} s per set), other {totals['other']:.1f} s; shift analysis"
              f" total {totals['total']:.1f} s ({totals['total'] / 60:.2f} min); the test pass before it"
              f" {totals['test']:.1f} s"]  # fmt: skip
    return lines, totals


def section(found: dict, totals: dict[str, float], command: str, machine: str) -> str:
    """The markdown section: per corruption (mean per set over its severities), then the totals."""
    per: dict[str, list[tuple[float, float]]] = {}
    for (name, _, _), gen, inf in found["sets"]:
        per.setdefault(name, []).append((gen, inf))
    rows = [[name, str(len(v)), *(f"{sum(part) / len(v):.3f}" for part in zip(*v, strict=True))]
            for name, v in per.items()]  # fmt: skip
    images, full = set_size(found, totals)
    verdict = ("met" if totals["total"] <= TARGET_S else "missed") if full else "n/a (not the full-size run)"
    return "\n\n".join([
        f"## {found['dataset']}: `evaluate.py --shift`, {totals['sets']} sets of {images} images", machine,
        f"- command: `{command}`\n- commit: {commit(REPO)}\n- checkpoint: `{found['checkpoint']}`",
        "Seconds per set, the mean over the corruption's severities: generation (corrupting the images)"
        " and inference (the set's pass through the net in the run's Trainer settings).",
        md_table(["corruption", "sets", "generation (s)", "inference (s)"], rows),
        md_table(["part", "seconds"], [[k, f"{totals[k]:.1f}"] for k in
                                       ("generation", "inference", "other", "total", "test")]),
        md_table(["target", "measured", "verdict"], [[
            f"all {FULL_SETS} sets x {FULL_IMAGES:,} images, generation included, <= {TARGET_S / 60:.0f} min",
            f"{totals['total'] / 60:.2f} min", verdict]]),
    ]) + "\n"  # fmt: skip


def set_size(found: dict, totals: dict[str, float]) -> tuple[int, bool]:
    """(images per set, whether the run was the full-size one the target is about)."""
    images = found["sets"][0][0][2] if found["sets"] else 0
    return images, totals["sets"] == FULL_SETS and images == FULL_IMAGES


def section_name(found: dict, totals: dict[str, float]) -> str:
    """``shift-speed-<dataset>`` for the full-size run; smaller runs get their own section
    (``shift-speed-<dataset>-<sets>x<images>``), so a quick check never replaces the full one."""
    images, full = set_size(found, totals)
    return f"shift-speed-{found['dataset']}" + ("" if full else f"-{totals['sets']}x{images}")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", help="a run directory or checkpoint")
    parser.add_argument("--shift", default="all")
    parser.add_argument("--shift-severities", default="all")
    parser.add_argument("--shift-samples", type=int, default=None)
    parser.add_argument("--doc", type=Path, default=REPO / "docs" / "benchmarks.md",
                        help="the markdown file whose shift-speed section is replaced")  # fmt: skip
    parser.add_argument("--no-doc", action="store_true", help="print only")
    parser.add_argument("--out", type=Path, default=None,
                        help="keep the analysis's files (shift.json, shift.md, figures) here")  # fmt: skip
    args = parser.parse_args(argv)
    shift_args = ["--shift", args.shift, "--shift-severities", args.shift_severities]
    shift_args += ["--shift-samples", str(args.shift_samples)] if args.shift_samples else []
    load_before = load_average()
    found = measure(args.run, shift_args, args.out)
    lines, totals = report(found)
    print("\n".join([found["table"] or "", "", *lines]))
    if not args.no_doc:
        argv_text = sys.argv[1:] if argv is None else argv
        command = "python benchmarks/shift_speed.py " + shlex.join(argv_text)
        machine = machine_block(machine_info(), load_before, load_average(), [])
        write_section(args.doc, section_name(found, totals), section(found, totals, command, machine))
        print(f"wrote its section of {args.doc}")
    return totals


if __name__ == "__main__":
    main()
