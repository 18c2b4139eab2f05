"""Sweep: an Optuna study over training runs, trading validation accuracy against calibration.

    python scripts/sweep.py --config mnist --space mnist --n-trials 30
    python scripts/sweep.py --config mnist --space mnist --n-trials 15 &    # two workers,
    python scripts/sweep.py --config mnist --space mnist --n-trials 15      # one study
    python scripts/sweep.py -c cifar10_quick --space cifar10_quick --n-trials 6 \\
        --storage /shared/sweeps/cifar10_quick.journal                      # on each machine

Takes what ``train.py`` takes (``--config``, any override) plus the sweep's own options. Each
trial is a normal run in ``<save_dir>/sweeps/<study>/trial_<n>/`` (:mod:`softcal.sweep.trial`);
the study lives in a journal file (``<save_dir>/sweeps/<study>/journal.log`` unless
``--storage`` names another file or a database URL), so the same command again, on this machine
or another, continues it. At the end the Pareto front is printed and saved as JSON and figure.
Everything about the space, the storage and the study is checked before the first trial, and
a problem is one line that leaves an existing study as it was.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from softcal.apps.arguments import AppArgumentParser
from softcal.errors import SoftcalError, exit_on_user_error

DESCRIPTION = (
    "Run an Optuna study over training runs: each trial trains --config with values from the "
    "search space, and is scored on validation accuracy and on validation NLL (or ECE) after "
    "temperature scaling. Every other option (--config, --model.lr, --trainer.max_epochs, ...) "
    "is passed to training, as python scripts/train.py takes it."
)
EPILOG = """\
training options:
  --config FILE_OR_NAME, -c   the experiment, as for train.py (default: mnist)
  --data.NAME VALUE, --model.NAME VALUE, --trainer.NAME VALUE, ...
                        any training override, applied to every trial

