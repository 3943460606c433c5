"""Files that commands write: checked before the work, never silently replaced, never the input,
and whole or absent.

A command lists its output paths first (:func:`check_outputs`, :func:`check_output_folder`): a
destination that cannot be written, or that already exists without ``--overwrite``, is refused
with one line before any sampling or metric work starts, and nothing is created until then. Each file is then written through :func:`atomic_path`: a
temporary file beside the target, renamed over it once complete, so an interrupted command leaves
the previous file (or none), never half of one. A folder of files that belong together (an
export) is written through :func:`atomic_folder` in the same way, and a full disk there ends in
one line that names the path and the space it needs.
"""

from __future__ import annotations

import argparse
import errno
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path


class OutputError(ValueError):
    """An output path that would replace something or cannot be written; says what to do."""


def add_overwrite_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace outputs that already exist (default: refuse and keep them)",
    )


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode a new file gets from ``open`` under the current umask (``mkstemp`` makes 0600)."""
    return 0o666 & ~_umask()


def check_writable(directory: Path) -> None:
    """Prove that files can be created in ``directory`` (made later, with its parents, if it
    does not exist yet) with a probe file in its nearest existing ancestor; nothing is left."""
    existing = Path(directory)
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise OutputError(f"{existing} exists and is not a directory: choose another output path")
    try:
        fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=existing)
    except OSError as err:
        raise OutputError(
            f"cannot write to {existing} ({err.strerror}): choose another output location"
        ) from None
    os.close(fd)
    os.unlink(probe)


def _same_file(a: Path, b: Path) -> bool:
    if a.exists() and b.exists():
        return os.path.samefile(a, b)
    return a.resolve() == b.resolve()


def check_outputs(paths: Iterable[Path], overwrite: bool, inputs: Iterable[Path] = ()) -> None:
    """Refuse, before any work, outputs that are an input (even with ``overwrite``), a
    directory, an existing file (without ``overwrite``), or in a directory that cannot be
    created or written."""
    inputs = [Path(p) for p in inputs]
    for path in map(Path, paths):
        for source in inputs:
            if _same_file(path, source):
                raise OutputError(f"{path} is the input {source}: write the output to another path")
        if path.is_dir():
            raise OutputError(f"{path} is a directory: give a file name for the output")
        if path.exists() and not overwrite:
            raise OutputError(
                f"{path} exists: pass --overwrite to replace it, or choose another output path"
            )
        check_writable(path.parent)


def check_output_folder(folder: Path, overwrite: bool, inputs: Iterable[Path] = ()) -> None:
    """Refuse, before any work, an output folder that is or holds an input (even with
    ``overwrite``), a file, or a folder with files in it (without ``overwrite``)."""
    folder = Path(folder)
    for source in map(Path, inputs):
        if _same_file(folder, source) or folder.resolve() in source.resolve().parents:
            raise OutputError(f"{folder} holds the input {source}: write the output elsewhere")
    if folder.is_dir() and any(folder.iterdir()) and not overwrite:
        raise OutputError(
            f"{folder} exists and is not empty: pass --overwrite to replace what it holds, or "
            "choose another output folder"
        )
    check_writable(folder)


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary path beside ``path``, with the same suffix (writers such as ``np.savez`` and
    ``savefig`` choose the format by it), that replaces ``path`` when the block succeeds and is
    removed when it fails."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, file_mode())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text(path: Path, text: str) -> None:
    """``path.write_text(text)``, whole or not at all."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def free_bytes(path: Path) -> int:
    """Free space on the file system that holds ``path`` (or its nearest existing ancestor)."""
    existing = Path(path).absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    return shutil.disk_usage(existing).free


def disk_full(path: Path, needed: int) -> OutputError:
    """The one line for a write that ran out of space: where, how much it needs, how much is free."""
    mib = 1 << 20
    return OutputError(
        f"no space left on the device writing {path}: it needs about {needed / mib:,.0f} MiB, "
        f"{free_bytes(path) / mib:,.0f} MiB are free; free some space or choose another output "
        "path (nothing was written)"
    )


@contextmanager
def atomic_folder(path: Path, needed: int = 0) -> Iterator[Path]:
    """A temporary folder beside ``path`` that replaces ``path`` (and all it held) when the block
    succeeds and is removed when it fails, so a folder is whole or absent; running out of space
    (``needed``: the bytes it will take) becomes :func:`disk_full`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; a folder from mkdir would not be
    try:
        yield tmp
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=path.parent))
            os.replace(path, old)
            try:
                os.replace(tmp, path)
            except BaseException:
                os.replace(old, path)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if is_disk_full(err):
            raise disk_full(path, needed) from None
        raise


def is_disk_full(err: BaseException) -> bool:
    """Whether ``err`` is a full disk, also where a writer wraps it (safetensors' SafetensorError
    carries the OS message in its text only)."""
    if isinstance(err, OSError) and err.errno == errno.ENOSPC:
        return True
    return isinstance(err, Exception) and "No space left on device" in str(err)
