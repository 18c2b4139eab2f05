"""One trial: a normal softcal training run (``softcal.apps.train.main``, the command line and
Trainer that ``train.py`` uses) with the trial's values as overrides, in a run directory of
its own, ``<save_dir>/sweeps/<study>/trial_<number>/``: config.yaml, checkpoints,
results.json, TensorBoard events and HPARAMS row, as any run, plus ``trial.json`` (the
trial's number, values, objectives and state). Everything that works on a run works on it.

Ask and tell, rather than ``study.optimize``, so every outcome is one line of ours:

    complete   the objectives of the tested checkpoint's validation
    pruned     Optuna's median pruner stopped it (one objective only), via optuna-integration's
               ``PyTorchLightningPruningCallback``; the run directory has no results.json
    failed     the training loss became NaN, or an objective is not finite: the sweep goes on
    stopped    Ctrl-C or SIGTERM: failed and queued again (the next worker runs it), exit 130/143
    error      any other error fails the trial and ends the worker with its one line
"""

from __future__ import annotations

import math
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from softcal.apps.train import main as train
from softcal.atomic_files import atomic_write_json
from softcal.errors import NonFiniteLossError
from softcal.sweep.heartbeat import Heartbeat
from softcal.sweep.objectives import Objective, ValidationObjectives
from softcal.sweep.space import SearchSpace, arguments


@dataclass(frozen=True)
class TrialSetup:
    """What every trial of one worker shares."""

    train_args: tuple[str, ...]  # --config ... and the training overrides, as given
    space: SearchSpace
    objectives: tuple[Objective, ...]
    save_dir: str  # the config's logger save_dir: trials go to <save_dir>/sweeps/<study>/
    heartbeat: float  # seconds between a running trial's signs of life
    retry: Any  # Optuna's retry callback, for a trial stopped by a signal


class RunStopped(Exception):
    """Training ended by Ctrl-C (130) or SIGTERM (143): the worker exits with the code."""

    def __init__(self, code: int) -> None:
        super().__init__(f"stopped with exit code {code}")
        self.code = code


def study_dir(save_dir: str, study_name: str) -> Path:
    return Path(save_dir) / "sweeps" / study_name


def run_dir_name(number: int) -> str:
    return f"trial_{number:04d}"


def training_arguments(setup: TrialSetup, study_name: str, number: int, values: dict[str, Any],
                       pruning: bool = False) -> list[str]:  # fmt: skip
    """The training command line of one trial: the sweep's, the trial's values, its run directory.
    A pruned sweep validates every epoch: the pruner judges a trial by its validations, and a
    config that validates only its final weights (``validate_every_epoch: false``) gives it one."""
    return [
        *setup.train_args, *arguments(values),
        "--trainer.logger.init_args.save_dir", setup.save_dir,
        "--trainer.logger.init_args.name", f"sweeps/{study_name}",
        "--trainer.logger.init_args.version", run_dir_name(number),
        *(["--validate_every_epoch", "true"] if pruning else []),
    ]  # fmt: skip


def run_trial(study: Any, setup: TrialSetup, pruning: bool) -> Any:
    """Ask the study for a trial, train it, tell the study how it went; the finished trial."""
    import optuna
    from optuna.trial import TrialState

    trial = study.ask()
    run_dir = study_dir(setup.save_dir, study.study_name) / run_dir_name(trial.number)
    trial.set_user_attr("run_dir", str(run_dir))
    trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
    values = setup.space.suggest(trial)
    record = {"study": study.study_name, "trial": trial.number, "params": values,
              "retried_from": retried_from(study, trial.number)}  # fmt: skip
    try:
        with Heartbeat(trial, setup.heartbeat):
            scores = train_trial(trial, setup, values, pruning)
    except optuna.TrialPruned as pruned:
        atomic_write_json(run_dir / "trial.json", {**record, "state": "pruned"})
        print(f"trial {trial.number} pruned: {pruned} ({run_dir})")
        return study.tell(trial, state=TrialState.PRUNED)
    except NonFiniteLossError as err:
        return _failed(study, trial, run_dir, record, str(err))
    except BaseException as err:
        frozen = study.tell(trial, state=TrialState.FAIL)
        if isinstance(err, (RunStopped, KeyboardInterrupt)):
            setup.retry(study, frozen)  # another worker, or the next call, runs it again
        raise
    if not all(math.isfinite(v) for v in scores.values()):
        return _failed(study, trial, run_dir, record, f"an objective is not finite ({scores})")
    atomic_write_json(run_dir / "trial.json", {**record, "state": "complete", "objectives": scores})
    shown = ", ".join(f"{metric} {value:.4f}" for metric, value in scores.items())
    print(f"trial {trial.number} complete: {shown} ({run_dir})")
    return study.tell(trial, [scores[o.metric] for o in setup.objectives])


def train_trial(trial: Any, setup: TrialSetup, values: dict[str, Any], pruning: bool) -> dict[str, float]:
    """Train the trial's run; its objectives at the tested checkpoint."""
    measured = ValidationObjectives(setup.objectives)
    callbacks: list[Any] = [measured]
    if pruning:
        from optuna_integration import PyTorchLightningPruningCallback

        callbacks.append(PyTorchLightningPruningCallback(trial, monitor=setup.objectives[0].metric))
    argv = training_arguments(setup, trial.study.study_name, trial.number, values, pruning)
    try:
        results = train(argv, callbacks=callbacks)
    except SystemExit as stop:  # train's Ctrl-C (130) and SIGTERM (143) exits
        raise RunStopped(int(stop.code or 1)) from None
    return measured.values_for(results["checkpoint"])


def _failed(study: Any, trial: Any, run_dir: Path, record: dict[str, Any], reason: str) -> Any:
    from optuna.trial import TrialState

    trial.set_user_attr("failure", reason)
    atomic_write_json(run_dir / "trial.json", {**record, "state": "failed", "failure": reason})
    print(f"trial {trial.number} failed: {reason}; the sweep goes on ({run_dir})")
    return study.tell(trial, state=TrialState.FAIL)


def retried_from(study: Any, number: int) -> int | None:
    """The number of the trial that ``number`` runs again (Optuna's retry callback records it
    as the system attribute ``failed_trial``), or None."""
    trial = next((t for t in study.get_trials(deepcopy=False) if t.number == number), None)
    return trial.system_attrs.get("failed_trial") if trial is not None else None
