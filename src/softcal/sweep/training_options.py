"""The sweep's training command line, checked before the first trial: the config and overrides
parse, every name in the search space is one of training's options, and the training parser
takes the ends of every range and every choice.

Parsing goes through the training command's own parser (:class:`softcal.apps.cli.SoftcalCLI`,
configs and their bases, aliases) and stops before anything is built: no data is read, no
study is touched. A problem is one line, so a bad space never reaches an existing study.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from typing import Any

from softcal.apps.cli import SoftcalCLI
from softcal.apps.train import quiet_banners
from softcal.errors import SoftcalError
from softcal.runs.run_config import check_training_config
from softcal.sweep.space import SearchSpace, arguments

#: The prefix of the training parser's one-line errors, replaced by the entry's name.
_PARSER_PREFIX = "bad config or argument: "


class _ParsedOnly(SoftcalCLI):
    """The training command line parsed and checked as training does, nothing instantiated."""

    def before_instantiate_classes(self) -> None:
        check_training_config(self.config)

    def instantiate_classes(self) -> None:
        """Nothing: no datamodule, model or Trainer."""


def training_config(train_args: Sequence[str]) -> Any:
    """The resolved training config (a jsonargparse Namespace) the arguments give."""
    quiet_banners()  # "Seed set to 0": the parser seeds as training would
    return _ParsedOnly(list(train_args)).config


def check_space(space: SearchSpace, train_args: Sequence[str]) -> Any:
    """The base training config, after checking that each of the space's parameters is an
    option of it and that each of its extreme values parses; one line naming the entry else."""
    config = training_config(train_args)
    options = set(config.keys())
    for parameter in space.parameters:
        if parameter.name not in options:
            near = difflib.get_close_matches(parameter.name, sorted(options), n=1)
            hint = f"did you mean {near[0]}? " if near else ""
            raise SoftcalError(
                f"search space {space.path}, parameter {parameter.name}: not an option of the training"
                f" command line; {hint}(python scripts/train.py --help lists them)"
            )
    for parameter in space.parameters:
        for value in parameter.extremes():
            try:
                training_config([*train_args, *arguments({parameter.name: value})])
            except SoftcalError as err:
                detail = str(err).removeprefix(_PARSER_PREFIX)
                raise SoftcalError(
                    f"search space {space.path}, parameter {parameter.name}: the training command line"
                    f" refuses the value {value!r}: {detail}"
                ) from err
    return config


def logger_save_dir(config: Any) -> str:
    """The save_dir of the config's TensorBoard logger: each trial is a run under it."""
    logger = config.get("trainer.logger")
    init = logger.get("init_args") if hasattr(logger, "get") else None
    if init is None or "save_dir" not in init:
        raise SoftcalError(
            "a sweep needs the config's TensorBoard logger (trainer.logger): each trial's run directory"
            " is one of its versions; drop --trainer.logger false or restore the logger in the config"
        )
    return str(init["save_dir"])
