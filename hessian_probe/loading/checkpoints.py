"""Checkpoints: read a state dict (and any optimizer state) safely, and fit it to a model.

Formats: ``torch.save`` files (``.pt``, ``.pth``, ``.bin``, Lightning ``.ckpt``) read with
``weights_only=True``, ``.safetensors``, and Hugging Face ``save_pretrained`` folders
(loading/pretrained.py). A bare state dict, or a dict wrapping one under
``state_dict``, ``model_state_dict`` or ``model``, is accepted; Lightning's ``model.`` prefix and
DataParallel's ``module.`` prefix are recognised. A whole pickled ``nn.Module`` needs ``trust=True``
because unpickling it can run arbitrary code.
"""

from __future__ import annotations

import importlib
import pickle
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import InputError, UsageError, first_line
from ..imports import current_folder_on_path
from .pretrained import CONFIG_FILE, is_pretrained_folder, load_pretrained

STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model", "module", "net")
OPTIMIZER_KEYS = ("optimizer_state_dict", "optimizer", "optim", "optimizer_states")
STRIPPABLE_PREFIXES = ("model.", "module.", "_orig_mod.", "net.")


@dataclass(frozen=True)
class Checkpoint:
    """What a checkpoint file held: weights, or a trusted whole module, and optimizer state."""

    path: Path
    state_dict: dict[str, Tensor] | None = None
    module: nn.Module | None = None
    optimizer_state: dict[str, Any] | None = field(default=None, repr=False)
    found_under: str = ""  # where the weights were: "" (top level), "state_dict", ...
    step: int | None = None  # the training step (or epoch) it carries: STEP_KEYS, the first found
    hyper_parameters: dict[str, Any] | None = field(default=None, repr=False)  # Lightning's, for the constructor


def load_checkpoint(path: str | Path, *, trust: bool = False, safe_globals: Sequence[str] = ()) -> Checkpoint:
    if not str(path):
        raise InputError("checkpoint not found: '' (an empty path)")
    path = Path(path)
    if is_pretrained_folder(path):
        return Checkpoint(path, module=load_pretrained(path, trust=trust), found_under="save_pretrained")
    if path.is_dir() and str(path) == ".":  # also what an empty --checkpoint '' becomes
        raise InputError(f"checkpoint not found: {str(path)!r} is the current folder, which holds no {CONFIG_FILE}")
    if path.is_dir():
        raise UsageError(f"checkpoint {path} is a directory without a {CONFIG_FILE}: give a checkpoint file, or a "
                         "Hugging Face save_pretrained folder")
    if not path.is_file():
        raise InputError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors" or _looks_like_safetensors(path):
        return Checkpoint(path, state_dict=_read_safetensors(path))
    content = _torch_load(path, trust, allowed_globals(safe_globals))
    if isinstance(content, nn.Module):
        return Checkpoint(path, module=content)
    if not isinstance(content, dict):
        raise InputError(f"checkpoint {path} holds a {type(content).__name__}, not a state dict or a dict wrapping one")
    step = training_step(content)
    hparams = content.get("hyper_parameters")
    hparams = dict(hparams) if isinstance(hparams, dict) and all(isinstance(k, str) for k in hparams) else None
    optimizer = next((content[k] for k in OPTIMIZER_KEYS if isinstance(content.get(k), (dict, list))), None)
    if isinstance(optimizer, list):  # Lightning keeps one state per optimizer
        optimizer = optimizer[0] if optimizer else None
    for key in STATE_DICT_KEYS:
        inner = content.get(key)
        if isinstance(inner, nn.Module):
            return Checkpoint(path, module=inner, optimizer_state=optimizer, found_under=key, step=step,
                              hyper_parameters=hparams)
        if isinstance(inner, dict) and (weights := _tensors_of(inner)):
            return Checkpoint(path, state_dict=weights, optimizer_state=optimizer, found_under=key, step=step,
                              hyper_parameters=hparams)
    if weights := _tensors_of(content):
        return Checkpoint(path, state_dict=weights, optimizer_state=optimizer, step=step, hyper_parameters=hparams)
    raise InputError(
        f"checkpoint {path} has no state dict: top-level keys are {_sample(content) or '(none)'}; "
        f"expected tensors, or one of {', '.join(STATE_DICT_KEYS)} holding them"
    )


STEP_KEYS = ("global_step", "step", "epoch")  # Lightning writes global_step and epoch


def training_step(content: dict) -> int | None:
    """The step a checkpoint dict carries at its top level (an int, or a one-element integer tensor)."""
    for key in STEP_KEYS:
        value = content.get(key)
        if isinstance(value, Tensor) and value.numel() == 1 and not value.is_floating_point():
            value = int(value.item())
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def _tensors_of(d: dict) -> dict[str, Tensor]:
    """The tensor (or NumPy array) entries of a dict with string keys; other entries (an epoch
    counter, a config) are not weights and are left out. Empty when there are none."""
    if not all(isinstance(k, str) for k in d):
        return {}
    return {k: torch.as_tensor(v) if isinstance(v, np.ndarray) else v
            for k, v in d.items() if isinstance(v, (Tensor, np.ndarray))}


