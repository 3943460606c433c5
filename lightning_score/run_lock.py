"""One writer per run directory: an OS lock (``flock``) on ``<dir>/.lock`` held for the life of
the command that writes there (``lscore train``, ``train-classifier``, ``export``).

The kernel drops an ``flock`` when its holder dies, however it dies (kill -9 included), so a
crashed run never leaves a stale lock behind, unlike a marker file (the file a killed holder
leaves is not locked, and the next writer takes it). The lock file holds the holder's PID and
command, for the one-line refusal a second writer gets; it is removed when the command ends. Under DDP only the
launching process (global rank zero) takes the lock; the other ranks are its children.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

LOCK_FILE = ".lock"
#: environment variables that launchers set to a process's rank (torchrun, Lightning, SLURM)
_RANK_VARIABLES = ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID")


#: lock descriptors this process holds
_HELD: set[int] = set()


def _close_held_in_child() -> None:
    """A forked child (a DataLoader worker) closes its copies of the held locks: the lock then
    ends with its holder, not with the last worker to notice the holder died. Closing a copy
    leaves the parent's lock in place (an ``flock`` lasts until every copy is closed)."""
    for fd in _HELD:
        os.close(fd)
    _HELD.clear()


os.register_at_fork(after_in_child=_close_held_in_child)


class RunDirectoryLocked(RuntimeError):
    """Another live process writes into the same run directory."""


def _is_launching_process() -> bool:
    return all(os.environ.get(name, "0") in ("", "0") for name in _RANK_VARIABLES)


def _holder(fd: int) -> str:
    text = os.pread(fd, 256, 0).decode(errors="replace").strip()
    pid, _, command = text.partition(" ")
    return f"PID {pid}, {command}" if pid.isdigit() else "a process that wrote no PID"


@contextmanager
def run_lock(directory: Path, command: str) -> Iterator[None]:
    """Hold the lock of ``directory`` for the block, or raise :class:`RunDirectoryLocked` naming
    the holder. A directory this call created is removed again if the block leaves it empty
    (a command refused early changes nothing)."""
    directory = Path(directory)
    if not _is_launching_process():
        yield
        return
    created = not directory.exists()
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / LOCK_FILE
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise RunDirectoryLocked(
                f"{directory} is in use by another process ({holder}): wait for it to end, or "
                "pick another name=, out_dir= or --out"
            ) from None
        try:  # the file we locked may have been removed by a holder that just ended: retry
            if os.fstat(fd).st_ino == os.stat(path).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    _HELD.add(fd)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {command}\n".encode(), 0)
        yield
    finally:
        _HELD.discard(fd)
        # Removed while still held: a process waiting on this file finds it gone and retries.
        path.unlink(missing_ok=True)
        if created and not any(directory.iterdir()):
            directory.rmdir()
        os.close(fd)
