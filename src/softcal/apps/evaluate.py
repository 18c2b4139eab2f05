"""Evaluate saved checkpoints: the test (or validation) metrics, raw and temperature-scaled.

Each checkpoint is rebuilt from the ``config.yaml`` its run saved, through the same
:class:`~softcal.apps.cli.SoftcalCLI` that trained it, and tested with the same Trainer settings:
the numbers reproduce what training printed. Values can be overridden like in training
(``--data.root DIR``, ``--trainer.accelerator cpu``); a checkpoint whose classes or image shape
do not fit the data is refused before any weights are loaded.

    python scripts/evaluate.py runs/mnist/version_0              # its best checkpoint
    python scripts/evaluate.py runs/mnist/version_0 --split val
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

from softcal.runs.files import (
    atomic_write_json,
    check_checkpoint_fits,
    load_weights,
    open_run_checkpoint,
)

if TYPE_CHECKING:
    from lightning.pytorch import Callback

    from softcal.apps.cli import SoftcalCLI

# Lightning is imported inside the functions that need it: a wrong path or a broken checkpoint
# is reported in a second or two, without waiting for Lightning to load.

#: Options handed to the training CLI unchanged (everything the config holds).
PASSTHROUGH = ("--data", "--model", "--trainer", "--seed_everything")

#: Columns of the comparison table: (metric key, header).
COLUMNS = (
    ("test/acc", "acc"),
    ("test/ece", "ece"),
    ("test/mce", "mce"),
    ("test/adaptive_ece", "adaptive_ece"),
    ("test/brier", "brier"),
    ("test/nll", "nll"),
    ("test_calibrated/ece", "cal. ece"),
)


@dataclass
class Evaluation:
    """What one checkpoint scored, and where its files went."""

    checkpoint: Path
    run_dir: Path
    split: str
    dataset: str
    temperature: float | None  # None: the checkpoint carries no fitted temperature (T = 1)
    metrics: dict[str, float]
    class_names: list[str] = field(default_factory=list)
    out_dir: Path | None = None
    files: list[Path] = field(default_factory=list)


def figure_state_capture() -> Callback:
    """A callback that copies the module's reliability-bin sums and confusion matrix at the
    end of testing, into its ``state`` dict.

    Lightning calls callbacks' ``on_test_epoch_end`` before the module's, which draws these
    for TensorBoard and then resets them; the copy is what the PNG files are drawn from.
    """
    from lightning.pytorch import Callback, LightningModule, Trainer

    class FigureStateCapture(Callback):
        def __init__(self) -> None:
            self.state: dict[str, dict[str, Any]] = {}

        def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
            for stage in ("test", "test_calibrated"):
                figure_state = pl_module.figure_state[stage]
                bins = figure_state["bins"].compute()
                self.state[stage] = {
                    "bins": {name: value.detach().cpu().clone() for name, value in bins.items()},
                    "confusion": figure_state["confusion"].compute().detach().cpu().clone(),
                }

    return FigureStateCapture()


def split_passthrough(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """Separate ``--data.* / --model.* / --trainer.*`` overrides (with their values) from the
    script's own arguments; argparse alone would take an override's value for a path."""
    own: list[str] = []
    overrides: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        name = arg.split("=", 1)[0]
        if any(name == p or name.startswith(p + ".") for p in PASSTHROUGH):
            overrides.append(arg)
            if "=" not in arg and i + 1 < len(argv):
                overrides.append(argv[i + 1])
                i += 1
        else:
            own.append(arg)
        i += 1
    return own, overrides


def build_cli(config: Path, overrides: Sequence[str]) -> SoftcalCLI:
    """Model, datamodule and Trainer exactly as the run's config made them, plus overrides.

    No logger (evaluation must not create a TensorBoard run), no resume path, and no saved
    config; the progress bar and model summary are off unless an override turns them on.
    """
    from softcal.apps.cli import SoftcalCLI

    quiet_lightning()  # after the import: importing Lightning sets its loggers to INFO
    args = [
        "--config", str(config),
        "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false",
        *overrides,
        "--trainer.logger", "false",
        "--ckpt_path", "null",
    ]  # fmt: skip
    with warnings.catch_warnings():
        # LightningCLI warns when args= and sys.argv both exist; here argv is this script's own.
        warnings.filterwarnings("ignore", message=".*LightningCLI's args parameter.*")
        return SoftcalCLI(args=args, save_config_callback=None)



def evaluate_checkpoint(
    path: str | Path, split: str = "test", overrides: Sequence[str] = ()
) -> tuple[Evaluation, dict[str, dict[str, Any]]]:
    """Test one checkpoint (or a run directory's best); returns the scores and figure state."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    checkpoint, ckpt, hparams, run_dir = open_run_checkpoint(path)
    cli = build_cli(run_dir / "config.yaml", overrides)
    model, datamodule, trainer = cli.model, cli.datamodule, cli.trainer
    check_checkpoint_fits(checkpoint, hparams, datamodule)
    load_weights(model, ckpt["state_dict"], checkpoint)
    if split == "val":
        # The validation split is carved from the training set with the run's seed; testing
        # on it goes through the same metrics as the test split.
        datamodule.setup("fit")
        datamodule.splits["test"] = datamodule.splits["val"]
    # Nothing is trained, so nothing is checkpointed; drop the callback the CLI adds.
    trainer.callbacks = [c for c in trainer.callbacks if not isinstance(c, ModelCheckpoint)]
    capture = figure_state_capture()
    trainer.callbacks.append(capture)
    with warnings.catch_warnings():
        # A deprecation inside Lightning itself, nothing a user can act on.
        warnings.filterwarnings("ignore", message=".*isinstance.treespec, LeafSpec.*")
        metrics = trainer.test(model, datamodule=datamodule, verbose=False)[0]
    temperature = float(model.temperature)
    evaluation = Evaluation(
        checkpoint=checkpoint.resolve(),
        run_dir=run_dir,
        split=split,
        dataset=datamodule.name,
        temperature=None if temperature == 1.0 else temperature,
        metrics={k: float(v) for k, v in sorted(metrics.items())},
        class_names=[str(n) for n in hparams.get("class_names") or []],
    )
    return evaluation, capture.state


def write_outputs(
    evaluation: Evaluation, state: dict[str, dict[str, Any]], out_dir: Path,
    overrides: Sequence[str] = (),
) -> list[Path]:  # fmt: skip
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
            # Summed over processes: equals the split's size exactly once every sample was
            # seen once (none dropped, none duplicated by a distributed sampler).
            "num_samples": int(state["test"]["bins"]["count"].sum()),
            "metrics": evaluation.metrics,
        })
    ]  # fmt: skip
    t = evaluation.temperature
    for stage, suffix, label in (
        ("test", "", "T = 1"),
        ("test_calibrated", "_calibrated", f"T = {t:.3f}" if t is not None else "T = 1"),
    ):
        title = f"{name}\n{where}, {label}"  # two lines: the figure is narrow
        fig = figures.reliability_diagram(**state[stage]["bins"], title=title)
        files.append(figures.save_png(fig, out_dir / f"reliability_diagram{suffix}.png"))
    # Dividing by T > 0 never changes the predicted class: one confusion matrix serves both.
    title = f"Confusion matrix, {where}, {name}"
    fig = figures.confusion_matrix_figure(state["test"]["confusion"], evaluation.class_names, title)
    files.append(figures.save_png(fig, out_dir / "confusion_matrix.png"))
    return files