def _looks_like_safetensors(path: Path) -> bool:
    """A safetensors file starts with an 8-byte little-endian header length, then a JSON object."""
    with path.open("rb") as fh:
        head = fh.read(9)
    return len(head) == 9 and head[8:9] == b"{" and 0 < int.from_bytes(head[:8], "little") < path.stat().st_size


def _read_safetensors(path: Path) -> dict[str, Tensor]:
    try:
        from safetensors import SafetensorError
        from safetensors.torch import load_file
    except ImportError:  # pragma: no cover - safetensors is a dependency
        raise InputError("reading .safetensors needs the safetensors package: pip install safetensors") from None
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise InputError(f"cannot read {path} as safetensors (corrupt or truncated?): {exc}") from None


def allowed_globals(names: Sequence[str]) -> list[Any]:
    """The objects ``module.Name`` (``argparse.Namespace``) for torch.serialization.safe_globals:
    importing the module named is the user's explicit choice; nothing in the file runs."""
    found = []
    for name in names:
        module_name, _, attribute = name.rpartition(".")
        if not module_name or not attribute:
            raise UsageError(f"--safe-globals {name!r}: expected module.Name, e.g. argparse.Namespace")
        try:
            found.append(getattr(importlib.import_module(module_name), attribute))
        except (ImportError, AttributeError) as exc:
            raise UsageError(f"--safe-globals {name!r}: {first_line(exc)}") from None
    return found


def _torch_load(path: Path, trust: bool, allowed: Sequence[Any] = ()) -> Any:
    if trust:
        current_folder_on_path()  # a pickled model's class may live in the user's folder
    try:
        with torch.serialization.safe_globals(list(allowed)):
            return torch.load(path, map_location="cpu", weights_only=not trust)
    except pickle.UnpicklingError as exc:
        found = None if trust else (_unsafe_globals(path, allowed) or refused_global(exc))
        if found and not trust:
            raise InputError(
                f"checkpoint {path} contains pickled Python objects ({found}); they can run code when "
                "loaded, so they are refused: re-save with torch.save(model.state_dict(), ...), "
                + (f"allow these classes alone with --safe-globals {found.replace(', ', ',')}, " if _harmless(found)
                   else "") + "or pass --trust-checkpoint if you trust the file"
            ) from None
        detail = re.search(r"WeightsUnpickler error: ([^\n]*)", str(exc))
        raise InputError(f"cannot read checkpoint {path}: not a PyTorch file, or corrupt or truncated"
                         + (f" ({detail.group(1).strip()})" if detail else "")) from None
    except (ModuleNotFoundError, AttributeError) as exc:
        if not trust:
            raise InputError(f"cannot read checkpoint {path}: not a PyTorch file, or corrupt "
                             f"({first_line(exc)})") from None
        raise InputError(f"checkpoint {path} pickles a model whose code cannot be found ({first_line(exc)}): run from "
                         "the folder holding its module, or install it") from None
    except Exception as exc:  # torch.load fails in many ways on foreign or damaged bytes
        raise InputError(
            f"cannot read checkpoint {path}: not a PyTorch file, or corrupt or truncated ({first_line(exc)})"
        ) from None


RISKY_MODULES = ("builtins", "os", "posix", "nt", "subprocess", "sys", "importlib", "runpy", "shutil", "pickle",
                 "marshal", "types", "functools", "operator", "codecs", "socket", "ctypes", "pty")


def _harmless(found: str) -> bool:
    """Only classes outside the modules that reach the system are worth suggesting for --safe-globals
    (argparse.Namespace, a config class); never exec, eval, os.system and their like."""
    names = [n.strip() for n in found.split(",")]
    return all(n.rpartition(".")[2][:1].isupper() and n.split(".")[0] not in RISKY_MODULES for n in names)


def _unsafe_globals(path: Path, allowed: Sequence[Any] = ()) -> str | None:
    """The globals a pickle names that weights_only refuses (and --safe-globals does not allow),
    read by torch without running them (torch.serialization.get_unsafe_globals_in_checkpoint; zip
    checkpoints only)."""
    try:
        found = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:
        return _legacy_pickle_globals(path)
    names = {f"{getattr(g, '__module__', '')}.{getattr(g, '__qualname__', '')}" for g in allowed}
    found = [name for name in found if name not in names]
    return ", ".join(found[:3]) if found else None


def _legacy_pickle_globals(path: Path) -> str | None:
    """Globals named by a plain (non-zip) pickle, found with pickletools without executing anything."""
    import pickletools

    try:
        with path.open("rb") as fh:
            names, strings = [], []
            for opcode, arg, _ in pickletools.genops(fh):
                if opcode.name in ("GLOBAL", "INST") and isinstance(arg, str):
                    names.append(arg.replace(" ", "."))
                elif opcode.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE") and isinstance(arg, str):
                    strings = (strings + [arg])[-2:]
                elif opcode.name == "STACK_GLOBAL" and len(strings) == 2:
                    names.append(".".join(strings))
    except Exception:
        return None
    plain = ("torch.", "collections.OrderedDict", "_codecs.encode", "builtins.set", "builtins.slice")
    unsafe = [n for n in dict.fromkeys(names) if not n.startswith(plain)]
    return ", ".join(unsafe[:3]) or None


