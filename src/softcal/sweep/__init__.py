"""Sweeps: many training runs as one Optuna study, trading accuracy against calibration.

    space.py            the search space, read from YAML (``configs/sweeps/``)
    training_options.py the space checked against the training command line, before any trial
    objectives.py       what a trial is scored on (validation accuracy, NLL and ECE after
                        temperature scaling) and the callback that measures it
    storage.py          where the study lives: a journal file (default) or a database URL
    study.py            the study opened or continued, with the objectives it was made with
    heartbeat.py        workers' signs of life; a killed worker's trial is failed and retried
    trial.py            one trial: a normal training run with its own run directory
    report.py           the Pareto front: printed, as JSON and as a figure

``softcal.apps.sweep`` is the command line (``scripts/sweep.py``, ``softcal-sweep``).
"""
