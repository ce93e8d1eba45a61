"""Atomic file writes, the one helper every layer uses: a file is always the old one or the new one,
never half of one (checkpoints, exports' files, token files, a downloaded corpus, status.json).

The bytes go to a temporary file beside the target (same directory, so the same file system), which
is flushed, fsynced and renamed over the target (an atomic step on POSIX), and the directory is
fsynced so the rename itself survives a crash. A failure removes the temporary file and leaves the
target as it was. Standard library only: the torch-free layers use it too.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO


@contextlib.contextmanager
def atomic_file(path: str | Path, suffix: str = ".tmp") -> Iterator[IO[bytes]]:
    """`with atomic_file(path) as f: f.write(...)`: path is replaced by what was written when the block
    ends without an exception, and left as it was otherwise. The temporary file is `.<name>.<random><suffix>`
    in path's directory (a reader can recognise and remove one left by a killed process)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def fsync_dir(folder: str | Path) -> None:
    """Make the renames inside folder durable (where the file system can: some refuse a directory's fsync)."""
    try:
        dir_fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


def atomic_write_text(path: str | Path, text: str) -> None:
    """path.write_text(text) in UTF-8, atomically."""
    with atomic_file(path) as f:
        f.write(text.encode("utf-8"))
