"""Finished work saved as it finishes, so that an interrupted run resumes where it stopped.

A long run is made of independent *pieces*: a block of SLQ probes, the extremal eigenvalues,
the trace, one batch of a batch-size scan, one measured threshold. Each piece depends only on
its own seed, never on which pieces ran before, so a resumed run gives the numbers of an
uninterrupted one. A piece is written to ``OUT/partial/<key>.pt`` when it finishes: to a
temporary name first, then renamed, so a kill leaves either the whole piece or nothing. The
files hold only containers, numbers and tensors (results.to_state) and are read back with
``torch.load(weights_only=True)``: no code runs on loading them.

``OUT/partial/run.json`` holds the run's fingerprint: the command, every option that changes
the numbers, the digests of the checkpoint, data and user code files, and the process count,
plus a random run id. A resume whose fingerprint differs is refused. Each piece carries the run
id, its own key and the sha256 of its payload: a piece from another run, one copied over
another's name, or one with a flipped bit is computed again, never mixed in. Only files that are
provably ours (run.json, pieces in this format, our temporary files) are ever removed: a
finished run removes them and ``partial/`` itself only if nothing else is left there.

Under torchrun, a piece that all ranks compute together (``shared``) is looked up and saved by
rank 0 and its result broadcast, so that every rank skips or computes it alike; a piece that one
rank computes alone (``own``: spread work) is looked up and saved by that rank.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch

from ..errors import UsageError
from ..files import is_temporary, write_atomically, write_text_atomically
from ..results import from_state, to_state
from . import torchrun as distributed

R = TypeVar("R")
PARTIAL = "partial"
RUN_FILE = "run.json"
PIECE_FORMAT = "hessian-probe-piece/2"


class Journal:
    """Saved pieces of one run in ``folder`` (None: a journal that saves nothing), a protocols.Pieces."""

    def __init__(self, folder: Path | None = None, run_id: str = "") -> None:
        self.folder = folder
        self.run_id = run_id
        self.resumed = 0  # pieces read back instead of computed
        self.rejected = 0  # pieces found but not this run's, or damaged: computed again
        self.saved = 0

    @classmethod
    def start(cls, out_dir: Path, fingerprint: dict[str, Any], *, resume: bool) -> Journal:
        """The journal of a run writing to ``out_dir``: continued when ``resume`` and the saved
        fingerprint matches (refused when it does not), else started afresh with a new run id."""
        folder = out_dir / PARTIAL
        fingerprint = json.loads(json.dumps(fingerprint, default=str))

        def prepare() -> str:  # rank 0; the others wait for it (and stop alike if it refuses)
            saved = folder / RUN_FILE
            if resume and saved.is_file():
                try:
                    before = json.loads(saved.read_text())
                    run_id = before.pop("run_id")
                except (ValueError, OSError, KeyError, AttributeError, TypeError):
                    raise UsageError(f"--resume: {saved} is damaged or from an older version, so the saved pieces "
                                     "cannot be trusted to belong to this run; pass --overwrite to start "
                                     "afresh") from None
                _check_same_run(before, fingerprint, out_dir)
                return str(run_id)
            remove_own_pieces(folder)
            folder.mkdir(parents=True, exist_ok=True)
            run_id = uuid.uuid4().hex
            write_text_atomically(saved, json.dumps({**fingerprint, "run_id": run_id}, indent=1, sort_keys=True) + "\n")
            return run_id

        return cls(folder, distributed.on_main(prepare))

    def _path(self, key: str) -> Path:
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", key):
            raise ValueError(f"bad piece key {key!r}")
        return self.folder / f"{key}.pt"

    def _load(self, key: str) -> Any | None:
        if self.folder is None or not self._path(key).is_file():
            return None
        try:
            piece = read_piece(self._path(key))
            if piece is None or piece["run_id"] != self.run_id or piece["key"] != key:
                raise ValueError("not this run's piece")
            return from_state(torch.load(io.BytesIO(piece["payload"]), weights_only=True))
        except Exception:  # another run's, a copy of another piece, or damaged: computed again
            self.rejected += 1
            return None

    def _save(self, key: str, value: Any) -> None:
        if self.folder is None:
            return
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        torch.save(to_state(value), buffer)
        payload = buffer.getvalue()
        piece = {"format": PIECE_FORMAT, "run_id": self.run_id, "key": key,
                 "sha256": hashlib.sha256(payload).hexdigest(),
                 "payload": torch.frombuffer(bytearray(payload), dtype=torch.uint8)}
        write_atomically(path, lambda temporary: torch.save(piece, temporary))  # the piece is whole or absent
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
            remove_own_pieces(self.folder)


def _piece_in_format(path: Path) -> dict[str, Any] | None:
    """The file at ``path`` if it loads (weights_only: no code runs) as a piece in this format,
    checksum not yet verified; else None."""
    try:
        piece = torch.load(path, weights_only=True)
    except Exception:
        return None
    if not (isinstance(piece, dict) and piece.get("format") == PIECE_FORMAT
            and isinstance(piece.get("payload"), torch.Tensor) and piece["payload"].dtype == torch.uint8):
        return None
    return piece


def read_piece(path: Path) -> dict[str, Any] | None:
    """The piece in ``path`` with its payload as bytes, checksum verified; None if the file is not a
    whole piece in this format."""
    piece = _piece_in_format(path)
    if piece is None:
        return None
    payload = piece["payload"].numpy().tobytes()
    if hashlib.sha256(payload).hexdigest() != piece.get("sha256"):
        return None
    return {**piece, "payload": payload}


def _is_own_file(path: Path) -> bool:
    """Files this module writes in partial/: run.json (a fingerprint with a run id), pieces in
    this format (checksum intact or not: the format marker is enough), temporary files."""
    if not path.is_file() or path.is_symlink():
        return False
    if path.name == RUN_FILE:
        try:
            return "run_id" in json.loads(path.read_text())
        except (ValueError, OSError, TypeError):
            return False
    if is_temporary(path):
        return True
    return path.suffix == ".pt" and _piece_in_format(path) is not None


def remove_own_pieces(folder: Path) -> None:
    """Remove this tool's files from ``folder``, and the folder if nothing else is left there."""
    if not folder.is_dir() or folder.is_symlink():
        return
    for path in folder.iterdir():
        if _is_own_file(path):
            path.unlink(missing_ok=True)
    if not any(folder.iterdir()):
        folder.rmdir()


NO_JOURNAL = Journal()  # saves nothing (older name; analyses now default to protocols.COMPUTE_NOW)


def saved_pieces(out_dir: Path) -> int:
    """How many finished pieces an interrupted run left in ``out_dir``."""
    folder = out_dir / PARTIAL
    return len([p for p in folder.glob("*.pt") if _is_own_file(p)]) if folder.is_dir() else 0


def _check_same_run(saved: dict[str, Any], now: dict[str, Any], out_dir: Path) -> None:
    differences = [key for key in sorted(set(saved) | set(now)) if saved.get(key) != now.get(key)]
    if differences:
        shown = "; ".join(f"{k}: {_brief(saved.get(k))} then, {_brief(now.get(k))} now" for k in differences[:3])
        raise UsageError(f"--resume: {out_dir} holds an interrupted run with other inputs or settings ({shown}); "
                         "rerun exactly that command, or pass --overwrite to start afresh")


def _brief(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."
