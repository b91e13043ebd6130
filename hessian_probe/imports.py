"""Import user code named as ``package.module:attribute`` or ``path/to/file.py:attribute``.

Like uvicorn, the current directory is importable, so ``--model mymodels:make_net`` finds
``./mymodels.py`` without installing anything.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from pathlib import Path
from typing import Any

from .errors import InputError, first_line

IMPORTED_FILES: set[Path] = set()  # the source files of the user modules imported


def imported_code_digest() -> str | None:
    """sha256 over the source files of every user module imported so far (model, loss and data
    factories), so that a resume after the code changed is refused; None when none was imported."""
    import hashlib

    if not IMPORTED_FILES:
        return None
    digest = hashlib.sha256()
    for path in sorted(str(p) for p in IMPORTED_FILES):
        digest.update(path.encode() + b"\0")
        try:
            digest.update(Path(path).read_bytes())
        except OSError:
            digest.update(b"unreadable")
    return digest.hexdigest()


def is_import_spec(spec: str) -> bool:
    """True for ``module:attribute`` (a ``file.py`` module counts too), as opposed to a plain name."""
    module, sep, attribute = spec.rpartition(":")
    return bool(sep and module and attribute) and (module.endswith(".py") or all(
        part.isidentifier() for part in module.split(".")))


def import_object(spec: str, what: str) -> Any:
    """The object ``attribute`` of ``module`` in ``module:attribute`` (``what`` names it in errors)."""
    if not is_import_spec(spec):
        raise InputError(f"{what} {spec!r} is not of the form package.module:name or file.py:name")
    module_name, _, attribute = spec.rpartition(":")
    try:
        module = _load_file(Path(module_name)) if module_name.endswith(".py") else _import(module_name)
    except InputError:
        raise
    except Exception as exc:  # the user's module failed while importing: say where, not a traceback
        raise InputError(f"cannot import {what} module {module_name!r}: {first_line(exc)}") from exc
    try:
        obj = module
        for part in attribute.split("."):
            obj = getattr(obj, part)
    except AttributeError:
        raise InputError(f"{what} module {module_name!r} has no attribute {attribute!r}") from None
    source = getattr(module, "__file__", None)
    if source:
        IMPORTED_FILES.add(Path(source).resolve())
    return obj


def current_folder_on_path() -> str:
    """Put the current directory on sys.path (first), where user code lives, and keep it there: a
    factory, a forward or a DataLoader worker may import a sibling module long after the import
    that found it. Returns the directory; a no-op when it is there already."""
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    return cwd


def _import(name: str) -> Any:
    cwd = current_folder_on_path()
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name and name.startswith(exc.name):
            raise InputError(f"no module named {exc.name!r} (looked in the current directory "
                             f"{cwd} and the installed packages)") from None
        raise


def _load_file(path: Path) -> Any:
    if not path.is_file():
        raise InputError(f"file not found: {path}")
    name = f"hessian_probe_user_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
