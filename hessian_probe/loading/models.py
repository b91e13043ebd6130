"""Build the model a checkpoint belongs to: a built-in, a torchvision name, or the user's factory."""

from __future__ import annotations

import ast
import inspect
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from torch import nn

from ..errors import InputError, UsageError, first_line
from ..imports import import_object, is_import_spec
from .builtin_models import mlp, small_cnn
from .pretrained import build_from_config, is_pretrained_folder

BUILTIN_MODELS: dict[str, Callable[..., nn.Module]] = {"mlp": mlp, "cnn": small_cnn}


def parse_model_args(pairs: Iterable[str], option: str = "--model-arg") -> dict[str, Any]:
    """``key=value`` strings to keyword arguments; values are Python literals when they parse as one
    (``hidden=64``, ``widths=(128, 64)``, ``bias=False``), else strings (``activation=relu``)."""
    args: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key.strip().isidentifier():
            raise UsageError(f"{option} expects key=value, got {pair!r}")
        try:
            args[key.strip()] = ast.literal_eval(text.strip())
        except (ValueError, SyntaxError):
            args[key.strip()] = text.strip()
    return args


def build_model(spec: str, args: Mapping[str, Any] | None = None, *, offered: Mapping[str, Any] | None = None,
                checkpoint_path: str | None = None) -> nn.Module:
    """``mlp``/``cnn`` (built-ins), ``torchvision:NAME`` (or a torchvision model name), a Hugging
    Face save_pretrained folder (built from its config, fresh weights), or a factory
    ``package.module:callable`` / ``file.py:callable`` called with ``args``. A factory also gets
    those of ``offered`` (a Lightning checkpoint's ``hyper_parameters``) that its signature names,
    ``args`` winning; a ``load_from_checkpoint`` (Lightning's classmethod) gets ``checkpoint_path``."""
    args = dict(args or {})
    if spec.startswith("builtin:"):
        spec = spec.removeprefix("builtin:")
    if is_pretrained_folder(spec):
        if args:
            raise InputError(f"--model-arg does not apply to a Hugging Face folder ({spec}): edit its config.json")
        return build_from_config(spec)
    if spec in BUILTIN_MODELS:
        return _call(BUILTIN_MODELS[spec], args, f"built-in model {spec!r}")
    if spec.startswith("torchvision:") or not is_import_spec(spec):
        return _torchvision_model(spec.removeprefix("torchvision:"), args)
    factory = import_object(spec, "model")
    if not callable(factory):
        raise InputError(f"model factory {spec!r} is not callable")
    if getattr(factory, "__name__", "") == "load_from_checkpoint" and checkpoint_path is not None:
        # Lightning's restricted classmethod shows `cls` in its signature: no pre-check of the arguments
        args = {"checkpoint_path": checkpoint_path, "map_location": "cpu", **args}
        return _call(factory, args, f"model factory {spec!r}", check=False)
    if offered:
        args = {**accepted(factory, offered), **args}
    return _call(factory, args, f"model factory {spec!r}")


def accepted(factory: Callable[..., Any], offered: Mapping[str, Any]) -> dict[str, Any]:
    """The entries of ``offered`` that ``factory`` takes as keyword arguments (all with **kwargs)."""
    try:
        parameters = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return {}
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return dict(offered)
    names = {p.name for p in parameters if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                                       inspect.Parameter.KEYWORD_ONLY)}
    return {k: v for k, v in offered.items() if k in names}


def _call(factory: Callable[..., Any], args: dict[str, Any], what: str, check: bool = True) -> nn.Module:
    try:
        if check:
            inspect.signature(factory).bind(**args)
    except TypeError as exc:
        raise InputError(f"{what} does not accept the arguments {args}: {first_line(exc)}") from None
    except ValueError:  # no signature available (some builtins): let the call decide
        pass
    try:
        model = factory(**args)
    except Exception as exc:
        raise InputError(f"{what} failed: {first_line(exc)}") from exc
    if not isinstance(model, nn.Module):
        raise InputError(f"{what} returned a {type(model).__name__}, not a torch.nn.Module")
    return model


def _torchvision_model(name: str, args: dict[str, Any]) -> nn.Module:
    builtins = ", ".join(BUILTIN_MODELS)
    try:
        import torchvision.models
    except ImportError:
        raise InputError(
            f"unknown model {name!r}: use a built-in ({builtins}), a factory package.module:callable "
            "or file.py:callable, or install torchvision for its model names"
        ) from None
    if name not in torchvision.models.list_models():
        raise InputError(f"unknown model {name!r}: not a built-in ({builtins}) nor a torchvision model name")
    return _call(lambda **kw: torchvision.models.get_model(name, weights=None, **kw), args,
                 f"torchvision model {name!r}")