Several workers (on this machine or others, sharing --storage) fill one study; running the
same command again continues it. Details: docs/sweeps.md."""


def parse_args(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    """(the sweep's own options, the training arguments - everything else, in order)."""
    from softcal.sweep.objectives import DEFAULT_OBJECTIVES
    from softcal.sweep.study import PRUNERS, SAMPLERS

    parser = AppArgumentParser("sweep.py", DESCRIPTION, allow_abbrev=False)
    parser.epilog = EPILOG
    # --space and --n-trials are required (checked below: argparse would not count --n_trials)
    parser.add_option("--space", metavar="FILE_OR_NAME",
                      help="the search space (YAML; required); a packaged one by name: mnist,"
                           " cifar10_quick")
    parser.add_option("--n-trials", type=int, metavar="N",
                      help="trials this worker runs (required; 0: only print and save the Pareto front)")
    parser.add_option("--storage", metavar="FILE_OR_URL",
                      help="a journal file (shared by workers on several machines) or a database URL"
                           " (sqlite:///x.db, postgresql://...); default"
                           " <save_dir>/sweeps/<study>/journal.log")
    parser.add_option("--study-name", metavar="NAME", help="default: the space file's name (mnist)")
    parser.add_option("--objectives", default=DEFAULT_OBJECTIVES, metavar="LIST",
                      help="comma-separated, from acc (max), nll, ece (min, after temperature scaling);"
                           f" default {DEFAULT_OBJECTIVES}")
    parser.add_option("--sampler", choices=SAMPLERS, help="default: Optuna's default sampler")
    parser.add_option("--pruner", choices=PRUNERS,
                      help="default: median with one objective; none with several (Optuna cannot"
                           " prune those); a pruned trial validates every epoch")
    parser.add_option("--heartbeat", type=float, default=60.0, metavar="SECONDS",
                      help="how often a running trial shows its worker is alive (default 60)")
    parser.add_option("--grace-period", type=float, metavar="SECONDS",
                      help="silence after which a running trial counts as lost, is failed and queued"
                           " again (default: twice --heartbeat)")
    parser.add_option("--max-retry", type=int, default=3, metavar="N",
                      help="how often a lost trial is queued again (default 3)")  # fmt: skip
    args, train_args = parser.parse_known_args(argv)
    check_numbers(parser, args)
    return args, train_args


def check_numbers(parser: AppArgumentParser, args: argparse.Namespace) -> None:
    required = (("--space", args.space), ("--n-trials", args.n_trials))
    missing = [flag for flag, value in required if value is None]
    if missing:
        parser.error(f"the following arguments are required: {', '.join(missing)}")
    if args.n_trials < 0:
        parser.error(f"--n-trials must be 0 or more, not {args.n_trials}")
    if args.heartbeat <= 0:
        parser.error(f"--heartbeat must be above 0 seconds, not {args.heartbeat:g}")
    if args.grace_period is None:
        args.grace_period = 2 * args.heartbeat
    if args.grace_period <= args.heartbeat:
        parser.error(f"--grace-period ({args.grace_period:g} s) must be longer than --heartbeat"
                     f" ({args.heartbeat:g} s), or every running trial would look lost")  # fmt: skip
    if args.max_retry < 0:
        parser.error(f"--max-retry must be 0 or more, not {args.max_retry}")


def require_optuna() -> None:
    try:
        import optuna
        import optuna_integration  # noqa: F401  (the pruning callback's package)
    except ImportError as err:
        raise SoftcalError(
            f"the sweep needs optuna and optuna-integration ({err.name} is missing): pip install"
            " \"softcal[sweep]\" (in a checkout: pip install -e \".[sweep]\")"
        ) from err
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # each trial's outcome is our own line
    # Trials hand training its arguments while sys.argv holds the sweep's: intended here.
    warnings.filterwarnings("ignore", message=".*LightningCLI's args parameter is intended.*")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Open or continue the study, run this worker's trials, report the front; returns what
    pareto_front.json holds."""
    from softcal.sweep.heartbeat import fail_stale_trials
    from softcal.sweep.report import write_report
    from softcal.sweep.trial import RunStopped, run_trial

    args, train_args = parse_args(sys.argv[1:] if argv is None else argv)
    require_optuna()
    sweep = prepare(args, train_args)
    try:
        for _ in range(args.n_trials):
            for number in fail_stale_trials(sweep.study, args.grace_period, sweep.setup.retry):
                print(f"trial {number} was lost (no heartbeat for {args.grace_period:g} s): failed and"
                      " queued again")
            run_trial(sweep.study, sweep.setup, sweep.pruning)
    except RunStopped as stopped:
        print(f"stopped: the trial in progress is marked failed and queued again; run the same command"
              f" to continue study {sweep.study.study_name}", file=sys.stderr)  # fmt: skip
        raise SystemExit(stopped.code) from None
    return write_report(sweep.study, sweep.setup.objectives, sweep.storage, sweep.folder)


command = exit_on_user_error(main)


@dataclass(frozen=True)
class Sweep:
    """This worker's part of a study."""

    study: Any
    setup: Any  # softcal.sweep.trial.TrialSetup
    pruning: bool
    storage: str  # as shown (a URL's password hidden)
    folder: Path  # <save_dir>/sweeps/<study>: trials, the default journal, the report


def prepare(args: argparse.Namespace, train_args: list[str]) -> Sweep:
    """Everything checked, then the study opened: created (the config as given queued as its
    first trial) or continued. Nothing is written anywhere before the checks pass."""
    from softcal.sweep.heartbeat import retry_callback
    from softcal.sweep.objectives import parse_objectives
    from softcal.sweep.space import read_space, resolve_space
    from softcal.sweep.storage import open_storage, shown
    from softcal.sweep.study import (
        StudyPlan,
        check_run_folder,
        enqueue_baseline,
        make_pruner,
        open_study,
        prunes,
    )
    from softcal.sweep.training_options import check_space, logger_save_dir
    from softcal.sweep.trial import TrialSetup, study_dir

    space = read_space(resolve_space(args.space))
    plan = StudyPlan(args.study_name or space.path.stem, parse_objectives(args.objectives), args.sampler,
                     args.pruner)  # fmt: skip
    make_pruner(plan)  # a pruner the objectives do not allow: refused before anything opens
    config = check_space(space, train_args)
    save_dir = logger_save_dir(config)
    folder = study_dir(save_dir, plan.name)
    spec = args.storage or str(folder / "journal.log")
    storage = open_storage(spec)
    check_run_folder(storage, plan.name, folder)
    study, created = open_study(storage, shown(spec), plan, space)
    baseline = enqueue_baseline(study, space, config) if created else None
    setup = TrialSetup(tuple(train_args), space, plan.objectives, save_dir, args.heartbeat,
                       retry_callback(args.max_retry))  # fmt: skip
    print(opening_line(study, shown(spec), created, baseline is not None))
    return Sweep(study, setup, prunes(study), shown(spec), folder)


def opening_line(study: Any, storage: str, created: bool, baseline: bool) -> str:
    from softcal.sweep.study import OBJECTIVES_ATTR, counts, prunes

    trials = counts(study.get_trials(deepcopy=False))
    so_far = ", ".join(f"{n} {state}" for state, n in sorted(trials.items())) or "no trials yet"
    metrics = study.user_attrs.get(OBJECTIVES_ATTR) or ["?"] * len(study.directions)
    objectives = ", ".join(f"{m} ({d.name.lower()})" for m, d in zip(metrics, study.directions, strict=False))
    pruning = f"median pruning on {metrics[0]}" if prunes(study) else "no pruning"
    if len(metrics) > 1:
        pruning += " (Optuna prunes single-objective studies only)"
    first = "; the config as given is queued as its first trial" if baseline else ""
    return (f"study {study.study_name} in {storage}: {'created' if created else f'continued ({so_far})'};"
            f" objectives {objectives}; {type(study.sampler).__name__}, {pruning}{first}")  # fmt: skip
