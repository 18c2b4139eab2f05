"""Evaluate saved checkpoints: the test (or validation) metrics, raw and temperature-scaled.

Each checkpoint is reopened with :func:`softcal.runs.load.load_run` (the run's ``config.yaml``
plus the checkpoint) and tested through Lightning with the run's Trainer settings, so the
numbers reproduce what training printed. Values can be overridden like in training
(``--data.root DIR``, ``--trainer.accelerator cpu``); a checkpoint whose classes or image shape
do not fit the data is refused before any weights are loaded.

    python scripts/evaluate.py runs/mnist/version_0              # its best checkpoint
    python scripts/evaluate.py runs/mnist/version_0 --split val  # keys val/*, val_calibrated/*
    python scripts/evaluate.py runs/mnist/version_*              # one comparison table
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from softcal.apps import evaluation_analyses
from softcal.errors import exit_on_user_error
from softcal.runs.load import RUN_HELP, LoadedRun, load_run, split_overrides
from softcal.runs.run_dirs import atomic_write_json

if TYPE_CHECKING:
    from lightning.pytorch import Callback, Trainer

# Lightning is imported inside the functions that need it: a wrong path or a broken checkpoint
# is reported in a second or two, without waiting for Lightning to load.

#: Evaluation prints one table: no progress bar or model summary unless an override asks.
QUIET = ("--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false")

#: Columns of the comparison table: (metric name, calibrated?, header).
COLUMNS = (
    ("acc", False, "acc"),
    ("ece", False, "ece"),
    ("mce", False, "mce"),
    ("adaptive_ece", False, "adaptive_ece"),
    ("brier", False, "brier"),
    ("nll", False, "nll"),
    ("ece", True, "cal. ece"),
)


@dataclass
class Evaluation:
    """What one checkpoint scored, and where its files went."""

    checkpoint: Path
    run_dir: Path
    split: str  # "test" or "val"; the metric keys are "<split>/..." and "<split>_calibrated/..."
    dataset: str
    temperature: float | None  # None: the checkpoint carries no fitted temperature (T = 1)
    metrics: dict[str, float]
    class_names: list[str] = field(default_factory=list)
    #: what the calibrated metrics used: "temperature", the run's stored --calibrator, or None
    calibration_method: str | None = None
    #: the calibrated column's header (``RunCalibration.label()``)
    calibration_label: str = "T = 1, not fitted"
    out_dir: Path | None = None
    files: list[Path] = field(default_factory=list)


def evaluation_trainer(run: LoadedRun, callbacks: Sequence[Callback] = ()) -> Trainer:
    """A Trainer with the run's settings (accelerator, devices, precision, limits...) that
    neither logs nor checkpoints: evaluating must not create a run of its own."""
    from lightning.pytorch import Trainer
    from lightning.pytorch.utilities.exceptions import MisconfigurationException

    from softcal.apps.cli import trainer_settings_error

    quiet_lightning()
    settings = {**run.trainer, "logger": False, "enable_checkpointing": False,
                "callbacks": list(callbacks)}  # fmt: skip
    try:
        return Trainer(**settings)
    except MisconfigurationException as err:
        raise trainer_settings_error(err) from err


def evaluate_checkpoint(
    path: str | Path, split: str = "test", overrides: Sequence[str] = ()
) -> tuple[Evaluation, dict[str, Any]]:
    """Test one checkpoint (or a run directory's best); returns the scores and figure state."""
    run = load_run(path, [*QUIET, *overrides], check_classes=True)
    model, datamodule = run.model, run.datamodule
    if split == "val":
        # The validation split is carved from the training set with the run's seed; it goes
        # through test_step (raw and calibrated metrics), and the keys are renamed below.
        datamodule.setup("fit")
        datamodule.splits["test"] = datamodule.splits["val"]
    from softcal.calibration.callbacks import CalibrationFigures
    from softcal.calibration.selective_callback import SelectivePrediction
    from softcal.runs.split_logits import LogitsCollector

    drawn = CalibrationFigures(int(model.hparams.calibration_bins))  # no logger: only sums
    selective = SelectivePrediction(draw=False)  # test/aurc ... as training logs them
    collected = LogitsCollector()  # the logits behind the calibrator comparison and OOD scores
    trainer = evaluation_trainer(run, [drawn, selective, collected])
    with warnings.catch_warnings():
        # A deprecation inside Lightning itself, nothing a user can act on.
        warnings.filterwarnings("ignore", message=".*isinstance.treespec, LeafSpec.*")
        metrics = trainer.test(model, datamodule=datamodule, verbose=False)[0]
    evaluation = Evaluation(
        checkpoint=run.checkpoint,
        run_dir=run.run_dir,
        split=split,
        dataset=datamodule.name,
        temperature=run.calibration.temperature,
        metrics={key_for_split(k, split): float(v) for k, v in sorted(metrics.items())},
        class_names=run.class_names,
        calibration_method=run.calibration.method,
        calibration_label=run.calibration.label(),
    )
    raw = drawn.finished["test"]
    calibrated = drawn.finished.get("test_calibrated", raw)  # T = 1 when none is fitted

    def bins(state: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in state.items() if k != "confusion"}

    return evaluation, {"raw": bins(raw), "calibrated": bins(calibrated), "confusion": raw["confusion"],
                        "run": run, "logits": collected.logits, "labels": collected.labels,
                        "selective": selective.finished}  # fmt: skip


def key_for_split(key: str, split: str, scored_as: str = "test") -> str:
    """``test/ece`` -> ``val/ece`` and ``test_calibrated/ece`` -> ``val_calibrated/ece``:
    test_step logs every split it scores under ``test``."""
    return split + key[len(scored_as) :] if key.startswith(scored_as) else key


def write_outputs(
    evaluation: Evaluation, state: dict[str, Any], out_dir: Path, overrides: Sequence[str] = ()
) -> list[Path]:
    """metrics.json, reliability diagrams (raw and calibrated) and the confusion matrix."""
    from softcal.calibration import figures  # matplotlib only when files are written

    name, where = evaluation.checkpoint.name, f"{evaluation.dataset} {evaluation.split}"
    files = [
        atomic_write_json(out_dir / "metrics.json", {
            "checkpoint": str(evaluation.checkpoint),
            "run_dir": str(evaluation.run_dir),
            "dataset": evaluation.dataset,
            "split": evaluation.split,
            "overrides": list(overrides),
            "temperature": evaluation.temperature,
            "calibration_method": evaluation.calibration_method,
            # Summed over processes: equals the split's size exactly once every sample was
            # seen once (none dropped, none duplicated by a distributed sampler).
            "num_samples": int(state["raw"]["count"].sum()),
            "metrics": evaluation.metrics,
        })
    ]  # fmt: skip
    t, method = evaluation.temperature, evaluation.calibration_method
    calibrated_label = f"T = {t:.3f}" if t is not None else "no fitted T: T = 1"
    for stage, suffix, label in (
        ("raw", "", "T = 1"),
        ("calibrated", "_calibrated", calibrated_label if method in (None, "temperature") else method),
    ):
        title = f"{name}\n{where}, {label}"  # two lines: the figure is narrow
        fig = figures.reliability_diagram(**state[stage], title=title)
        files.append(figures.save_png(fig, out_dir / f"reliability_diagram{suffix}.png"))
    # The raw predictions' matrix: T never changes a predicted class, but a stored vector or
    # matrix calibrator can, so the picture says which predictions it counts.
    title = f"Confusion matrix, {where}, {name}, raw softmax"
    fig = figures.confusion_matrix_figure(state["confusion"], evaluation.class_names, title)
    files.append(figures.save_png(fig, out_dir / "confusion_matrix.png"))
    return files


def comparison_title(evaluations: Sequence[Evaluation]) -> str:
    """Every dataset in the table, in order of appearance: runs may be of different data."""
    datasets = list(dict.fromkeys(e.dataset for e in evaluations))
    split = evaluations[0].split  # one --split for all
    return f"{' and '.join(datasets)}, {split} split" + ("s" if len(datasets) > 1 else "")


def comparison_table(evaluations: Sequence[Evaluation], labels: Sequence[str]) -> str:
    """One row per checkpoint; percentages for accuracy and calibration errors. A dataset
    column appears when the checkpoints were tested on different datasets."""
    several = len({e.dataset for e in evaluations}) > 1
    width = max(len("checkpoint"), *(len(label) for label in labels))
    dwidth = max(len("dataset"), *(len(e.dataset) for e in evaluations)) + 2 if several else 0
    head = f"{'checkpoint':<{width}}" + (f"{'dataset':>{dwidth}}" if several else "")
    head += "".join(f"{h:>14}" for *_, h in COLUMNS)
    lines = [head, "-" * len(head)]
    for evaluation, label in zip(evaluations, labels, strict=True):
        cells = [f"{label:<{width}}", f"{evaluation.dataset:>{dwidth}}" if several else ""]
        for name, calibrated, _ in COLUMNS:
            stage = evaluation.split + ("_calibrated" if calibrated else "")
            value = evaluation.metrics.get(f"{stage}/{name}", math.nan)
            percent = name in ("acc", "ece", "mce", "adaptive_ece")
            cells.append(f"{100 * value:>13.2f}%" if percent else f"{value:>14.4f}")
        lines.append("".join(cells))
    return "\n".join(lines)


def _out_dirs(evaluations: Sequence[Evaluation], out: Path | None) -> list[Path]:
    """Where each evaluation's files go: ``--out`` for one, ``--out/<n>_<run>`` for several,
    else ``<run_dir>/eval`` (``eval_val`` for the validation split), never one folder twice."""
    dirs: list[Path] = []
    for n, evaluation in enumerate(evaluations):
        if out is not None:
            base = out if len(evaluations) == 1 else out / f"{n}_{evaluation.run_dir.name}"
        else:
            base = evaluation.run_dir / ("eval" if evaluation.split == "test" else "eval_val")
        if base in dirs:  # two checkpoints of one run: keep both sets of files
            base = base / evaluation.checkpoint.stem
        dirs.append(base)
    return dirs


def parse_args(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    own, overrides = split_overrides(argv)
    parser = argparse.ArgumentParser(
        prog="evaluate.py",
        description="Test checkpoints with the config their run saved; print accuracy and"
        " calibration (raw and temperature-scaled); write metrics.json and figures. Options"
        " --data.*, --model.*, --trainer.* override the saved config.",
    )
    parser.add_argument("paths", nargs="+", metavar="RUN_DIR_OR_CKPT", help=RUN_HELP)
    parser.add_argument("--split", choices=("test", "val"), default="test",
                        help="the official test set (default) or the run's validation split")
    parser.add_argument("--out", type=Path, default=None,
                        help="output folder (default: <run_dir>/eval)")  # fmt: skip
    evaluation_analyses.add_arguments(parser)
    args = parser.parse_args(own)
    evaluation_analyses.check_arguments(args)  # before any checkpoint is loaded
    return args, overrides


def quiet_lightning() -> None:
    """Lightning's info lines (GPU available, seed set, tips) are noise in a report."""
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)


def main(argv: Sequence[str] | None = None) -> list[Evaluation]:
    args, overrides = parse_args(sys.argv[1:] if argv is None else argv)
    results = [evaluate_checkpoint(path, args.split, overrides) for path in args.paths]
    evaluations = [evaluation for evaluation, _ in results]
    for (evaluation, state), out_dir in zip(results, _out_dirs(evaluations, args.out), strict=True):
        evaluation.out_dir = out_dir
        evaluation.files = write_outputs(evaluation, state, out_dir, overrides)
        files, tables = evaluation_analyses.analyse(evaluation, state, out_dir, args)
        evaluation.files += files
        state["tables"] = tables
    if len(evaluations) == 1:
        print(results_table(evaluations[0]))
    else:
        labels = [_label(path, e) for path, e in zip(args.paths, evaluations, strict=True)]
        print(f"{comparison_title(evaluations)}\n")
        print(comparison_table(evaluations, labels))
    for table in (table for _, state in results for table in state["tables"]):
        print(f"\n{table}")  # calibrator comparison, OOD detection
    for e in evaluations:
        if e.temperature is None:
            print(f"note: {e.checkpoint.name} has no fitted temperature (trained with --calibrate"
                  " false?): the calibrated metrics are the raw ones (T = 1)", file=sys.stderr)  # fmt: skip
        print(f"wrote {', '.join(str(f.relative_to(e.out_dir)) for f in e.files)} to {e.out_dir}")
    return evaluations


def results_table(e: Evaluation) -> str:
    """Training's results table (raw vs calibrated per metric), headed by the split scored."""
    from softcal.runs.results_table import format_results

    title = f"{e.dataset} {e.split} split, checkpoint {e.checkpoint}"
    return format_results(e.metrics, e.calibration_label, title, split=e.split)


def _label(path: str | Path, evaluation: Evaluation) -> str:
    """The argument as typed, completed to the checkpoint's path when it names a run directory."""
    path = Path(path)
    if not path.is_dir():
        return str(path)
    try:
        return str(path / evaluation.checkpoint.relative_to(evaluation.run_dir.resolve()))
    except ValueError:  # a recorded best checkpoint outside the run directory
        return str(evaluation.checkpoint)


command = exit_on_user_error(main)
