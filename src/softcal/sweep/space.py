"""A search space: the training options a sweep varies, and over what, read from YAML.

    parameters:
      model.lr: {type: float, low: 0.002, high: 0.05, log: true}
      model.label_smoothing: {type: float, low: 0.0, high: 0.1}
      trainer.max_epochs: {type: int, low: 1, high: 4}
      data.init_args.batch_size: {type: categorical, choices: [128, 256, 512]}

A name is a training option as it is written on the command line (``--model.lr``; the dashes
may be left out). ``float`` and ``int`` take ``low``, ``high`` (both included), ``log``
(sample on a log scale) or ``step`` (a grid); ``categorical`` takes ``choices`` - numbers,
strings, true/false or null, as Optuna stores them: a list value is written as a string
(``"[32, 64, 128]"``), which the command line reads as a list. Each trial passes its values as
``--NAME VALUE`` after the config and the sweep's own overrides.

Every problem with the file is one line naming the entry; whether each name is an option of
the training command line is checked by :mod:`softcal.sweep.training_options`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from softcal.config_files import packaged_configs_dir
from softcal.errors import SoftcalError

KINDS = ("float", "int", "categorical")
KEYS = ("type", "low", "high", "log", "step", "choices")
#: Options the sweep sets itself (each trial's run directory, a fresh start): not searchable.
RESERVED = ("trainer.logger", "ckpt_path", "config")
#: Optuna stores categorical choices as these types only.
SCALARS = (type(None), bool, int, float, str)


@dataclass(frozen=True)
class Parameter:
    """One searched option: ``kind`` float/int with a range, or categorical with choices."""

    name: str
    kind: str
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple[Any, ...] = ()

    def suggest(self, trial: Any) -> Any:
        """This parameter's value for an Optuna trial (the trial's own when it was enqueued)."""
        if self.kind == "float":
            return trial.suggest_float(self.name, self.low, self.high, log=self.log, step=self.step)
        if self.kind == "int":
            return trial.suggest_int(self.name, self.low, self.high, log=self.log, step=self.step or 1)
        return trial.suggest_categorical(self.name, list(self.choices))

    def extremes(self) -> list[Any]:
        """The values worth showing the training command line before a sweep starts: both
        ends of a range, every choice."""
        return list(self.choices) if self.kind == "categorical" else [self.low, self.high]

    def contains(self, value: Any) -> bool:
        """Whether ``value`` (e.g. the config's own) is one this parameter can take."""
        if self.kind == "categorical":
            return any(value == choice and type(value) is type(choice) for choice in self.choices)
        numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
        return numeric and self.low <= value <= self.high and (self.kind == "float" or value == int(value))


@dataclass(frozen=True)
class SearchSpace:
    path: Path
    parameters: tuple[Parameter, ...] = field(default_factory=tuple)

    def suggest(self, trial: Any) -> dict[str, Any]:
        return {p.name: p.suggest(trial) for p in self.parameters}

    def describe(self) -> dict[str, dict[str, Any]]:
        """The space as its YAML file states it (stored with the study and in the report)."""
        described = {}
        for p in self.parameters:
            entry: dict[str, Any] = {"type": p.kind}
            if p.kind == "categorical":
                entry["choices"] = list(p.choices)
            else:
                entry.update(low=p.low, high=p.high, log=p.log)
                if p.step is not None:
                    entry["step"] = p.step
            described[p.name] = entry
        return described


def command_line_value(value: Any) -> str:
    """A value as the training command line reads it: strings as they are, others as JSON
    (``true``, ``null``, ``0.001``), which jsonargparse parses back to the same value."""
    return value if isinstance(value, str) else json.dumps(value)


def arguments(values: dict[str, Any]) -> list[str]:
    """``--NAME VALUE`` for each value, in the space's order."""
    return [arg for name, value in values.items() for arg in (f"--{name}", command_line_value(value))]


def packaged_spaces_dir() -> Path:
    return packaged_configs_dir() / "sweeps"


def resolve_space(name_or_path: str) -> Path:
    """The space file ``--space`` names: an existing file as given, else a packaged space by
    name (``mnist``, ``mnist.yaml`` or ``configs/sweeps/mnist.yaml``, from any directory)."""
    given = Path(name_or_path).expanduser()
    if given.is_file():
        return given
    if given.parent in (Path(), Path("configs/sweeps"), Path("sweeps")):
        for name in (given.name, f"{given.name}.yaml"):
            if (packaged := packaged_spaces_dir() / name).is_file():
                return packaged
    names = ", ".join(sorted(p.name for p in packaged_spaces_dir().glob("*.yaml")))
    raise SoftcalError(
        f"search space {name_or_path} not found: no such file here, and the packaged spaces are"
        f" {names} (in {packaged_spaces_dir()})"
    )


def read_space(path: Path) -> SearchSpace:
    """The space in ``path``; one line naming the entry for anything wrong with it."""
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        detail = " ".join(str(err).split())[:200]
        raise SoftcalError(f"search space {path} cannot be read as YAML ({detail}); correct it") from err
    entries = loaded.get("parameters") if isinstance(loaded, dict) else None
    if not isinstance(entries, dict) or not entries:
        raise SoftcalError(
            f"search space {path} has no 'parameters:' mapping of options to ranges; see"
            " configs/sweeps/mnist.yaml for the format"
        )
    parameters: dict[str, Parameter] = {}
    for raw_name, entry in entries.items():
        name = str(raw_name).removeprefix("--")
        where = f"search space {path}, parameter {name}"
        if name in parameters:
            raise SoftcalError(f"{where}: given twice (as --{name} and {name}); keep one")
        if any(name == r or name.startswith(r + ".") for r in RESERVED):
            raise SoftcalError(f"{where}: set by the sweep itself (each trial's own run); it cannot be"
                               " searched")
        parameters[name] = parse_parameter(name, entry, where)
    return SearchSpace(path, tuple(parameters.values()))


def parse_parameter(name: str, entry: Any, where: str) -> Parameter:
    """One entry of ``parameters:``, checked."""
    if not isinstance(entry, dict):
        raise SoftcalError(
            f"{where}: expected a mapping such as {{type: float, low: 0.001, high: 0.1, log: true}},"
            f" got {json.dumps(entry, default=str)}"
        )
    unknown = [key for key in entry if key not in KEYS]
    if unknown:
        raise SoftcalError(f"{where}: unknown key {unknown[0]!r} (the keys are {', '.join(KEYS)})")
    kind = entry.get("type")
    if kind not in KINDS:
        raise SoftcalError(f"{where}: type must be float, int or categorical, not {json.dumps(kind)}")
    if kind == "categorical":
        return Parameter(name, kind, choices=_choices(entry, where))
    low, high, log, step = (entry.get(key) for key in ("low", "high", "log", "step"))
    _check_range(kind, low, high, where)
    if not isinstance(log, (bool, type(None))):
        raise SoftcalError(f"{where}: log must be true or false, not {json.dumps(log)}")
    if step is not None:
        if not _number(step, kind) or step <= 0:
            raise SoftcalError(f"{where}: step must be a positive {kind}, not {json.dumps(step)}")
        if log:
            raise SoftcalError(f"{where}: step and log cannot be combined; drop one (a grid or a log scale)")
    if log and low <= 0:
        raise SoftcalError(f"{where}: a log scale needs low above 0, not {low}")
    return Parameter(name, kind, low=low, high=high, log=bool(log), step=step)


def _number(value: Any, kind: str) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return False
    return isinstance(value, int) if kind == "int" else True


def _check_range(kind: str, low: Any, high: Any, where: str) -> None:
    if low is None or high is None:
        raise SoftcalError(f"{where}: a {kind} parameter needs both low and high")
    if not (_number(low, kind) and _number(high, kind)):
        shown = "whole numbers" if kind == "int" else "numbers"
        raise SoftcalError(f"{where}: low and high must be {shown}, not {json.dumps(low)} and"
                           f" {json.dumps(high)}")
    if low > high:
        raise SoftcalError(f"{where}: low {low} is above high {high}; swap them")


def _choices(entry: dict[str, Any], where: str) -> tuple[Any, ...]:
    choices = entry.get("choices")
    extra = [key for key in ("low", "high", "log", "step") if key in entry]
    if extra:
        raise SoftcalError(f"{where}: a categorical parameter takes choices, not {extra[0]}")
    if not isinstance(choices, list) or not choices:
        raise SoftcalError(f"{where}: a categorical parameter needs a non-empty list of choices")
    for choice in choices:
        if not isinstance(choice, SCALARS):
            raise SoftcalError(
                f"{where}: choice {json.dumps(choice, default=str)} is not a number, string, true/false"
                f" or null; write it as a string, '{json.dumps(choice, default=str)}', which the"
                " command line reads back"
            )
    return tuple(choices)
