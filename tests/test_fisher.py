"""The Fisher operators against dense float64 matrices built by other means: the predictive
Fisher by explicit expectation over every label y ~ p(y|x) (one autograd gradient per example and
label), the empirical Fisher from per-example gradients at the data's labels."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from hessian_probe import curvature_operator, make_problem

F64 = torch.float64


def gradient(model: nn.Module, loss: torch.Tensor) -> torch.Tensor:
    return torch.cat([g.flatten() for g in torch.autograd.grad(loss, list(model.parameters()))])


def small_net(outputs: int, final: nn.Module | None = None) -> nn.Module:
    torch.manual_seed(0)
    layers = [nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, outputs)] + ([final] if final else [])
    return nn.Sequential(*layers).double()


@pytest.fixture(scope="module")
def inputs() -> torch.Tensor:
    return torch.randn(7, 4, dtype=F64, generator=torch.Generator().manual_seed(1))


def dense(problem, kind: str) -> torch.Tensor:
    return curvature_operator(problem, kind).to_dense()


def test_the_fisher_of_cross_entropy_is_the_expectation_over_labels_and_equals_the_ggn(inputs):
    model, n = small_net(3), len(inputs)
    y = torch.tensor([0, 1, 2, 1, 0, 2, 2])
    truth = 0
    for i in range(n):
        p = torch.softmax(model(inputs[i:i + 1]), 1)[0].detach()
        for c in range(3):
            g = gradient(model, F.cross_entropy(model(inputs[i:i + 1]), torch.tensor([c])))
            truth = truth + p[c] * torch.outer(g, g) / n
    problem = make_problem(model, (inputs, y), "cross_entropy", chunk_size=3)
    fisher = dense(problem, "fisher")
    torch.testing.assert_close(fisher, truth, rtol=1e-10, atol=1e-13)
    torch.testing.assert_close(fisher, dense(problem, "ggn"), rtol=1e-12, atol=1e-14)


def test_the_fisher_of_bce_on_probabilities_is_the_expectation_over_labels_not_the_ggn(inputs):
    model = small_net(2, nn.Sigmoid())
    t = torch.rand(7, 2, dtype=F64, generator=torch.Generator().manual_seed(2)).round()
    truth, terms = 0, t.numel()  # the mean loss is a mean over its 14 Bernoulli terms
    for i in range(len(inputs)):
        p = model(inputs[i:i + 1])[0].detach()
        for c in range(2):
            for label, chance in ((1.0, p[c]), (0.0, 1 - p[c])):
                out = model(inputs[i:i + 1])[0, c]
                g = gradient(model, -(label * torch.log(out) + (1 - label) * torch.log1p(-out)))
                truth = truth + chance * torch.outer(g, g) / terms
    problem = make_problem(model, (inputs, t), "bce", chunk_size=4)
    fisher = dense(problem, "fisher")
    torch.testing.assert_close(fisher, truth, rtol=1e-10, atol=1e-13)
    assert (fisher - dense(problem, "ggn")).abs().max() > 1e-3 * fisher.abs().max()  # labels matter to the GGN


@pytest.mark.parametrize("loss", ["mse", "bce_with_logits"])
def test_the_fisher_is_the_ggn_when_the_outputs_are_natural_parameters(inputs, loss):
    model = small_net(3)
    targets = torch.rand(7, 3, dtype=F64, generator=torch.Generator().manual_seed(3))
    problem = make_problem(model, (inputs, targets), loss, chunk_size=5)
    torch.testing.assert_close(dense(problem, "fisher"), dense(problem, "ggn"), rtol=1e-12, atol=1e-14)


def test_for_softmax_regression_the_fisher_is_the_hessian(inputs):
    torch.manual_seed(4)
    model = nn.Linear(4, 3).double()
    problem = make_problem(model, (inputs, torch.tensor([0, 1, 2, 1, 0, 2, 2])), "cross_entropy")
    torch.testing.assert_close(dense(problem, "fisher"), dense(problem, "hessian"), rtol=1e-10, atol=1e-13)


def sum_of_logs(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """A user's loss: a mean over examples with no predictive distribution behind it."""
    return torch.log1p((outputs - targets).square().sum(1)).mean()


@pytest.mark.parametrize("loss, targets", [
    ("cross_entropy", torch.tensor([0, 1, 2, 1, 0, 2, 2])),
    ("mse", torch.linspace(-1, 1, 21, dtype=F64).reshape(7, 3)),
    (sum_of_logs, torch.linspace(-1, 1, 21, dtype=F64).reshape(7, 3)),
], ids=["cross_entropy", "mse", "custom"])
def test_the_empirical_fisher_is_the_per_example_gradients_covariance(inputs, loss, targets):
    model, n = small_net(3), len(inputs)
    loss_fn = {"cross_entropy": F.cross_entropy, "mse": lambda o, t: (o - t).square().mean()}.get(loss, loss)
    params = dict(model.named_parameters())
    rows = [gradient(model, loss_fn(functional_call(model, params, inputs[i:i + 1]), targets[i:i + 1]))
            for i in range(n)]
    G = torch.stack(rows)
    terms = 3 if loss == "mse" else 1  # the mean averages N x 3 Gaussian terms; a user's loss: one per example
    truth = terms * G.T @ G / n
    empirical = dense(make_problem(model, (inputs, targets), loss, chunk_size=3), "empirical-fisher")  # batches 3, 3, 1
    torch.testing.assert_close(empirical, truth, rtol=1e-10, atol=1e-13)
    if loss == "cross_entropy":  # at a point that is not a minimum of a model that is not a perfect fit
        fisher = dense(make_problem(model, (inputs, targets), loss), "fisher")
        assert (empirical - fisher).abs().max() > 1e-2 * fisher.abs().max()


def test_the_fisher_of_a_loss_without_a_distribution_is_refused(inputs):
    problem = make_problem(small_net(3), (inputs, torch.zeros(7, 3, dtype=F64)), sum_of_logs)
    with pytest.raises(ValueError, match="empirical Fisher"):
        curvature_operator(problem, "fisher")


@pytest.mark.parametrize("loss", ["cross_entropy", "mse"])
def test_with_labels_drawn_from_the_model_the_empirical_fisher_averages_to_the_fisher(loss):
    """E[E] = F over y ~ p(y|x): both are normalised per term (3 Gaussian outputs per example for
    mse), so 4000 examples bring the empirical Fisher within a few percent of the Fisher."""
    torch.manual_seed(5)
    model, n = nn.Linear(4, 3).double(), 4000
    x = torch.randn(n, 4, dtype=F64)
    with torch.no_grad():
        f = model(x)
    if loss == "cross_entropy":
        y = torch.distributions.Categorical(logits=f).sample()
    else:  # the mean (f - y)^2 is the negative log-likelihood of N(f, 1/2) per output, up to a constant
        y = f + 0.5**0.5 * torch.randn_like(f)
    problem = make_problem(model, (x, y), loss)
    fisher, empirical = dense(problem, "fisher"), dense(problem, "empirical-fisher")
    assert torch.linalg.norm(empirical - fisher) < 0.1 * torch.linalg.norm(fisher)