def comparison_table(evaluations: Sequence[Evaluation], labels: Sequence[str]) -> str:
    """One row per checkpoint; percentages for accuracy and calibration errors."""
    width = max(len("checkpoint"), *(len(label) for label in labels))
    head = f"{'checkpoint':<{width}}" + "".join(f"{h:>14}" for _, h in COLUMNS)
    lines = [head, "-" * len(head)]
    for evaluation, label in zip(evaluations, labels, strict=True):
        cells = []
        for key, _ in COLUMNS:
            value = evaluation.metrics.get(key, math.nan)
            percent = key.split("/")[1] in ("acc", "ece", "mce", "adaptive_ece")
            cells.append(f"{100 * value:>13.2f}%" if percent else f"{value:>14.4f}")
        lines.append(f"{label:<{width}}" + "".join(cells))
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
    own, overrides = split_passthrough(argv)
    parser = argparse.ArgumentParser(
        prog="evaluate.py",
        description="Test checkpoints with the config their run saved; print accuracy and"
        " calibration (raw and temperature-scaled); write metrics.json and figures. Options"
        " --data.*, --model.*, --trainer.* override the saved config.",
    )
    parser.add_argument("paths", nargs="+", metavar="RUN_DIR_OR_CKPT",
                        help="a run directory (its best checkpoint) or a .ckpt file inside one")
    parser.add_argument("--split", choices=("test", "val"), default="test",
                        help="the official test set (default) or the run's validation split")
    parser.add_argument("--out", type=Path, default=None,
                        help="output folder (default: <run_dir>/eval)")  # fmt: skip
    return parser.parse_args(own), overrides


def quiet_lightning() -> None:
    """Lightning's info lines (GPU available, seed set, tips) are noise in a report."""
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)


def main(argv: Sequence[str] | None = None) -> list[Evaluation]:
    args, overrides = parse_args(sys.argv[1:] if argv is None else argv)
    evaluations: list[Evaluation] = []
    states = []
    for path in args.paths:
        evaluation, state = evaluate_checkpoint(path, args.split, overrides)
        evaluations.append(evaluation)
        states.append(state)
    out_dirs = _out_dirs(evaluations, args.out)
    for evaluation, state, out_dir in zip(evaluations, states, out_dirs, strict=True):
        evaluation.out_dir = out_dir
        evaluation.files = write_outputs(evaluation, state, out_dir, overrides)
    if len(evaluations) == 1:
        from softcal.apps.cli import format_results  # loaded by now: evaluating needed the CLI

        e = evaluations[0]
        title = f"{e.dataset} {e.split} split, checkpoint {e.checkpoint}"
        print(format_results(e.metrics, e.temperature, title))
    else:
        labels = [_label(path, e) for path, e in zip(args.paths, evaluations, strict=True)]
        print(f"{evaluations[0].dataset} {args.split} split\n")
        print(comparison_table(evaluations, labels))
    for e in evaluations:
        if e.temperature is None:
            print(f"note: {e.checkpoint.name} has no fitted temperature (T = 1): calibrated ="
                  " raw. The run's best checkpoint carries it.", file=sys.stderr)  # fmt: skip
        print(f"wrote {', '.join(f.name for f in e.files)} to {e.out_dir}")
    return evaluations


def _label(path: str | Path, evaluation: Evaluation) -> str:
    """The argument as typed, plus the checkpoint's name when a run directory was given."""
    path = Path(path)
    return str(path / evaluation.checkpoint.name) if path.is_dir() else str(path)
