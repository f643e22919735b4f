"""Atomic file output: a file appears complete at its final name or not at all.

Every output of the project (decoded images, bitstreams) goes through
:func:`atomic_open`: the data is written to a temporary file in the target's
directory, flushed to disk, then renamed over the target. A crash, Ctrl-C or
exception midway leaves the previous file (if any) untouched and removes the
temporary file.

The file ends with the permissions a plain ``open(path, "wb")`` would give:
a new file is created with mode 0o666 and the kernel applies the process's
umask (and any default ACL) itself, as it does for ``open()``; a file that is
replaced keeps its permission bits. Nothing process-wide is read or changed
(no ``os.umask``, which can only be read by setting it, racing other threads).
"""

from __future__ import annotations

import contextlib
import os
import secrets
from typing import BinaryIO, Iterator, Tuple, Union

PathLike = Union[str, "os.PathLike[str]"]

_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0) | getattr(os, "O_CLOEXEC", 0)


def _create_temp(directory: str, name: str) -> Tuple[int, str]:
    """A new file ``.<name>.<random>.part`` in ``directory``, mode 0o666 less the umask: (fd, path)."""
    for _ in range(100):
        tmp = os.path.join(directory, f".{name}.{secrets.token_hex(4)}.part")
        try:
            # O_EXCL: never an existing file, never through a symbolic link.
            return os.open(tmp, _FLAGS, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"could not create a temporary file for {name} in {directory}")


@contextlib.contextmanager
def atomic_open(path: PathLike) -> Iterator[BinaryIO]:
    """Binary file object whose content replaces ``path`` when the block exits normally."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = _create_temp(directory, os.path.basename(path))
    try:
        with os.fdopen(fd, "wb") as f:
            try:
                # open() on an existing file keeps its mode: so does the replacement.
                mode = os.stat(path).st_mode & 0o777
            except OSError:
                mode = None
            if mode is not None:
                if hasattr(os, "fchmod"):
                    os.fchmod(f.fileno(), mode)
                else:
                    os.chmod(tmp, mode)
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    # Make the rename itself durable; not every filesystem allows it.
    with contextlib.suppress(OSError):
        dfd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def atomic_write_bytes(path: PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_open(path) as f:
        f.write(data)


def check_writable_dir(directory: PathLike, create: bool = False) -> None:
    """Raise ``OSError`` unless a file can be created in ``directory`` (made first if ``create``).

    A real probe, as :func:`atomic_open` will write: permission bits do not
    tell (root, ACLs, read-only mounts), a created and removed file does.
    """
    directory = os.fspath(directory) or "."
    if create:
        os.makedirs(directory, exist_ok=True)
    fd, tmp = _create_temp(directory, "write-test")
    os.close(fd)
    os.unlink(tmp)
