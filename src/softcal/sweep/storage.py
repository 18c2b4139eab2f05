"""Where a study lives: Optuna's own storages, nothing of softcal's.

* a file path (the default): a journal file (``JournalFileBackend``), an append-only log of
  the study's operations. No server; workers on several machines share it through a shared
  filesystem (NFS included: the file is locked with a symlink, not ``fcntl``).
* a database URL (``sqlite:///study.db``, ``postgresql://user@host/db``, ``mysql://...``):
  Optuna's RDB storage, for a database server the workers can all reach.

A storage that cannot be opened is one line naming it (a URL's password hidden) and the fix,
before any study is read or written.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from softcal.errors import SoftcalError, first_line

#: Seconds a worker waits for a database server before giving up with one line (not the
#: minutes a TCP connect can hang); drivers that accept ``connect_timeout``.
CONNECT_TIMEOUT = {"postgresql": 10, "mysql": 10}


def is_url(storage: str) -> bool:
    return "://" in storage


def shown(storage: str) -> str:
    """``storage`` as messages and reports show it: a URL's password replaced by ***."""
    return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", storage) if is_url(storage) else storage


def open_storage(storage: str) -> Any:
    """The Optuna storage ``storage`` names (a journal file path or an RDB URL)."""
    return _rdb(storage) if is_url(storage) else _journal(Path(storage))


def _journal(path: Path) -> Any:
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    _check_journal(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    except OSError as err:
        reason = err.strerror or first_line(err)
        raise SoftcalError(
            f"cannot open the journal file {path}: {reason}; pass a --storage file in a folder you can"
            " write (on several machines: one on a filesystem they share)"
        ) from err


def _check_journal(path: Path) -> None:
    """Refuse a file that is not an Optuna journal before a line is appended to it: Optuna
    reads past one bad line and fails on the next, after it has written its own."""
    try:
        with open(path, "rb") as handle:
            first = handle.readline(1 << 20)
    except (FileNotFoundError, IsADirectoryError):
        return  # a new journal; a directory fails with its own message when opened
    except OSError:
        return  # unreadable: opening it says why
    if not first:
        return
    try:
        ok = "op_code" in json.loads(first)
    except (ValueError, TypeError):
        ok = False
    if not ok:
        raise SoftcalError(
            f"{path} is not an Optuna journal file (its first line is not a journal entry); pass"
            " another --storage file, or a database URL"
        )


def _rdb(url: str) -> Any:
    from optuna.storages import RDBStorage

    scheme = url.split("://", 1)[0].split("+", 1)[0]
    timeout = CONNECT_TIMEOUT.get(scheme)
    engine = {"connect_args": {"connect_timeout": timeout}} if timeout else {}
    try:
        return RDBStorage(url, engine_kwargs=engine)
    except ImportError as err:  # Optuna's "Failed to import DB access module" for a missing driver
        raise SoftcalError(
            f"cannot open storage {shown(url)}: no Python driver for {scheme} is installed; install"
            f" one (e.g. pip install psycopg2-binary for postgresql://) or use a journal file"
            " (--storage FILE)"
        ) from err
    except Exception as err:  # sqlalchemy: unreachable server, bad URL, unwritable sqlite file
        raise SoftcalError(
            f"cannot open storage {shown(url)}: {first_line(err)}; check the URL and that the database"
            " can be reached from here, or use a journal file (--storage FILE)"
        ) from err
