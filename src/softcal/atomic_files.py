"""One writer for every file softcal rewrites: checkpoints' neighbours (results.json,
metrics.json), the image-folder cache, exports, figures.

A base module (it imports only softcal.errors) so that every layer - data's cache included,
which may not import runs - writes through the same atomic, fsynced path.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from typing import Any

from softcal.errors import SoftcalError


def atomic_write_bytes(path: str | Path, data: bytes | memoryview,
                       error: type[SoftcalError] = SoftcalError) -> Path:  # fmt: skip
    """Replace ``path`` by ``data`` so that any reader, and any crash, sees the old file or the
    new one, never a mixture: a temporary file in the SAME directory (a rename across
    filesystems would be a copy over the old file), fsynced, renamed over ``path``, and the
    directory fsynced so the rename itself survives a power loss.

    On an OSError (a full disk, a file-size limit, no permission) the temporary file is
    removed, ``path`` is left untouched and ``error`` is raised with one line naming the
    directory and the cause.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # O_EXCL with a unique name: two processes never share a temporary file.
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        handle = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except OSError as err:
        raise _write_error(error, path, err) from err
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise _write_error(error, path, err) from err
    _fsync_directory(path.parent)
    return path


def _write_error(error: type[SoftcalError], path: Path, err: OSError) -> SoftcalError:
    cause = f"{err.strerror} (errno {err.errno})" if err.strerror else str(err) or type(err).__name__
    return error(
        f"cannot write {path.name} in {path.parent}: {cause}; make room there or write elsewhere"
        f" (an existing {path.name} is left as it was)"
    )


def _fsync_directory(directory: Path) -> None:
    """Make a rename in ``directory`` durable. Best effort: the new file is already in place,
    and some systems cannot open (Windows) or fsync (some network filesystems) a directory."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    """``obj`` as indented, key-sorted JSON, written atomically."""
    return atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())
