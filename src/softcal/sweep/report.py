"""The Pareto front of a study: printed, saved as JSON and as a figure, in the study's folder.

``pareto_front.json`` holds the study (name, storage, sampler, objectives, trials by state),
the trials on the front (number, objectives, parameters, run directory), the config as given
(the study's first trial, when its values lie in the space) and the trials that beat it on
every objective. ``pareto_front.png`` is Optuna's matplotlib plot of every complete trial
(``optuna.visualization.matplotlib.plot_pareto_front``), the front highlighted and the config
as given marked. Only the validation objectives appear: the test split does not choose.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from softcal.atomic_files import atomic_write_bytes, atomic_write_json
from softcal.sweep.objectives import Objective, describe
from softcal.sweep.study import counts

JSON_NAME, FIGURE_NAME = "pareto_front.json", "pareto_front.png"


def complete_trials(study: Any) -> list[Any]:
    from optuna.trial import TrialState

    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))


def dominates(a: Sequence[float], b: Sequence[float], objectives: Sequence[Objective]) -> bool:
    """Whether values ``a`` are at least as good as ``b`` on every objective and better on one."""
    signs = [1.0 if o.direction == "maximize" else -1.0 for o in objectives]
    no_worse = all(s * x >= s * y for s, x, y in zip(signs, a, b, strict=True))
    return no_worse and any(s * x > s * y for s, x, y in zip(signs, a, b, strict=True))


def trial_entry(trial: Any, objectives: Sequence[Objective]) -> dict[str, Any]:
    return {
        "number": trial.number,
        "values": {o.metric: v for o, v in zip(objectives, trial.values, strict=True)},
        "params": dict(trial.params),
        "run_dir": trial.user_attrs.get("run_dir"),
        "baseline": bool(trial.user_attrs.get("baseline")),
        "retried_from": trial.system_attrs.get("failed_trial"),
    }


def front_report(study: Any, objectives: Sequence[Objective], storage: str) -> dict[str, Any]:
    """What ``pareto_front.json`` holds."""
    complete = complete_trials(study)
    front = sorted(study.best_trials, key=lambda t: t.number) if complete else []
    baseline = next((t for t in complete if t.user_attrs.get("baseline")), None)
    beat = [t.number for t in complete
            if baseline is not None and dominates(t.values, baseline.values, objectives)]  # fmt: skip
    return {
        "study": study.study_name,
        "storage": storage,
        "sampler": type(study.sampler).__name__,
        "pruner": type(study.pruner).__name__,
        "objectives": describe(objectives),
        "trials": counts(study.get_trials(deepcopy=False)),
        "pareto_front": [trial_entry(t, objectives) for t in front],
        "baseline": trial_entry(baseline, objectives) if baseline is not None else None,
        "beat_baseline": beat,
    }


def format_front(report: dict[str, Any]) -> str:
    """The front as a table, with what the study holds and who beat the config as given."""
    metrics = [o["metric"] for o in report["objectives"]]
    front = report["pareto_front"]
    params = sorted({name for entry in front for name in entry["params"]})
    states = ", ".join(f"{n} {state}" for state, n in sorted(report["trials"].items()))
    lines = [f"Pareto front of study {report['study']} ({states or 'no trials'}): {len(front)} trial(s)"]
    if not front:
        return lines[0]
    header = ["trial", *metrics, *params, "run directory"]
    rows = [[f"{e['number']}{'*' if e['baseline'] else ''}", *(f"{e['values'][m]:.4f}" for m in metrics),
             *(_shown(e["params"].get(p)) for p in params), str(e["run_dir"])] for e in front]  # fmt: skip
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows, strict=True)]
    for row in [header, *rows]:
        cells = (str(cell).ljust(width) for cell, width in zip(row, widths, strict=True))
        lines.append("  ".join(cells).rstrip())
    baseline = report["baseline"]
    if baseline is not None:
        beat = ", ".join(map(str, report["beat_baseline"])) or "none"
        lines.append(f"the config as given is trial {baseline['number']} (* when on the front); trials that"
                     f" beat it on every objective: {beat}")  # fmt: skip
    return "\n".join(lines)


def _shown(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def write_report(study: Any, objectives: Sequence[Objective], storage: str, folder: Path) -> dict[str, Any]:
    """Print the front, write its JSON and (two or three objectives) its figure; the report."""
    report = front_report(study, objectives, storage)
    print("\n" + format_front(report))
    written = [atomic_write_json(folder / JSON_NAME, report)]
    if 2 <= len(objectives) <= 3 and report["pareto_front"]:
        written.append(atomic_write_bytes(folder / FIGURE_NAME, pareto_figure(study, objectives, report)))
    print("written: " + ", ".join(str(path) for path in written))
    return report


def pareto_figure(study: Any, objectives: Sequence[Objective], report: dict[str, Any]) -> bytes:
    """Optuna's Pareto-front plot as PNG bytes, the config as given marked when in 2-D."""
    import matplotlib.pyplot as plt
    from optuna.visualization.matplotlib import plot_pareto_front

    with warnings.catch_warnings():  # Optuna marks its matplotlib plots experimental
        warnings.simplefilter("ignore")
        axes = plot_pareto_front(study, target_names=[o.label for o in objectives])
    baseline = report["baseline"]
    if baseline is not None and len(objectives) == 2:
        x, y = (baseline["values"][o.metric] for o in objectives)
        axes.scatter([x], [y], marker="*", s=320, facecolors="none", edgecolors="black", linewidths=1.2,
                     zorder=5, label="config as given")  # hollow: the trial's own dot shows through
        axes.legend(loc="best")
    axes.set_title(f"study {study.study_name}: {len(complete_trials(study))} complete trials")
    figure = axes.get_figure()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    plt.close(figure)
    return buffer.getvalue()
