"""One writer per output: an OS lock (``fcntl.flock``) on a lock file in the output folder.

Every command that writes a folder (``train ppo|online|cpl|dpo|bc``,
``sweep`` and each of its cells, ``bench``) holds :func:`hold` while it
writes. The kernel releases a ``flock`` when its process dies, however it
dies, so a lock file left by a killed process (with its dead PID inside)
is simply taken over; there is no PID race and no stale lock. The file
records the holder's PID and host, only for the message a second writer
gets (:class:`FolderLocked`, an option error: exit status 2).

Lock files (``.lock`` in a folder, ``.<file>.lock`` beside one output file)
are removed when released and are git-ignored.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import platform
from collections.abc import Iterator
from pathlib import Path

from prefrl.config import ConfigError


class FolderLocked(ConfigError):
    """Another process holds the output's lock; the message names its PID and host."""


def _holder(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8").split()
    except OSError:
        text = []
    pid = text[0] if text else "?"
    host = text[1] if len(text) > 1 else "?"
    return f"process {pid} on {host}"


@contextlib.contextmanager
def hold(folder: str | os.PathLike, *, name: str = ".lock", option: str = "--out",
         what: str = "output folder") -> Iterator[Path]:
    """Hold an exclusive lock on ``folder/name`` (``folder`` is created if missing).

    Raises :class:`FolderLocked` at once (no waiting) when another process, or
    another open of the same file in this process, holds it. On release the
    lock file goes, and so does ``folder`` if this call created it and an
    error left it empty: a refused run leaves nothing behind.
    """
    folder = Path(folder)
    created = not folder.exists()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"{option} {folder}: cannot create the folder "
                          f"({err.strerror or err})") from err
    if not folder.is_dir():
        raise ConfigError(f"{option} {folder}: is not a folder")
    path = folder / name
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise ConfigError(f"{option} {folder}: cannot write there "
                              f"({err.strerror or err})") from err
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise FolderLocked(
                f"{option} {folder}: this {what} is being written by {_holder(path)} "
                f"(lock {path}); wait for it to finish or choose another {option}") from None
        # The holder before us may have removed the file between our open and our lock:
        # then we hold a lock on a name nobody else sees, so open the new file again.
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()} {platform.node()}\n".encode())
    try:
        yield path
    finally:
        with contextlib.suppress(OSError):
            path.unlink()
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
        if created:
            with contextlib.suppress(OSError):
                folder.rmdir()  # only if empty


def hold_file(path: str | os.PathLike, *, option: str = "--out",
              what: str = "output file") -> contextlib.AbstractContextManager[Path]:
    """:func:`hold` for one output file: the lock ``.<name>.lock`` beside it."""
    path = Path(path)
    return hold(path.parent, name=f".{path.name}.lock", option=option, what=what)


__all__ = ["FolderLocked", "hold", "hold_file"]
