"""User-facing errors: one line that names the problem and the fix.

Code raises :class:`SoftcalError` for anything a user can fix (missing data, a wrong checkpoint,
a corrupt file). The scripts catch it and print the message without a traceback; pass
``--verbose`` to a script to see the traceback as well.
"""

from __future__ import annotations

import functools
import gc
import os
import sys
from collections.abc import Callable


class SoftcalError(Exception):
    """A problem with the user's input, with a message that says how to fix it."""


class DataError(SoftcalError):
    """Data is missing, corrupt or inconsistent."""


class CheckpointError(SoftcalError):
    """A checkpoint is missing, corrupt or does not fit the data or config."""


class NonFiniteLossError(SoftcalError):
    """The training loss became NaN or infinite."""


def first_line(err: BaseException) -> str:
    """The first line of an exception's message (at most 200 characters), for a one-line error
    that quotes a library's own reason; the exception's type when it has no message."""
    text = str(err).strip()
    return text.splitlines()[0][:200] if text else type(err).__name__


def softcal_cause(err: BaseException) -> SoftcalError | None:
    """The SoftcalError a wrapping exception was raised from (via ``from`` or while handling
    it), e.g. a datamodule's one-line error inside jsonargparse's "does not validate"."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        if isinstance(current, SoftcalError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def _wants_traceback(argv: list[str]) -> bool:
    return "--verbose" in argv or os.environ.get("SOFTCAL_VERBOSE") == "1"


def exit_on_user_error(main: Callable[[], object]) -> Callable[[], None]:
    """Run a script's ``main``; a :class:`SoftcalError` becomes ``error: ...`` and exit code 2.

    The result of ``main`` is dropped: a console script calls ``sys.exit(command())``, and any
    return value but None would end the process with exit code 1 and print that value.

    When ``main`` returns, the process is about to exit with everything written (the scripts
    close or flush their files and event writers themselves). CPython's shutdown would still
    run a full garbage collection over every object torch and Lightning left: ~1 s after an
    MNIST run on a 2-core CPU, a tenth of the run. ``gc.freeze()`` puts those objects out of
    its reach; the operating system takes the memory back either way.
    """

    @functools.wraps(main)
    def wrapper() -> None:
        verbose = _wants_traceback(sys.argv)
        if "--verbose" in sys.argv:
            sys.argv.remove("--verbose")
        try:
            main()
            gc.freeze()
        except SoftcalError as err:
            if verbose:
                raise
            print(f"error: {err}", file=sys.stderr)
            raise SystemExit(2) from None
        except KeyboardInterrupt:
            print("interrupted: the last saved checkpoint is kept", file=sys.stderr)
            raise SystemExit(130) from None

    return wrapper
