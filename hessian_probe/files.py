"""Files in an output folder: atomic writes, a lock per folder, a manifest of what we wrote.

- A write goes to a temporary name next to its path and is renamed onto it, so a kill at any
  moment leaves the old file or the new one, never half of one; the rename replaces a symbolic
  link at the path instead of writing through it, so nothing lands outside the folder.
- ``OutputLock``: one run at a time per folder (an exclusive ``flock`` on ``.hessian-probe.lock``;
  the kernel drops it when the process dies, so a killed run never leaves the folder locked).
- ``Manifest`` (``.hessian-probe-files.json``): the names of the files runs wrote there. Only
  those are ever replaced by --overwrite; a namesake we did not write is refused.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterable
from pathlib import Path

from .errors import UsageError

LOCK_FILE = ".hessian-probe.lock"
MANIFEST_FILE = ".hessian-probe-files.json"
OWN_FILES = (LOCK_FILE, MANIFEST_FILE)


TEMPORARY_NAME = re.compile(r"\.[A-Za-z0-9_.-]+\.\d+\.tmp")  # what temporary_path gives a name


def temporary_path(path: Path) -> Path:
    """The temporary file next to ``path`` that write_atomically writes first (this process's)."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def is_temporary(path: Path) -> bool:
    """Whether ``path`` is named as write_atomically's temporary files are."""
    return TEMPORARY_NAME.fullmatch(path.name) is not None


def write_atomically(path: Path, write: Callable[[Path], None]) -> None:
    """``write(temporary)`` next to ``path``, then rename it onto ``path`` (atomic on one filesystem)."""
    temporary = temporary_path(path)
    try:
        write(temporary)
        os.replace(temporary, path)
    except OSError as exc:
        if exc.errno == 28:  # ENOSPC: name the file, and what is kept
            raise UsageError(f"the disk is full: cannot write {path}; free some space (finished pieces, if any, "
                             "are kept: rerun with --resume)") from None
        raise
    finally:
        temporary.unlink(missing_ok=True)


def write_text_atomically(path: Path, text: str) -> None:
    write_atomically(path, lambda temporary: temporary.write_text(text))


PDF_CREATOR = "hessian-probe"


def save_figure(figure, path: Path, **options) -> None:
    """``figure.savefig`` through a temporary file (the format from the final name's suffix); a PDF
    is marked as ours in its metadata (``written_by_us`` reads it back)."""
    kind = path.suffix.lstrip(".").lower() or "png"
    if kind == "pdf":
        options.setdefault("metadata", {"Creator": PDF_CREATOR})
    write_atomically(path, lambda temporary: figure.savefig(temporary, format=kind, **options))


def written_by_us(path: Path) -> bool:
    """Whether the PDF at ``path`` carries save_figure's mark (a file we may replace)."""
    try:
        return PDF_CREATOR.encode() in path.read_bytes()
    except OSError:
        return False


class OutputLock:
    """An exclusive lock on an output folder for the life of a run; a second run is refused."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / LOCK_FILE
        self._handle = None

    def acquire(self) -> OutputLock:
        try:
            import fcntl
        except ImportError:  # not POSIX: no locking (documented)
            return self
        if self.path.is_symlink():
            raise UsageError(f"{self.path} is a symbolic link; remove it (hessian-probe keeps its lock there)")
        handle = open(self.path, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            holder = handle.read().strip()
            handle.close()
            raise UsageError(f"another hessian-probe run{f' (pid {holder})' if holder else ''} is writing to "
                             f"{self.path.parent}; wait for it to finish or choose another --out") from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        self._handle = handle
        return self

    def release(self) -> None:
        if self._handle is not None:
            self.path.unlink(missing_ok=True)
            self._handle.close()
            self._handle = None


class Manifest:
    """The files hessian-probe runs wrote in one folder (by name)."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / MANIFEST_FILE

    def names(self) -> set[str]:
        try:
            return set(json.loads(self.path.read_text())["files"])
        except (OSError, ValueError, KeyError, TypeError):
            return set()

    def add(self, names: Iterable[str]) -> None:
        merged = sorted(self.names() | {n for n in names if n})
        write_text_atomically(self.path, json.dumps({"written_by": "hessian-probe", "files": merged}, indent=1) + "\n")


def refuse_foreign(folder: Path, names: Iterable[str]) -> None:
    """Refuse (one line) to replace any of ``names`` in ``folder`` that the manifest does not list."""
    ours = Manifest(folder).names()
    for name in names:
        present = (folder / name).exists() or (folder / name).is_symlink()
        if present and name not in ours:
            raise UsageError(f"{folder / name} was not written by hessian-probe (it is not in {MANIFEST_FILE} "
                                 "there) and this run would replace it: move it away or choose another --out")
