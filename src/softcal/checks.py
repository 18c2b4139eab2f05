"""One-line errors for impossible option values, raised where each value is taken.

A zero batch size or a negative learning rate otherwise surfaces much later, as a
ZeroDivisionError or an optimizer's ValueError with a traceback. :func:`check_options`
checks a constructor's numbers against simple rules and names the option (as the command
line spells it) and a valid example in the message.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from softcal.errors import SoftcalError


@dataclass(frozen=True)
class Rule:
    """What a valid value looks like: ``test(value)`` is true, described as ``means``."""

    test: Callable[[float], bool]
    means: str


def at_least(low: float) -> Rule:
    return Rule(lambda v: v >= low, f"at least {low:g}")


def above(low: float) -> Rule:
    return Rule(lambda v: v > low, f"above {low:g}")


def in_range(low: float, high: float) -> Rule:
    """``low <= value < high``."""
    return Rule(lambda v: low <= v < high, f"in [{low:g}, {high:g})")


def check_options(prefix: str, rules: dict[str, tuple[object, Rule, str]]) -> None:
    """Raise a one-line :class:`SoftcalError` for the first value that breaks its rule.

    Args:
        prefix: how the command line spells the options' group, e.g. ``model`` or
            ``data.init_args``.
        rules: option name -> (the value given, its rule, a valid example value).
    """
    for name, (value, rule, example) in rules.items():
        number = value if isinstance(value, int | float) and not isinstance(value, bool) else math.nan
        if math.isnan(number) or not math.isfinite(number) or not rule.test(number):
            raise SoftcalError(
                f"{prefix}.{name}={value!r} is impossible: it must be a number {rule.means}"
                f" (e.g. --{prefix}.{name} {example})"
            )


def check_epochs(max_epochs: int | None, max_steps: int | None) -> None:
    """``trainer.max_epochs``: None is Lightning's default and -1 means "no epoch limit", which
    only ends when ``max_steps`` is set; 0 or below trains nothing."""
    if max_epochs is None or (max_epochs == -1 and (max_steps or -1) > 0):
        return
    check_options("trainer", {"max_epochs": (max_epochs, at_least(1), "10")})
