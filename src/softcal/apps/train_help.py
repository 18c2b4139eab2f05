"""``train.py --help`` on one screen: every option once, with the value it has in the config.

LightningCLI's own help lists each option's full docstring, the class defaults (``lr 0.01``
where the default config trains with 0.02) and, for a net typed as ``torch.nn.Module``, every
subclass torch ships. This help shows each option on a line or two: the first sentence of its
help and the value the configs given (or the default config) set. The long forms stay one
option away: ``--data.help CLASS`` and ``--model.net.help CLASS`` print a class's every
argument with jsonargparse's full formatter.
"""

from __future__ import annotations

import argparse
import re
import shutil
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from jsonargparse import DefaultHelpFormatter, Namespace

from softcal.apps.command_line import ALIASES

USAGE = "%(prog)s [-c CONFIG ...] [--print_config] [--GROUP.OPTION VALUE ...]"

#: Section titles by config group; jsonargparse would title them with class docstrings.
GROUP_TITLES = {
    "trainer": "trainer (Lightning's Trainer)",
    "model": "model (the classifier: softcal.model.module.Classifier)",
    "data": "data (the dataset: a softcal.data datamodule)",
    "checkpoint": "checkpoint (the best checkpoint: Lightning's ModelCheckpoint)",
    "last_checkpoint": "last_checkpoint (checkpoints/last.ckpt, to resume from)",
    "calibration": "calibration (fitted on the validation logits at every validation)",
    "figures": "figures (reliability diagrams, confidence histograms, confusion matrices)",
}

#: Help of options whose own help says too little or too much for one line.
HELP = {
    "help": "show this help and exit",
    "config": "a config file or a packaged config's name; repeat to layer",
    "print_config": "print the resolved config and exit",
    "seed_everything": "the seed of initialisation, the validation split and shuffling",
    "model.net": "the network class and its arguments",
    "data": "the datamodule class and its arguments (--data.init_args.NAME VALUE)",
    "trainer.logger": "where the run's directory goes (--trainer.logger.init_args.NAME VALUE)",
    "model.label_smoothing": "label smoothing of the training loss",
    "ckpt_path": "resume from a checkpoint, a run directory or last (the newest run)",
    "validate_every_epoch": "false: validate only the final weights (no per-epoch curves)",
    "keep_freed_memory": "keep freed memory for the next step (glibc; see softcal.allocator)",
    "trainer.accelerator": "cpu, gpu, mps or auto",
    "trainer.strategy": "auto, ddp, fsdp, ... (several devices or machines)",
    "trainer.precision": "32-true, bf16-mixed (recent GPUs), 16-mixed or 64-true",
}

EPILOG = """\
examples:
  %(prog)s                          # MNIST, configs/mnist.yaml
  %(prog)s -c cifar10               # a packaged config, by name
  %(prog)s -c cifar10 --trainer.max_epochs 5 --data.init_args.batch_size 256
  %(prog)s -c configs/image_folder.yaml --data.init_args.folder my_images
  %(prog)s --ckpt last              # resume the newest run
  %(prog)s --print_config > my.yaml # the resolved config, to edit and reuse

Every option takes a value (true or false for switches) and can be set in a
config file. The model's num_classes, in_channels, class_names and image_size
are the data's. A class's every argument, with its full help:
  %(prog)s --data.help MNISTDataModule    (or CIFAR10DataModule, ...)
  %(prog)s --model.net.help DigitCNN      (or ResNet, ...)
  %(prog)s --trainer.logger.help TensorBoardLogger"""

#: Actions left out: each class's ``.help`` (named in the epilog), a group's ``--GROUP CONFIG``
#: file option, the links (the epilog says what they do) and shell completion.
HIDDEN_TYPES = {"_ActionHelpClassPath", "_ActionConfigLoad", "ActionLink", "ActionFail"}

#: Lines of help per option at most; a default longer than a line keeps its lines.
MAX_LINES = 2
#: Wider lines are hard to read, whatever the terminal's width.
MAX_WIDTH = 110


