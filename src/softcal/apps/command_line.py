"""The training command line as typed, rewritten into what LightningCLI is to parse.

LightningCLI reads ``sys.argv`` itself, so whatever softcal accepts beyond its parser is
rewritten before it does:

* ``--config X`` / ``-c X`` (also ``--config=X``, ``-c=X``, ``-cX``): X resolved to a file (a
  path, or a packaged config's name such as ``cifar10``), preceded by the bases it names
  (``# base: cifar10.yaml``: ``--config cifar100`` means ``--config cifar10.yaml --config
  cifar100.yaml``); with no config at all, the default one (``configs/mnist.yaml``);
* the options the callbacks' config groups replaced keep their spellings: ``--calibrate V`` is
  ``--calibration.enabled V``, ``--calibrator M`` is ``--calibration.method M``, ``--figures V``
  is ``--figures.enabled V`` (``--x=V`` forms too);
* a LightningCLI subcommand (``train.py fit ...``) is refused in one line that says what to
  type instead: softcal's train has none, it always fits and then tests.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from softcal.config_files import config_chain, default_config, resolve_config
from softcal.errors import SoftcalError

#: Old option -> the config-group key it now sets.
ALIASES = {
    "--calibrate": "--calibration.enabled",
    "--calibrator": "--calibration.method",
    "--figures": "--figures.enabled",
    "--ckpt": "--ckpt_path",  # the name predict, export and evaluate give a run or checkpoint
}

#: LightningCLI's subcommands -> what to type instead.
SUBCOMMANDS = {
    "fit": "drop 'fit' and keep the options (python scripts/train.py --config cifar10 ...)",
    "validate": "to evaluate a trained run, use python scripts/evaluate.py RUN_DIR",
    "test": "to test a trained run, use python scripts/evaluate.py RUN_DIR",
    "predict": "to predict with a trained run, use python scripts/predict.py --ckpt RUN_DIR IMAGES",
}


def command_line(args: Sequence[str]) -> list[str]:
    """``args`` (the command line after the program name) as LightningCLI is to parse them."""
    args = list(args)
    if args and args[0] in SUBCOMMANDS:
        raise SoftcalError(
            f"train.py has no subcommands: it always fits, then tests the best checkpoint;"
            f" {SUBCOMMANDS[args[0]]}"
        )
    return with_aliases(with_config(args))


def config_value(args: Sequence[str], i: int) -> tuple[str | None, int]:
    """(the config ``args[i]`` names, how many arguments that takes), or (None, 1) when
    ``args[i]`` is not ``--config``/``-c`` in one of its forms."""
    arg = args[i]
    if arg in ("--config", "-c"):
        return (args[i + 1], 2) if i + 1 < len(args) else (None, 1)
    for prefix in ("--config=", "-c=", "-c"):  # -cX: argparse's attached short-option value
        if arg.startswith(prefix):
            return arg[len(prefix) :], 1
    return None, 1


def with_config(args: Sequence[str]) -> list[str]:
    """Every config named, as ``--config FILE`` pairs with its bases before it (a base that an
    earlier config already brought is not applied again); the default config (and its bases)
    first when none is named."""
    out: list[str] = []
    applied: set[Path] = set()
    named = False
    i = 0
    while i < len(args):
        value, taken = config_value(args, i)
        if value is None:
            out.append(args[i])
        else:
            named = True
            *bases, path = config_chain(resolve_config(value))
            out += _config_pairs([b for b in bases if b.resolve() not in applied], applied)
            out += _config_pairs([path], applied)
        i += taken
    return out if named else [*_config_pairs(config_chain(default_config()), applied), *out]


def _config_pairs(paths: Sequence[Path], applied: set[Path]) -> list[str]:
    applied.update(path.resolve() for path in paths)
    return [arg for path in paths for arg in ("--config", str(path))]


def with_aliases(args: Sequence[str]) -> list[str]:
    """The old spellings rewritten to their config-group keys. ``--figures`` followed by a
    mapping or a YAML/JSON file is the group itself (``--figures '{enabled: false}'``) and is
    left alone; any other value is the old switch's."""
    out = list(args)
    for i, arg in enumerate(out):
        name, equals, value = arg.partition("=")
        if name not in ALIASES:
            continue
        if not equals:
            value = out[i + 1] if i + 1 < len(out) else ""
        if name == "--figures" and _group_value(value):
            continue
        out[i] = ALIASES[name] + equals + (value if equals else "")
    return out


def _group_value(value: str) -> bool:
    """Whether ``--figures VALUE`` sets the whole group: a mapping, or a YAML/JSON file."""
    return value.lstrip().startswith("{") or value.endswith((".yaml", ".yml", ".json"))
