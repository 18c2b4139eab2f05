"""The runs the README's numbers come from, as data: their names, labels and the exact
``train.py`` arguments the README prints.

This is the one list: ``scripts/benchmark.py --readme`` (:mod:`softcal_bench.readme_numbers`)
trains exactly these, and tests/test_benchmark_readme.py checks the README's tables against
them, so the README's commands and the commands measured cannot drift apart.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ReadmeRun:
    """A row of the README's tables: ``python scripts/train.py *args``, once per seed."""

    name: str  # what --only names, and the sections' key for the run
    label: str  # the README table's first column
    dataset: str  # how the conformal table's columns name it
    args: tuple[str, ...]  # train.py's arguments, exactly as the README prints them
    seeds: tuple[int | None, ...] = (None,)  # None: the config's own seed (0 in every config)

    def command(self) -> str:
        """The README's command; ``--seed_everything S`` where the run has seeds of its own."""
        seed = ["--seed_everything", "S"] if self.seeds != (None,) else []
        return shlex.join(["python", "scripts/train.py", *self.args, *seed])

    def configs(self) -> list[Path]:
        """The config files its ``-c``/``--config`` arguments name (the default config without
        any), each with its bases: what --tiny generates data for."""
        from softcal.config_files import config_chain, default_config, resolve_config

        names = [value for flag, value in zip(self.args, self.args[1:], strict=False)
                 if flag in ("-c", "--config")]  # fmt: skip
        files = [resolve_config(name) for name in names] or [default_config()]
        return [part for file in files for part in config_chain(file)]


#: The README's "Numbers" table, in its order.
README_RUNS = (
    ReadmeRun("mnist", "MNIST, default config", "MNIST", ()),
    ReadmeRun("cifar10_2_epochs", "CIFAR-10, 2 epochs", "CIFAR-10",
              ("-c", "cifar10", "--trainer.max_epochs", "2")),
    ReadmeRun("cifar10", "CIFAR-10", "CIFAR-10", ("-c", "cifar10")),
    ReadmeRun("cifar100", "CIFAR-100", "CIFAR-100", ("-c", "cifar100")),
    ReadmeRun("fashion_mnist", "Fashion-MNIST", "Fashion-MNIST", ("-c", "fashion_mnist")),
)
#: The ensemble of the calibration-under-shift table: three seeds that hold out one validation
#: split (``--data.val_split_seed 0``), so that its temperature has images none trained on. Its
#: members train with Nesterov SGD and average the mirror alone at test time, the quick overlay's
#: settings when the table was measured.
ENSEMBLE = ReadmeRun("cifar10_quick_ensemble",
                     "CIFAR-10, ensemble of 3 `cifar10_quick.yaml` SGD runs, mirror views", "CIFAR-10",
                     ("-c", "cifar10_quick", "--model.optimizer", "sgd",
                      "--model.net.init_args.translate_average", "false", "--data.val_split_seed", "0"),
                     seeds=(0, 1, 2))
RUNS = {run.name: run for run in (*README_RUNS, ENSEMBLE)}

#: The README's conformal table: its columns (run, alpha) in its order ...
CONFORMAL_COLUMNS = (("mnist", 0.01), ("fashion_mnist", 0.01), ("cifar10", 0.05), ("cifar10", 0.01))
#: ... and its rows: conformal.json's method, the README's name for it.
CONFORMAL_METHODS = {"lac": "LAC", "aps_randomized": "APS, randomised", "raps": "RAPS",
                     "classwise_lac": "class-conditional LAC", "aps": "APS, not randomised"}  # fmt: skip
#: The rows of the calibration-under-shift table (--with-shift), in its order.
SHIFT_ROWS = ("cifar10", ENSEMBLE.name, "mnist", "fashion_mnist")


def selected(only: Sequence[str], with_shift: bool) -> list[ReadmeRun]:
    """The runs to train: the README's (those ``only`` names, when given), and the ensemble
    with ``with_shift`` unless ``only`` leaves it out. Unknown names raise ValueError."""
    unknown = [name for name in only if name not in RUNS]
    if unknown:
        raise ValueError(f"--only {','.join(unknown)}: not a README run; choose from {', '.join(RUNS)}")
    if ENSEMBLE.name in only and not with_shift:
        raise ValueError(f"--only {ENSEMBLE.name}: the ensemble is measured under shift; add --with-shift")
    wanted = [RUNS[name] for name in only] if only else [*README_RUNS, *([ENSEMBLE] if with_shift else [])]
    return [run for run in RUNS.values() if run in wanted]  # the README's order, whatever --only's
