"""Losses with torch's ``reduction='mean'`` semantics and their output-space Hessians.

The Gauss-Newton product needs S u, where S is the Hessian of the batch loss with respect to
the network outputs (Schraudolph 2002, "Fast curvature matrix-vector products"):

- softmax cross-entropy over the class dimension 1 (or the last, for (N, T, V) logits and (N, T)
  labels), labels equal to ignore_index -100 left out: S_i = (diag p_i - p_i p_i^T) / n_terms,
  n_terms the labels that count; ``causal_lm`` is the same on logits[:, :-1] and labels[:, 1:]
- MSE over all elements: S = (2 / numel) I
- binary cross-entropy on logits: S = diag(sigma (1 - sigma)) / numel; on probabilities p (after
  a final sigmoid): S = diag(t / p^2 + (1 - t) / (1 - p)^2) / numel
- any other differentiable loss: S u by forward-over-reverse on the loss alone (no second
  derivatives of the network are ever taken).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import grad, jvp, vmap

from .imports import import_object, is_import_spec


class Loss(ABC):
    """A scalar loss l(outputs, targets), averaged over the batch as torch's 'mean' does."""

    name: str

    @abstractmethod
    def __call__(self, outputs: Tensor, targets: Tensor) -> Tensor: ...

    @abstractmethod
    def output_hessian_matmat(self, outputs: Tensor, targets: Tensor, U: Tensor) -> Tensor:
        """S U for a block U of shape (k, *outputs.shape), S the Hessian of self(outputs, targets)."""

    @property
    def has_fisher(self) -> bool:
        """Whether output_fisher_matmat knows the predictive distribution the loss is the negative
        log-likelihood of (a user's loss does not say)."""
        return type(self).output_fisher_matmat is not Loss.output_fisher_matmat

    def output_fisher_matmat(self, outputs: Tensor, U: Tensor, targets: Tensor | None = None) -> Tensor:
        """E_{y ~ p(y|outputs)}[g g^T] U, g the gradient of the loss in the outputs: the Fisher's
        middle matrix. For outputs that are natural parameters it is the output Hessian, whatever
        the targets' values (cross-entropy, MSE, BCE on logits); ``targets`` only tell which
        positions count (labels -100) and where the classes are."""
        raise NotImplementedError(f"the loss {self.name!r} gives no predictive distribution")

    def terms_per_example(self, outputs: Tensor, targets: Tensor | None = None) -> float:
        """How many independent terms (each the negative log-likelihood of one distribution) the mean
        loss averages per example: one for a user's loss, which names no distribution."""
        return 1

    def validate(self, outputs: Tensor, targets: Tensor) -> None:
        """Raise ValueError if targets cannot belong to these outputs."""

    def term_count(self, targets: Tensor) -> int | None:
        """How many terms the mean over this batch averages, for a loss that counts its terms (labels
        that count, not ignore_index): a sample's mean then weighs each batch by it, not by its
        size. None: one term per example."""
        return None

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class NaturalParameterLoss(Loss):
    """A loss whose outputs are the natural parameters of its distribution (an exponential family
    with its canonical link): the Fisher's middle matrix is then the output Hessian, whatever the
    targets (Martens 2020, section 9.2)."""

    def output_fisher_matmat(self, outputs: Tensor, U: Tensor, targets: Tensor | None = None) -> Tensor:
        return self.output_hessian_matmat(outputs, torch.zeros_like(outputs), U)  # S does not read the targets


class ElementwiseTerms:
    """For a loss that is a mean over output elements, each one distribution's negative
    log-likelihood (MSE, BCE): as many terms per example as it has outputs."""

    def terms_per_example(self, outputs: Tensor, targets: Tensor | None = None) -> float:
        return outputs[0].numel()


IGNORE_INDEX = -100  # torch's and Hugging Face's label for "no loss here" (padding, prompt tokens)


