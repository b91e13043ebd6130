"""Hugging Face models saved by ``save_pretrained``: a folder with ``config.json`` and its weights
(``model.safetensors``, sharded or not), built by transformers (an optional dependency).

    hessian-probe eigs --checkpoint my-gpt2/ --data tokens.pt --loss causal_lm

The folder is read by ``from_pretrained(local_files_only=True)``: its safetensors hold no code,
transformers ties the weights its config ties (GPT-2's ``lm_head.weight`` is
``transformer.wte.weight`` and is not in the file), and nothing is downloaded. A config whose
model needs custom code (``auto_map``) is refused unless the user trusts the folder.

The model is wrapped so that the rest of hessian-probe sees ``forward(x) -> logits``: ``x`` holds
``input_ids`` (N, T), or ``input_ids`` and ``attention_mask`` stacked as (N, 2, T) (what
``--data`` makes of a file with those keys); the ``ModelOutput``'s ``logits`` are returned. The
wrapper shares the model's parameter, buffer and submodule tables, so that parameter names are
the model's own (``transformer.h.0.attn.c_attn.weight``, no prefix) and its checkpoints fit.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from ..errors import InputError, first_line

CONFIG_FILE = "config.json"


def is_pretrained_folder(path: str | Path) -> bool:
    """A folder holding a save_pretrained config."""
    path = Path(path)
    return path.is_dir() and (path / CONFIG_FILE).is_file()


class PretrainedLogits(nn.Module):
    """``forward(x)`` = the model's logits for input_ids x (N, T), or for x = (input_ids,
    attention_mask) stacked as (N, 2, T). Its parameters are the wrapped model's, under the same
    names (the tables are shared, not copied)."""

    def __init__(self, pretrained: nn.Module, output: str = "logits") -> None:
        super().__init__()
        object.__setattr__(self, "pretrained", pretrained)  # not a child: no "pretrained." prefix
        self._parameters, self._buffers, self._modules = (pretrained._parameters, pretrained._buffers,
                                                          pretrained._modules)
        self._non_persistent_buffers_set = pretrained._non_persistent_buffers_set  # state_dict leaves them out too
        self.output = output
        self.config = getattr(pretrained, "config", None)

    @property
    def training(self) -> bool:  # nn.Module sets and reads it: keep the wrapped model's flag in step
        return self.__dict__.get("pretrained").training if "pretrained" in self.__dict__ else False

    @training.setter
    def training(self, mode: bool) -> None:
        if "pretrained" in self.__dict__:
            self.__dict__["pretrained"].training = mode

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim == 3 and x.shape[1] == 2:
            result = self.pretrained(input_ids=x[:, 0], attention_mask=x[:, 1])
        else:
            result = self.pretrained(input_ids=x)
        outputs = getattr(result, self.output, None)
        if outputs is None and isinstance(result, dict):
            outputs = result.get(self.output)
        if not isinstance(outputs, Tensor):
            raise TypeError(f"the model's output has no tensor {self.output!r}")
        return outputs

    def extra_repr(self) -> str:
        return f"{type(self.pretrained).__name__}, output={self.output!r}"


def load_pretrained(folder: str | Path, *, trust: bool = False) -> PretrainedLogits:
    """The model of a save_pretrained folder, weights loaded by transformers (module docstring)."""
    transformers, config = _config(Path(folder), trust)
    model_class = _model_class(transformers, config, folder)
    try:
        with _quiet(transformers):
            model = model_class.from_pretrained(str(folder), local_files_only=True, trust_remote_code=trust)
    except Exception as exc:
        raise InputError(f"transformers could not load {folder}: {first_line(exc)}") from None
    return PretrainedLogits(model.eval())


@contextmanager
def _quiet(transformers: Any) -> Iterator[None]:
    """No progress bars and no info lines from transformers while it loads (hessian-probe reports
    its own progress; bars flood non-TTY logs); its settings are restored after."""
    logging = transformers.utils.logging
    bars, level = logging.is_progress_bar_enabled(), logging.get_verbosity()
    logging.disable_progress_bar()
    logging.set_verbosity_error()
    try:
        yield
    finally:
        logging.set_verbosity(level)
        if bars:
            logging.enable_progress_bar()


def build_from_config(folder: str | Path, *, trust: bool = False) -> PretrainedLogits:
    """The model a save_pretrained config describes, with fresh weights (for --model FOLDER with
    the weights in --checkpoint)."""
    transformers, config = _config(Path(folder), trust)
    model_class = _model_class(transformers, config, folder)
    try:
        with _quiet(transformers):
            model = model_class(config)
    except Exception as exc:
        raise InputError(f"transformers could not build the model of {folder}: {first_line(exc)}") from None
    return PretrainedLogits(model.eval())


def _config(folder: Path, trust: bool) -> tuple[Any, Any]:
    try:
        import transformers
    except ImportError:
        raise InputError(f"{folder} is a Hugging Face model folder ({CONFIG_FILE}): reading it needs transformers "
                         "(pip install transformers)") from None
    try:
        raw = json.loads((folder / CONFIG_FILE).read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read {folder / CONFIG_FILE}: {first_line(exc)}") from None
    if raw.get("auto_map") and not trust:
        raise InputError(f"{folder} needs the model's own Python code (auto_map in {CONFIG_FILE}), which would run "
                         "when loaded: pass --trust-checkpoint if you trust the folder")
    try:
        with _quiet(transformers):
            config = transformers.AutoConfig.from_pretrained(str(folder), local_files_only=True,
                                                             trust_remote_code=trust)
    except Exception as exc:
        raise InputError(f"transformers cannot read the config of {folder}: {first_line(exc)}") from None
    return transformers, config


def _model_class(transformers: Any, config: Any, folder: str | Path) -> Any:
    names = list(getattr(config, "architectures", None) or [])
    for name in names:
        if (found := getattr(transformers, name, None)) is not None:
            return found
    if names:
        raise InputError(f"transformers {transformers.__version__} has no model class {names[0]!r} (named by "
                         f"{Path(folder) / CONFIG_FILE}): upgrade transformers")
    raise InputError(f"{Path(folder) / CONFIG_FILE} names no architecture: save the model with save_pretrained")
