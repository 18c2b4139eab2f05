"""The command-line conventions of the apps that reopen a run (predict, export, evaluate).

* A wrong argument is one line, ``error: ...`` and exit code 2, like every other softcal error
  (argparse prints its whole usage block first).
* The program is named as it was invoked: ``softcal-predict`` from the console script,
  ``predict.py`` from ``scripts/``.
* One name for "which run": ``--ckpt RUN_DIR_OR_CKPT``.
* Flags are spelt with hyphens (``--top-k``, ``--skip-bad``); the underscore spelling
  (``--top_k``) is accepted too, and not listed twice in ``--help``.
* ``--data.* / --model.* / --trainer.* / --seed_everything`` override the run's saved config
  (taken out before argparse sees them: argparse would take an override's value for a path),
  and ``--verbose`` shows a traceback; ``--help`` lists both.
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from softcal.runs.load import RUN_HELP, split_overrides

OVERRIDES_HELP = """\
  --data.NAME VALUE, --model.NAME VALUE, --trainer.NAME VALUE, --seed_everything N
                        override a value of the run's saved config.yaml, as in
                        training (e.g. --trainer.accelerator cpu, --data.root DIR)"""


def entry_point(script: str) -> str:
    """How the app was started: ``softcal-predict`` as a console script, else ``script``
    (``predict.py``), also when the app runs inside another program (tests, notebooks)."""
    invoked = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else ""
    console = "softcal-" + Path(script).stem
    return invoked if invoked in (script, console) else script


class AppArgumentParser(argparse.ArgumentParser):
    """argparse with softcal's conventions (see the module's docstring)."""

    def __init__(self, script: str, description: str, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        description = "\n\n".join(textwrap.fill(p, 78) for p in description.split("\n\n"))
        super().__init__(prog=entry_point(script), description=description, **kwargs)
        self.add_argument("--verbose", action="store_true",
                          help="on an error, show the traceback too (or set SOFTCAL_VERBOSE=1)")
        self.epilog = "\n".join(filter(None, ["run config overrides:", OVERRIDES_HELP, self.epilog]))
        self.underscore_spellings: list[tuple[str, str]] = []  # (--top-k, --top_k), for --help

    def error(self, message: str) -> NoReturn:
        """One line, as every softcal error: what is wrong and where to look, exit code 2."""
        print(f"error: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(2)

    def add_option(self, name: str, *names: str, **kwargs: Any) -> argparse.Action:
        """``--top-k`` as given, and ``--top_k`` accepted as the same option, unlisted."""
        action = self.add_argument(name, *names, **kwargs)
        long_names = [n for n in (name, *names) if n.startswith("--") and "-" in n[2:]]
        underscored = ["--" + n[2:].replace("-", "_") for n in long_names]
        if underscored:
            hidden = {k: v for k, v in kwargs.items() if k not in ("help", "default", "required")}
            self.add_argument(*underscored, dest=action.dest, help=argparse.SUPPRESS,
                              default=argparse.SUPPRESS, **hidden)  # fmt: skip
            self.underscore_spellings.append((name, underscored[0]))
        return action

    def format_help(self) -> str:
        """The help, with a line saying that hyphenated options also take underscores."""
        text = super().format_help()
        if self.underscore_spellings:
            hyphens, underscores = self.underscore_spellings[0]
            text += f"\nOptions spelt with hyphens also take underscores ({hyphens} or {underscores}).\n"
        return text

    def add_run_argument(self) -> argparse.Action:
        """``--ckpt RUN_DIR_OR_CKPT``: the run (its best checkpoint) or a checkpoint in one."""
        return self.add_argument("--ckpt", required=True, metavar="RUN_DIR_OR_CKPT", help=RUN_HELP)

    def parse_with_overrides(self, argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
        """(the app's own arguments, the config overrides for :func:`softcal.runs.load.load_run`)."""
        own, overrides = split_overrides(argv)
        return self.parse_args(own), overrides


def run_app_parser(script: str, description: str) -> AppArgumentParser:
    """The parser of an app that reopens one run: the conventions and ``--ckpt``."""
    parser = AppArgumentParser(script, description)
    parser.add_run_argument()
    return parser
