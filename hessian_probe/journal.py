"""Finished work saved as it finishes, so that an interrupted run resumes where it stopped.

A long run is made of independent *pieces*: a block of SLQ probes, the extremal eigenvalues,
the trace, one batch of a batch-size scan, one measured threshold. Each piece depends only on
its own seed, never on which pieces ran before, so a resumed run gives the numbers of an
uninterrupted one. A piece is written to ``OUT/partial/<key>.pt`` when it finishes: to a
temporary name first, then renamed, so a kill leaves either the whole piece or nothing. The
files hold only containers, numbers and tensors (results.to_state) and are read back with
``torch.load(weights_only=True)``: no code runs on loading them.

``OUT/partial/run.json`` holds the run's fingerprint: the command, every option that changes
the numbers, the digests of the checkpoint and data files, and the process count. A resume
whose fingerprint differs is refused. A finished run removes ``partial/``.

Under torchrun, a piece that all ranks compute together (``shared``) is looked up and saved by
rank 0 and its result broadcast, so that every rank skips or computes it alike; a piece that one
rank computes alone (``own``: spread work) is looked up and saved by that rank.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch

from . import distributed
from .errors import UsageError
from .files import write_atomically, write_text_atomically
from .results import from_state, to_state

R = TypeVar("R")
PARTIAL = "partial"


class Journal:
    """Saved pieces of one run in ``folder`` (None: a journal that saves nothing, for library calls)."""

    def __init__(self, folder: Path | None = None) -> None:
        self.folder = folder
        self.resumed = 0  # pieces read back instead of computed
        self.saved = 0

    @classmethod
    def start(cls, out_dir: Path, fingerprint: dict[str, Any], *, resume: bool) -> Journal:
        """The journal of a run writing to ``out_dir``: continued when ``resume`` and the saved
        fingerprint matches (refused when it does not), else started afresh."""
        folder = out_dir / PARTIAL
        fingerprint = json.loads(json.dumps(fingerprint, default=str))

        def prepare() -> None:  # rank 0; the others wait for it (and stop alike if it refuses)
            saved = folder / "run.json"
            if resume and saved.is_file():
                try:
                    before = json.loads(saved.read_text())
                except (ValueError, OSError):
                    raise UsageError(f"--resume: {saved} is damaged, so the saved pieces cannot be trusted to "
                                     "belong to this run; pass --overwrite to start afresh") from None
                _check_same_run(before, fingerprint, out_dir)
            else:
                shutil.rmtree(folder, ignore_errors=True)
                folder.mkdir(parents=True)
                write_text_atomically(saved, json.dumps(fingerprint, indent=1, sort_keys=True) + "\n")

        distributed.on_main(prepare)
        return cls(folder)

    def _path(self, key: str) -> Path:
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", key):
            raise ValueError(f"bad piece key {key!r}")
        return self.folder / f"{key}.pt"

    def _load(self, key: str) -> Any | None:
        if self.folder is None or not self._path(key).is_file():
            return None
        try:
            return from_state(torch.load(self._path(key), weights_only=True))
        except Exception:  # a damaged piece is computed again
            return None

    def _save(self, key: str, value: Any) -> None:
        if self.folder is None:
            return
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        state = to_state(value)
        write_atomically(path, lambda temporary: torch.save(state, temporary))  # the piece is whole or absent
        self.saved += 1

    def own(self, key: str, compute: Callable[[], R]) -> R:
        """A piece this process computes alone: read back if saved, else computed and saved."""
        value = self._load(key)
        if value is not None:
            self.resumed += 1
            return value
        value = compute()
        self._save(key, value)
        return value

    def shared(self, key: str, compute: Callable[[], R]) -> R:
        """A piece all ranks compute together: rank 0 decides whether it is saved already."""
        if not distributed.active():
            return self.own(key, compute)
        value = distributed.on_main(lambda: self._load(key))
        if value is not None:
            self.resumed += 1
            return value
        value = compute()
        if distributed.is_main():
            self._save(key, value)
        return value

    def finish(self) -> None:
        """The run's outputs are written: its pieces are no longer needed."""
        if self.folder is not None and distributed.is_main():
            shutil.rmtree(self.folder, ignore_errors=True)


NO_JOURNAL = Journal()


def saved_pieces(out_dir: Path) -> int:
    """How many finished pieces an interrupted run left in ``out_dir``."""
    folder = out_dir / PARTIAL
    return len(list(folder.glob("*.pt"))) if folder.is_dir() else 0


def _check_same_run(saved: dict[str, Any], now: dict[str, Any], out_dir: Path) -> None:
    differences = [key for key in sorted(set(saved) | set(now)) if saved.get(key) != now.get(key)]
    if differences:
        shown = "; ".join(f"{k}: {_brief(saved.get(k))} then, {_brief(now.get(k))} now" for k in differences[:3])
        raise UsageError(f"--resume: {out_dir} holds an interrupted run with other inputs or settings ({shown}); "
                         "rerun exactly that command, or pass --overwrite to start afresh")


def _brief(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."
