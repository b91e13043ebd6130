"""A run's record: the JSON form of a typed result plus the ``provenance`` block saying exactly how
it was produced (environment, command or config, inputs with file digests, device, dtype, seed,
parameters, timings), written atomically."""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import platform
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from .. import __version__
from ..files import write_text_atomically
from ..results import to_jsonable
from ..runtime import torchrun as distributed


def file_digest(path: str | Path) -> str:
    """sha256 of a file, to tie a result to the exact checkpoint it came from; of a folder (a
    save_pretrained model), the sha256 of its files' relative names and digests, in sorted order."""
    path = Path(path)
    if path.is_dir():
        listing = sorted(p for p in path.rglob("*") if p.is_file())
        return hashlib.sha256("".join(f"{p.relative_to(path).as_posix()}\0{file_digest(p)}\n"
                                      for p in listing).encode()).hexdigest()
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def environment() -> dict[str, Any]:
    """Versions, platform, start time and, when run from the shell, the command line."""
    from_shell = Path(sys.argv[0]).name in ("hessian-probe", "__main__.py")
    return {
        "version": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "started_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "argv": ["hessian-probe", *sys.argv[1:]] if from_shell else None,
    }


def input_digests(spec: Any) -> dict[str, str | None]:
    """sha256 of the checkpoint and of the data file (None for built-in or factory data)."""
    data_file = Path(spec.data.removeprefix("tensors:"))
    return {"checkpoint_sha256": file_digest(spec.checkpoint),
            "data_sha256": file_digest(data_file) if data_file.is_file() else None}


def provenance(env: dict[str, Any], command: str, config: Any, spec: Any, loaded: Any,
               timings: dict[str, float], digests: dict[str, str | None] | None = None) -> dict[str, Any]:
    """How a record was made: environment, command or config, every input (with file digests),
    device, dtype, seed, the parameters measured, and timings."""
    problem = loaded.problem
    return {
        **env,
        "command": command,
        "config": config,
        "inputs": {
            **dataclasses.asdict(spec),
            **(digests or input_digests(spec)),
            "weights_found_under": loaded.checkpoint.found_under,
            "optimizer_state": loaded.checkpoint.optimizer_state is not None,
            "loss_value": problem.loss_value(),
        },
        "device": str(problem.device),
        "processes": distributed.describe(),
        "dtype": str(problem.dtype).removeprefix("torch."),
        "seed": spec.seed,
        "parameters": list(problem.params),
        "timings": timings,
    }


def write_json(record: Mapping[str, Any], path: Path) -> None:
    write_text_atomically(path, json.dumps(to_jsonable(record), indent=1, allow_nan=False) + "\n")


def read_json(path: Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text())