def refused_global(exc: BaseException) -> str | None:
    """The class or function torch's weights-only unpickler refused (``torch.nn.Linear``, ...), if any."""
    found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(exc))
    return found.group(1) if found else None


def fit_state_dict(model: nn.Module, state_dict: dict[str, Tensor]) -> None:
    """Load ``state_dict`` into ``model`` after checking keys, shapes and finiteness; errors name the keys."""
    expected = model.state_dict()
    if not expected:  # nothing to fit: make_problem says the model has no parameters
        return
    tied = tied_names(model)
    state_dict = _strip_prefix(state_dict, set(expected), tied)
    missing = [k for k in expected if k not in state_dict and not any(t in state_dict for t in tied.get(k, ()))]
    unexpected = [k for k in state_dict if k not in expected]
    if missing or unexpected:
        parts = [f"{len(missing)} missing ({_sample(missing)})"] if missing else []
        parts += [f"{len(unexpected)} unexpected ({_sample(unexpected)})"] if unexpected else []
        raise InputError(f"the checkpoint does not fit the model: keys {'; '.join(parts)}; "
                         "check --model and --model-arg")
    for name, others in tied.items():
        for other in others:
            if name in state_dict and other in state_dict and not torch.equal(state_dict[name], state_dict[other]):
                raise InputError(f"the checkpoint holds different values for {name!r} and {other!r}, which the model "
                                 "ties (one tensor): it comes from an untied model; build the model untied (e.g. "
                                 "tie_word_embeddings=False in its config)")
    for name, value in state_dict.items():
        if value.shape != expected[name].shape:
            raise InputError(
                f"shape mismatch for {name!r}: checkpoint {tuple(value.shape)}, model {tuple(expected[name].shape)}; "
                "check --model-arg"
            )
        wanted = expected[name]
        if wanted.is_floating_point() and not value.is_floating_point():
            raise InputError(f"the checkpoint stores {name!r} as {str(value.dtype).removeprefix('torch.')}, but the "
                             f"model's {name!r} is {str(wanted.dtype).removeprefix('torch.')}: it would be cast (and a "
                             "complex value would lose its imaginary part); re-save the weights as floats")
        if value.is_floating_point() and not torch.isfinite(value).all():
            count = int((~torch.isfinite(value)).sum())
            raise InputError(f"the checkpoint has {count} non-finite value(s) (NaN or inf) in {name!r}")
    model.load_state_dict(state_dict, strict=not any(k not in state_dict for k in expected))


def tied_names(model: nn.Module) -> dict[str, list[str]]:
    """For each name of a parameter that is one tensor under several names (tied weights, such as a
    language model's input embedding and output layer), the other names: torch's own tie, the
    same Parameter object, not a guess from the names. A checkpoint may hold one of them only."""
    owners: dict[int, list[str]] = {}
    for name, parameter in model.named_parameters(remove_duplicate=False):
        owners.setdefault(id(parameter), []).append(name)
    return {name: [n for n in names if n != name] for names in owners.values() if len(names) > 1 for name in names}


def _strip_prefix(state_dict: dict[str, Tensor], wanted: set[str],
                  tied: dict[str, list[str]] | None = None) -> dict[str, Tensor]:
    """The weights under the prefix that makes the keys fit the model (a Lightning module's
    ``model.`` or ``backbone.``, DataParallel's ``module.``, torch.compile's ``_orig_mod.``): the
    prefix is read off the keys, not taken from a list -- each checkpoint key that ends with the
    model's longest key proposes the part before it, and the proposal under which the keys fit is
    taken (other entries of the checkpoint, e.g. a loss module's, are then left out); two that fit
    are an error."""
    tied = tied or {}

    def fits(keys: set[str]) -> bool:
        return keys <= wanted and all(k in keys or any(t in keys for t in tied.get(k, ())) for k in wanted)

    if fits(set(state_dict)):
        return state_dict
    anchor = max(wanted, key=len, default="")  # the longest key proposes the fewest prefixes
    proposals = dict.fromkeys(k[: len(k) - len(anchor)] for k in state_dict
                              if anchor and k.endswith(anchor) and (k == anchor or k[-len(anchor) - 1] == "."))
    found = {}
    for prefix in list(proposals) + [p for p in STRIPPABLE_PREFIXES if p not in proposals]:
        stripped = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
        if stripped and fits(set(stripped)):
            found[prefix] = stripped
    if len(found) > 1:
        raise InputError(f"the checkpoint holds weights that fit the model under {len(found)} prefixes "
                         f"({_sample(found)}): which one is meant is not clear; save that module's state_dict alone")
    return next(iter(found.values()), state_dict)


def _sample(keys, n: int = 3) -> str:
    keys = list(keys)
    shown = ", ".join(repr(k) for k in keys[:n])
    return shown + (f", ... ({len(keys) - n} more)" if len(keys) > n else "")