class CrossEntropy(NaturalParameterLoss):
    """``F.cross_entropy`` with classes on dim 1 -- or on the last dim, for (N, T, V) logits with
    (N, T) labels (language models; dim 1 wins when both read the same) -- targets class indices
    or probabilities; labels equal to -100 (torch's ignore_index) are left out of the mean."""

    name = "cross_entropy"
    classes_last: bool | None = None  # None: read from the shapes (_classes_last); True: always the last dim

    def __call__(self, outputs: Tensor, targets: Tensor) -> Tensor:
        return F.cross_entropy(_classes_first(outputs, targets, self.classes_last), targets, ignore_index=IGNORE_INDEX)

    def terms_per_example(self, outputs: Tensor, targets: Tensor | None = None) -> float:
        """One categorical per position that counts (the mean over the batch, with labels -100)."""
        if targets is None or targets.is_floating_point():
            return outputs[0, 0].numel()
        return self.term_count(targets) / len(targets)

    def output_fisher_matmat(self, outputs: Tensor, U: Tensor, targets: Tensor | None = None) -> Tensor:
        if targets is None or targets.is_floating_point():
            return self.output_hessian_matmat(outputs, torch.zeros_like(outputs), U)
        return self.output_hessian_matmat(outputs, targets, U)  # S reads only where the classes are, and the mask

    def term_count(self, targets: Tensor) -> int | None:
        return None if targets.is_floating_point() else int((targets != IGNORE_INDEX).sum())

    def output_hessian_matmat(self, outputs: Tensor, targets: Tensor, U: Tensor) -> Tensor:
        last = _classes_last(outputs, targets, self.classes_last)
        dim = -1 if last else 2  # the class dimension of U (k, N, C, ...)
        p = torch.softmax(outputs, dim=-1 if last else 1)
        pu = p * U
        s = pu - p * pu.sum(dim=dim, keepdim=True)
        if targets.is_floating_point():
            return s / (outputs.numel() // outputs.shape[1])
        counted = targets != IGNORE_INDEX
        mask = counted.unsqueeze(-1 if last else 1).to(s.dtype)
        return s * mask / counted.sum().clamp(min=1)

    def validate(self, outputs: Tensor, targets: Tensor) -> None:
        if outputs.ndim < 2:
            raise ValueError(f"cross_entropy needs outputs of shape (N, C, ...), got {tuple(outputs.shape)}")
        last = _classes_last(outputs, targets, self.classes_last)
        n_classes = outputs.shape[-1 if last else 1]
        if targets.is_floating_point():
            if targets.shape != outputs.shape:
                if targets.ndim == outputs.ndim - 1 and torch.equal(targets, targets.round()):
                    raise ValueError("class labels are stored as floating point: save them as integers "
                                     "(y.long()); floating targets mean class probabilities")
                raise ValueError(
                    f"probability targets must have the outputs' shape (N, {n_classes}, ...), "
                    f"got {tuple(targets.shape[1:])} per example"
                )
            # S = (sum_c t_c)(diag p - p p^T): the closed form below needs distributions
            sums_to_one = torch.allclose(targets.sum(1), torch.ones(()).to(targets), atol=1e-5)
            if targets.numel() and (targets.min() < 0 or not sums_to_one):
                raise ValueError("probability targets must be non-negative and sum to 1 over the class dimension 1")
            return
        if targets.dtype == torch.bool:
            raise ValueError("class labels are booleans: save them as integers (y.long())")
        if not last:
            expected = (outputs.shape[0],) + tuple(outputs.shape[2:])
            if tuple(targets.shape) != expected:
                also = (f" (or {tuple(outputs.shape[:-1])}, classes on the last dim)" if outputs.ndim >= 3 else "")
                raise ValueError(f"class-index targets must have shape {expected}{also}, got {tuple(targets.shape)}")
        counted = targets[targets != IGNORE_INDEX]  # none in this batch: it weighs 0 in the sample (problem.py)
        if counted.numel() and (counted.min() < 0 or counted.max() >= n_classes):
            raise ValueError(
                f"labels must lie in [0, {n_classes - 1}] (or be {IGNORE_INDEX}, left out) for a model with "
                f"{n_classes} outputs, found range [{int(counted.min())}, {int(counted.max())}]"
            )


def _classes_last(outputs: Tensor, targets: Tensor, forced: bool | None = None) -> bool:
    """Integer labels of shape outputs.shape[:-1] that do not also fit classes on dim 1 (``forced``:
    the loss knows its layout, e.g. causal_lm, whose T - 1 could equal the vocabulary size)."""
    if targets.is_floating_point() or outputs.ndim < 3:
        return False
    if forced is not None:
        return forced
    first = (outputs.shape[0],) + tuple(outputs.shape[2:])
    return tuple(targets.shape) == tuple(outputs.shape[:-1]) and tuple(targets.shape) != first


def _classes_first(outputs: Tensor, targets: Tensor, forced: bool | None = None) -> Tensor:
    return outputs.movedim(-1, 1) if _classes_last(outputs, targets, forced) else outputs


class CausalLanguageModel(CrossEntropy):
    """Next-token cross-entropy of a causal language model, as Hugging Face computes it: logits
    (N, T, V) at position t predict labels[:, t + 1]; labels -100 are left out and the mean is over
    the tokens that count. The last position predicts nothing (its output Hessian is zero)."""

    name = "causal_lm"
    classes_last = True  # the vocabulary: (N, T - 1, V) would read as classes on dim 1 when T - 1 == V

    def __call__(self, outputs: Tensor, targets: Tensor) -> Tensor:
        return F.cross_entropy(outputs[:, :-1].movedim(-1, 1), targets[:, 1:], ignore_index=IGNORE_INDEX)

    def term_count(self, targets: Tensor) -> int | None:
        return int((targets[:, 1:] != IGNORE_INDEX).sum())  # the tokens predicted, whatever the padding

    def terms_per_example(self, outputs: Tensor, targets: Tensor | None = None) -> float:
        return outputs.shape[1] - 1 if targets is None else super().terms_per_example(outputs, targets)

    def output_hessian_matmat(self, outputs: Tensor, targets: Tensor, U: Tensor) -> Tensor:
        shifted = super().output_hessian_matmat(outputs[:, :-1], targets[:, 1:], U[:, :, :-1])
        return torch.cat([shifted, torch.zeros_like(U[:, :, -1:])], dim=2)

    def output_fisher_matmat(self, outputs: Tensor, U: Tensor, targets: Tensor | None = None) -> Tensor:
        if targets is None:
            targets = torch.zeros(outputs.shape[:-1], dtype=torch.long, device=outputs.device)
        return self.output_hessian_matmat(outputs, targets, U)

    def validate(self, outputs: Tensor, targets: Tensor) -> None:
        if outputs.ndim != 3 or tuple(targets.shape) != tuple(outputs.shape[:2]) or targets.is_floating_point():
            raise ValueError(f"causal_lm needs logits (N, T, V) and integer labels (N, T); got outputs "
                             f"{tuple(outputs.shape)} and labels {tuple(targets.shape)} {targets.dtype}")
        if outputs.shape[1] < 2:
            raise ValueError("causal_lm needs sequences of at least 2 tokens (position t predicts token t + 1)")
        super().validate(outputs[:, :-1], targets[:, 1:])


class MeanSquaredError(ElementwiseTerms, NaturalParameterLoss):
    """``F.mse_loss`` with mean over all elements: S = (2/numel) I."""

    name = "mse"

    def __call__(self, outputs: Tensor, targets: Tensor) -> Tensor:
        # Same value as F.mse_loss; written out because forward-over-reverse through
        # F.mse_loss fails in torch 2.13 ("ZeroTensors are immutable").
        return (outputs - targets).square().mean()

    def output_hessian_matmat(self, outputs: Tensor, targets: Tensor, U: Tensor) -> Tensor:
        return U * (2.0 / outputs.numel())

    def validate(self, outputs: Tensor, targets: Tensor) -> None:
        if targets.shape != outputs.shape:
            raise ValueError(f"mse targets must have the outputs' shape {tuple(outputs.shape)}, "
                             f"got {tuple(targets.shape)}")


class BinaryCrossEntropyWithLogits(ElementwiseTerms, NaturalParameterLoss):
    """``F.binary_cross_entropy_with_logits`` (mean over all elements) on logits z, targets t in
    [0, 1]: S = diag(sigma(z)(1 - sigma(z))) / numel. With it the GGN is split at the logits, where
    it is the Hessian's PSD part (Martens 2020, "New insights and perspectives on the natural
    gradient method", section 8)."""

    name = "bce_with_logits"

    def __call__(self, outputs: Tensor, targets: Tensor) -> Tensor:
        # softplus(z) - t z, the same value as F.binary_cross_entropy_with_logits, written out so
        # that forward-over-reverse works through it
        return (F.softplus(outputs) - targets * outputs).mean()

    def output_hessian_matmat(self, outputs: Tensor, targets: Tensor, U: Tensor) -> Tensor:
        p = torch.sigmoid(outputs)
        return U * (p * (1 - p) / outputs.numel())

    def validate(self, outputs: Tensor, targets: Tensor) -> None:
        _check_binary_targets(self.name, outputs, targets)


class BinaryCrossEntropy(ElementwiseTerms, Loss):
    """``F.binary_cross_entropy`` (mean over all elements) on probabilities p in (0, 1): S =
    diag(t / p^2 + (1 - t) / (1 - p)^2) / numel, the GGN split at the probabilities (after a
    model's final sigmoid, whose curvature then stays out of it)."""

    name = "bce"

    def output_fisher_matmat(self, outputs: Tensor, U: Tensor,
                             targets: Tensor | None = None) -> Tensor:  # E_t[t/p^2 + (1-t)/(1-p)^2], t ~ p
        return U / (outputs * (1 - outputs) * outputs.numel())

    def __call__(self, outputs: Tensor, targets: Tensor) -> Tensor:
        log_p, log_q = torch.log(outputs).clamp(min=-100), torch.log1p(-outputs).clamp(min=-100)  # as torch clamps
        return -(targets * log_p + (1 - targets) * log_q).mean()

    def output_hessian_matmat(self, outputs: Tensor, targets: Tensor, U: Tensor) -> Tensor:
        return U * ((targets / outputs.square() + (1 - targets) / (1 - outputs).square()) / outputs.numel())

    def validate(self, outputs: Tensor, targets: Tensor) -> None:
        _check_binary_targets(self.name, outputs, targets)
        if outputs.numel() and (outputs.min() <= 0 or outputs.max() >= 1):
            raise ValueError("bce needs probabilities strictly inside (0, 1) (a final sigmoid); for logits use "
                             "`loss` bce_with_logits")


def _check_binary_targets(name: str, outputs: Tensor, targets: Tensor) -> None:
    if targets.shape != outputs.shape:
        raise ValueError(f"{name} targets must have the outputs' shape {tuple(outputs.shape)}, "
                         f"got {tuple(targets.shape)}")
    if not targets.is_floating_point() or (targets.numel() and (targets.min() < 0 or targets.max() > 1)):
        raise ValueError(f"{name} targets must be floats in [0, 1]")


class CustomLoss(Loss):
    """A user function ``fn(outputs, targets) -> scalar mean loss``; S U by jvp of its gradient."""

    def __init__(self, fn: Callable[[Tensor, Tensor], Tensor], name: str | None = None) -> None:
        self.fn = fn
        self.name = name or getattr(fn, "__name__", "custom")

    def __call__(self, outputs: Tensor, targets: Tensor) -> Tensor:
        return self.fn(outputs, targets)

    def output_hessian_matmat(self, outputs: Tensor, targets: Tensor, U: Tensor) -> Tensor:
        grad_fn = grad(lambda o: self.fn(o, targets))
        return vmap(lambda u: jvp(grad_fn, (outputs,), (u,))[1])(U)

    def __repr__(self) -> str:
        return f"CustomLoss({self.name})"


BUILTIN_LOSSES: dict[str, type[Loss]] = {"cross_entropy": CrossEntropy, "mse": MeanSquaredError,
                                         "bce_with_logits": BinaryCrossEntropyWithLogits, "bce": BinaryCrossEntropy,
                                         "causal_lm": CausalLanguageModel}


def _torch_equivalent(spec: object) -> Loss | None:
    """torch's own mean cross-entropy and MSE, mapped to the closed forms above."""
    if spec is F.cross_entropy or (
        isinstance(spec, nn.CrossEntropyLoss) and spec.reduction == "mean" and spec.weight is None
        and spec.label_smoothing == 0 and spec.ignore_index == -100
    ):
        return CrossEntropy()
    if spec is F.mse_loss or (isinstance(spec, nn.MSELoss) and spec.reduction == "mean"):
        return MeanSquaredError()
    return None


def get_loss(spec: str | Loss | Callable[[Tensor, Tensor], Tensor]) -> Loss:
    """Resolve 'cross_entropy', 'mse', 'package.module:function', a Loss or a callable."""
    if isinstance(spec, Loss):
        return spec
    if (builtin := _torch_equivalent(spec)) is not None:
        return builtin
    if callable(spec):
        return CustomLoss(spec)
    if spec in BUILTIN_LOSSES:
        return BUILTIN_LOSSES[spec]()
    if is_import_spec(spec):
        fn = import_object(spec, "loss")
        if isinstance(fn, type) and issubclass(fn, nn.Module):  # a loss class such as torch.nn:MSELoss
            fn = fn()
        if not callable(fn):
            raise ValueError(f"loss {spec!r} is not callable: need fn(outputs, targets) -> mean loss")
        return _torch_equivalent(fn) or CustomLoss(fn, name=spec)
    raise ValueError(f"unknown loss {spec!r}: use one of {sorted(BUILTIN_LOSSES)} or package.module:function "
                     "(file.py:function)")
