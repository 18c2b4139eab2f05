"""Evaluate saved checkpoints: the test (or validation) metrics, raw and calibrated, and analyses.

Each checkpoint is reopened once (:class:`softcal.evaluation.context.EvaluationContext`: the
run's ``config.yaml`` plus the checkpoint) and tested through Lightning with the run's Trainer
settings, so the numbers reproduce what training printed. Then every analysis listed in
:data:`softcal.evaluation.analyses.ANALYSES` runs on it - metrics.json and figures, selective
prediction, ``--calibrators``, ``--ood`` - each asking the context for the logits it needs, so
each split goes through the net once. Values can be overridden like in training
(``--data.root DIR``, ``--trainer.accelerator cpu``); a checkpoint whose classes or image shape
do not fit the data is refused before any weights are loaded.

    python scripts/evaluate.py runs/mnist/version_0              # its best checkpoint
    python scripts/evaluate.py runs/mnist/version_0 --split val  # keys val/*, val_calibrated/*
    python scripts/evaluate.py runs/mnist/version_*              # one comparison table
    python scripts/evaluate.py runs/cifar10/version_{0,1,2} --ensemble  # + their deep ensemble

With ``--ensemble`` the runs are also averaged into one model
(:class:`softcal.evaluation.ensemble.EnsembleContext`), which goes through every analysis like
a checkpoint, after its members; its files go to ``--out/ensemble`` or
``<first run>/eval_ensemble``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from softcal.apps.arguments import AppArgumentParser
from softcal.errors import exit_on_user_error
from softcal.evaluation import analyses
from softcal.evaluation.context import EvaluationContext
from softcal.evaluation.ensemble import OOD_NOTE, EnsembleContext, check_member_count, ensemble_result
from softcal.evaluation.report import comparison_table, comparison_title, results_table
from softcal.evaluation.results import Evaluation
from softcal.runs.load import RUN_HELP


def evaluate(contexts: Sequence[EvaluationContext], args: argparse.Namespace,
             ensemble: EnsembleContext | None = None) -> list[Evaluation]:  # fmt: skip
    """Every checkpoint's test pass first - and the ensemble's, from its members' passes (one
    that fails stops evaluate before any file is written) - then its analyses, each writing
    into the checkpoint's output folder; the ensemble's evaluation comes last."""
    from lightning.pytorch.utilities.exceptions import MisconfigurationException

    from softcal.apps.cli import trainer_settings_error

    try:
        evaluations = [ctx.evaluation() for ctx in contexts]
        out_dirs = _out_dirs(evaluations, args.out)
        if ensemble is not None:
            contexts = [*contexts, ensemble]
            evaluations.append(ensemble.evaluation())
            out_dirs.append(_ensemble_dir(evaluations[0], args.out))
        for ctx, evaluation, out_dir in zip(contexts, evaluations, out_dirs, strict=True):
            evaluation.out_dir = out_dir
            described = [ensemble_result(ctx, out_dir)] if isinstance(ctx, EnsembleContext) else []
            evaluation.analyses = described + analyses.run_analyses(ctx, out_dir, args)
            evaluation.files = [path for result in evaluation.analyses for path in result.files]
    except MisconfigurationException as err:  # the run's Trainer settings, refused here
        raise trainer_settings_error(err) from err
    return evaluations


def _ensemble_dir(first: Evaluation, out: Path | None) -> Path:
    """``--out/ensemble``, else ``eval_ensemble`` (``eval_val_ensemble``) in the first member's run."""
    if out is not None:
        return out / "ensemble"
    return first.run_dir / ("eval_ensemble" if first.split == "test" else "eval_val_ensemble")


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
    parser = AppArgumentParser(
        "evaluate.py",
        "Test checkpoints with the config their run saved; print accuracy and calibration (raw"
        " and calibrated as the run stored); write metrics.json and figures, and whatever the"
        " analyses below are asked for.",
    )
    parser.add_argument("paths", nargs="*", metavar="RUN_DIR_OR_CKPT",
                        help=f"{RUN_HELP}; several give one comparison table")
    parser.add_argument("--ckpt", action="append", default=[], metavar="RUN_DIR_OR_CKPT",
                        help="the same, named as predict and export name it (repeatable)")
    parser.add_argument("--split", choices=("test", "val"), default="test",
                        help="the official test set (default) or the run's validation split")
    parser.add_argument("--out", type=Path, default=None,
                        help="output folder (default: <run_dir>/eval)")  # fmt: skip
    parser.add_argument("--ensemble", action="store_true",
                        help="also evaluate the runs' deep ensemble (their mean probability) as one"
                        " model through every analysis; files in --out/ensemble or"
                        " <first run>/eval_ensemble")  # fmt: skip
    analyses.add_arguments(parser)  # each analysis's own options
    args, overrides = parser.parse_with_overrides(argv)
    args.paths = [*args.paths, *args.ckpt]
    if not args.paths:
        parser.error("no run given; name one or more runs: evaluate.py RUN_DIR_OR_CKPT ...")
    if args.ensemble:
        check_member_count(len(args.paths))
    analyses.check_arguments(args)  # before any checkpoint is loaded
    return args, overrides


def main(argv: Sequence[str] | None = None) -> list[Evaluation]:
    args, overrides = parse_args(sys.argv[1:] if argv is None else argv)
    contexts = [EvaluationContext.open(path, args.split, overrides) for path in args.paths]
    ensemble = EnsembleContext(contexts) if args.ensemble else None  # refused now if they differ
    evaluations = evaluate(contexts, args, ensemble)
    labels = [_label(path, e) for path, e in zip(args.paths, evaluations[: len(contexts)], strict=True)]
    if ensemble is not None:
        labels.append(f"ensemble of {len(contexts)} (mean probability)")
    if len(evaluations) == 1:
        print(results_table(evaluations[0]))
    else:
        print(f"{comparison_title(evaluations)}\n")
        print(comparison_table(evaluations, labels))
    for result in (result for e in evaluations for result in e.analyses if result.table):
        print(f"\n{result.table}")  # calibrator comparison, OOD detection, shift
    notes = [] if ensemble is None else [*ensemble.notes, *([OOD_NOTE] if args.ood_specs else [])]
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    for e in evaluations:
        if e.calibration_method is None and not (ensemble is not None and e is evaluations[-1]):
            print(f"note: {e.checkpoint.name} has no fitted temperature (trained with --calibrate"
                  " false?): the calibrated metrics are the raw ones (T = 1)", file=sys.stderr)  # fmt: skip
        assert e.out_dir is not None
        whose = f" (the ensemble of {len(contexts)})" if ensemble is not None and e is evaluations[-1] else ""
        print(f"wrote {', '.join(str(f.relative_to(e.out_dir)) for f in e.files)} to {e.out_dir}{whose}")
    return evaluations


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