class TrainHelpFormatter(DefaultHelpFormatter):
    """One or two lines per option: the first sentence of its help and the configured value.

    ``config`` is the parsed config whose values are shown as defaults; without one (a
    subclass made by :func:`print_help` sets it), the parser's own defaults are shown.
    """

    config: Namespace | None = None

    def __init__(self, prog: str, indent_increment: int = 2, max_help_position: int = 34,
                 width: int | None = None) -> None:  # fmt: skip
        width = min(width or shutil.get_terminal_size().columns - 2, MAX_WIDTH)
        super().__init__(prog, indent_increment, max_help_position, width)

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        """Description and epilog keep their lines (the examples are laid out by hand)."""
        return "".join(indent + line for line in text.splitlines(keepends=True))

    def _format_action(self, action: argparse.Action) -> str:
        if type(action).__name__ in HIDDEN_TYPES or action.dest.endswith(".help"):
            return ""
        saved = action.help
        action.help = self._compact_help(action)
        try:
            return argparse.HelpFormatter._format_action(self, action)
        finally:
            action.help = saved

    def _format_action_invocation(self, action: argparse.Action) -> str:
        """The option's names (the ``+`` forms of list options left out) and its alias."""
        if not action.option_strings:
            return super()._format_action_invocation(action)
        names = [s for s in action.option_strings if not s.endswith("+")]
        names += [old for old, new in ALIASES.items() if new == f"--{action.dest}"]
        if action.dest == "config":
            return ", ".join(names) + " CONFIG"
        return ", ".join(names) + ("[=flags]" if action.dest == "print_config" else "")

    def _expand_help(self, action: argparse.Action) -> str:
        return action.help or ""  # composed by _compact_help: no %-placeholders to fill

    def _split_lines(self, text: str, width: int) -> list[str]:
        """At most MAX_LINES lines: the sentence is shortened, the default kept whole."""
        sentence, _, default = text.partition("\0")
        wrapper = textwrap.TextWrapper(width, break_on_hyphens=False)
        lines = wrapper.wrap(sentence + default)
        if len(lines) > MAX_LINES and sentence and len(default) < width:
            room = max(width * MAX_LINES - len(default) - 1, 20)
            sentence = textwrap.shorten(sentence, room, placeholder=" ...")
            lines = wrapper.wrap(sentence + default)
        return lines

    def _compact_help(self, action: argparse.Action) -> str:
        sentence = HELP.get(action.dest) or first_sentence(action.help or "")
        if action.dest in ("help", "print_config"):
            return sentence
        value = configured(self.config, action)
        if value is None and action.help:
            value = documented_default(action.help)
        if action.dest == "config":
            return f"{sentence}\0 (given: {', '.join(show(path) for path in value or [])})"
        return f"{sentence}\0 (default: {show(value)})"


def configured(config: Namespace | None, action: argparse.Action) -> Any:
    """The option's value in the parsed config, else the parser's default."""
    if config is not None and action.dest in config:
        return config[action.dest]
    return None if action.default in (argparse.SUPPRESS,) else action.default


def documented_default(text: str) -> str | None:
    """Lightning documents what ``None`` means: ``Default: ``1.0``.`` -> ``1.0``."""
    found = re.search(r"Default:\s*``([^`]+)``", text)
    if not found:
        return None
    value = found.group(1).strip("'\"")
    return {"None": "null", "True": "true", "False": "false"}.get(value, value)


def first_sentence(text: str) -> str:
    """The first sentence of a docstring's help, its reST markup removed."""
    text = re.sub(r":\w+:`~?([^`]+)`", lambda m: m.group(1).rsplit(".", 1)[-1], text)
    text = re.sub(r"``([^`]*)``", r"\1", " ".join(text.split()))
    text = re.sub(r"\s*\((type|default): .*$", "", text)
    depth = 0
    for i, char in enumerate(text):
        depth += {"(": 1, ")": -1}.get(char, 0)
        ends = char in ".;" and (i + 1 == len(text) or text[i + 1] == " ")
        if ends and depth <= 0 and not re.search(r"\b(e\.g|i\.e|etc|vs)$", text[:i]):
            return text[:i]
    return text.rstrip(".;")


def show(value: Any) -> str:
    """A value as it is typed: ``true``, ``[16, 32, 64]``, ``DigitCNN(widths=[16, 32, 64])``."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, Namespace):
        value = value.as_dict()
    if isinstance(value, Mapping) and "class_path" in value:
        args = value.get("init_args") or {}
        inner = ", ".join(f"{k}={show(v)}" for k, v in args.items())
        return f"{str(value['class_path']).rsplit('.', 1)[-1]}({inner})"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{k}: {show(v)}" for k, v in value.items()) + "}"
    if isinstance(value, Sequence) and not isinstance(value, str):
        return "[" + ", ".join(show(v) for v in value) + "]"
    if isinstance(value, Path) or hasattr(value, "relative"):  # jsonargparse's Path_fsr
        return Path(str(value)).name
    return "null" if value is None else str(value) or "''"


def title_groups(parser: Any) -> None:
    """Section titles that name the config group, instead of the classes' docstrings."""
    for key, group in parser.groups.items():
        if key in GROUP_TITLES:
            group.title, group.description = GROUP_TITLES[key], None


def print_help(parser: Any, argv: Sequence[str]) -> None:
    """Print the help with the values ``argv`` (the command line without ``--help``) sets,
    and exit 0. A command line that does not parse shows the parser's own defaults."""
    try:
        config = parser.parse_args(list(argv))
    except Exception:  # jsonargparse reports bad values many ways; the help is still wanted
        config = None
    given = [show(path) for path in (config.get("config") or [])] if config is not None else []
    parser.formatter_class = type("ConfiguredHelp", (TrainHelpFormatter,), {"config": config})
    source = (f"the values of {', '.join(given)}; options override them" if given
              else "the classes' own (the command line did not parse)")  # fmt: skip
    parser.description = textwrap.fill(
        "Train an image classifier, fit its calibration at every validation and test the best"
        f" checkpoint. Defaults shown are {source}.", width=78
    )
    parser.print_help()
    parser.exit()
