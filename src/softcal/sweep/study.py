"""The study a sweep fills: created by the first worker, continued by every later one.

A study stores the objectives it was made with (directions, and their names as a study
attribute); a worker that asks for others gets one line before it writes anything. The
sampler is Optuna's default unless ``--sampler`` names one (Optuna's default for several
objectives is NSGA-II up to Optuna 4 and multi-objective TPE from Optuna 5; the report says
which ran). Pruning needs a single objective: Optuna's ``Trial.report`` and ``should_prune``
refuse multi-objective studies, so with two objectives no trial is pruned.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from softcal.errors import SoftcalError
from softcal.sweep.objectives import OBJECTIVES, Objective
from softcal.sweep.space import SearchSpace

SAMPLERS = ("tpe", "nsga2", "random")
PRUNERS = ("median", "none")
#: Study attributes: what the study was made with (the first worker writes them).
OBJECTIVES_ATTR = "softcal:objectives"
SPACE_ATTR = "softcal:space"


@dataclass(frozen=True)
class StudyPlan:
    name: str
    objectives: tuple[Objective, ...]
    sampler: str | None = None  # None: Optuna's default
    pruner: str | None = None  # None: median with one objective, none with several


def make_sampler(name: str | None) -> Any:
    import optuna

    if name is None:
        return None
    return {"tpe": optuna.samplers.TPESampler, "nsga2": optuna.samplers.NSGAIISampler,
            "random": optuna.samplers.RandomSampler}[name]()  # fmt: skip


def make_pruner(plan: StudyPlan) -> Any:
    """Optuna's median pruner on the first objective where the study can prune (one objective);
    no pruning otherwise."""
    import optuna

    pruner = plan.pruner or ("median" if len(plan.objectives) == 1 else "none")
    if pruner == "median" and len(plan.objectives) > 1:
        raise SoftcalError(
            "--pruner median needs a single objective: Optuna cannot prune a multi-objective study"
            " (Trial.report refuses it); pass one objective (--objectives acc) or --pruner none"
        )
    # n_startup_trials: a median of fewer finished trials would prune on noise.
    if pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=5)
    return optuna.pruners.NopPruner()


def prunes(study: Any) -> bool:
    import optuna

    return not isinstance(study.pruner, optuna.pruners.NopPruner)


def open_study(storage: Any, where: str, plan: StudyPlan, space: SearchSpace) -> tuple[Any, bool]:
    """(the study, whether this call created it). An existing study must have been made with
    the same objectives; nothing is written to it before that is checked."""
    import optuna
    from optuna.exceptions import DuplicatedStudyError

    sampler, pruner = make_sampler(plan.sampler), make_pruner(plan)
    directions = [o.direction for o in plan.objectives]
    if plan.name in optuna.study.get_all_study_names(storage):
        study = optuna.load_study(study_name=plan.name, storage=storage, sampler=sampler, pruner=pruner)
        check_objectives(study, plan, where)
        return study, False
    try:
        study = optuna.create_study(storage=storage, study_name=plan.name, directions=directions,
                                    sampler=sampler, pruner=pruner)  # fmt: skip
    except DuplicatedStudyError:  # another worker created it a moment ago
        study = optuna.load_study(study_name=plan.name, storage=storage, sampler=sampler, pruner=pruner)
        check_objectives(study, plan, where)
        return study, False
    study.set_user_attr(OBJECTIVES_ATTR, [o.metric for o in plan.objectives])
    study.set_user_attr(SPACE_ATTR, space.describe())
    return study, True


def check_objectives(study: Any, plan: StudyPlan, where: str) -> None:
    """One line when ``study`` was made with other objectives than ``plan``'s. The names are
    compared when stored (a study created a moment ago by another worker may not have them
    yet); the directions always."""
    wanted = [o.metric for o in plan.objectives]
    directions = [d.name.lower() for d in study.directions]
    stored = study.user_attrs.get(OBJECTIVES_ATTR)
    if directions == [o.direction for o in plan.objectives] and stored in (None, wanted):
        return
    names = stored or ["?"] * len(directions)
    made = ", ".join(f"{n} ({d})" for n, d in zip(names, directions, strict=False))
    flag = ",".join(_objective_name(n) for n in names) if stored else None
    keep = f"pass --objectives {flag} to continue it" if flag else "continue it with its own objectives"
    raise SoftcalError(
        f"study {plan.name} in {where} was made with the objectives {made}, not {', '.join(wanted)}:"
        f" {keep}, or name a new study (--study-name); the study is left as it was"
    )


def _objective_name(metric: str) -> str:
    return next((name for name, o in OBJECTIVES.items() if o.metric == metric), metric)


def check_run_folder(storage: Any, name: str, folder: Path) -> None:
    """A study that does not exist yet must not inherit run directories: ``folder`` holding
    trials means another study of this name wrote there (its storage elsewhere, or deleted)."""
    import optuna

    if name not in optuna.study.get_all_study_names(storage) and any(folder.glob("trial_*")):
        raise SoftcalError(
            f"{folder} holds the trials of another study named {name}, which this storage does not"
            " have; continue it with its own --storage, or name a new study (--study-name)"
        )


def enqueue_baseline(study: Any, space: SearchSpace, config: Any) -> dict[str, Any] | None:
    """Queue the config's own values of the searched options as the study's first trial, so the
    report can say whether the search beat the config as given; None (and nothing queued) when
    a value lies outside the space."""
    values = {p.name: config.get(p.name) for p in space.parameters}
    if not all(p.contains(values[p.name]) for p in space.parameters):
        return None
    study.enqueue_trial(values, user_attrs={"baseline": True})
    return values


def counts(trials: Sequence[Any]) -> dict[str, int]:
    """Trials by state, lower-case (complete, pruned, fail, running, waiting)."""
    found: dict[str, int] = {}
    for trial in trials:
        state = trial.state.name.lower()
        found[state] = found.get(state, 0) + 1
    return found
