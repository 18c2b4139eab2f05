"""The one shape every analysis of evaluate has, and what each hands back.

An analysis is an object with a ``name`` and four methods (:class:`Analysis`). evaluate calls,
for every analysis listed in :data:`softcal.evaluation.analyses.ANALYSES`:

1. ``add_arguments(parser)`` - its own command-line options, if any;
2. ``check(args)`` - right after parsing, before any checkpoint is loaded: a bad option costs a
   second, not a test run (it may store what it parsed on ``args``);
3. ``wanted(args)`` - whether it runs at all (an option asked for it, or always);
4. ``run(ctx, out_dir, args)`` - per evaluated checkpoint: the files it wrote under
   ``out_dir``, the table to print (or None) and the record its JSON file holds.

Analyses never compute logits or reload anything themselves: they ask the
:class:`~softcal.evaluation.context.EvaluationContext`, which runs each split through the net
once, and ask ``ctx.calibration`` how the run calibrates its probabilities.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from softcal.evaluation.results import AnalysisResult

if TYPE_CHECKING:
    from softcal.evaluation.context import EvaluationContext


class Analysis(Protocol):
    """One analysis of evaluate (see the module docstring for when each method is called)."""

    name: str

    def add_arguments(self, parser: argparse.ArgumentParser) -> None: ...

    def check(self, args: argparse.Namespace) -> None: ...

    def wanted(self, args: argparse.Namespace) -> bool: ...

    def run(self, ctx: EvaluationContext, out_dir: Path, args: argparse.Namespace) -> AnalysisResult: ...


class EveryEvaluation:
    """Defaults for an analysis with no options of its own that runs on every evaluation;
    subclasses set ``name`` and write ``run``."""

    name = ""

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """No options of its own."""

    def check(self, args: argparse.Namespace) -> None:
        """Nothing to check."""

    def wanted(self, args: argparse.Namespace) -> bool:
        return True
