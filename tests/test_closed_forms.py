"""Operators against closed forms: linear regression (mean MSE) and softmax regression."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import dense_hessian
from torch import nn

from hessian_probe import curvature_operator, extremal_eigs, make_problem
from hessian_probe.loading.datasets import load_digits

F64 = torch.float64


@pytest.fixture
def linear_regression():
    g = torch.Generator().manual_seed(0)
    n, d, c = 237, 7, 3
    x = torch.randn(n, d, generator=g, dtype=F64) * torch.linspace(0.5, 3.0, d, dtype=F64)
    y = torch.randn(n, c, generator=g, dtype=F64)
    model = nn.Linear(d, c, bias=False).double()
    exact = (2.0 / (n * c)) * torch.kron(torch.eye(c, dtype=F64), x.T @ x)
    return model, x, y, exact


@pytest.mark.parametrize("batch_size", [None, 100, 64])
def test_linear_regression_operator_is_the_closed_form(linear_regression, batch_size):
    model, x, y, exact = linear_regression
    problem = make_problem(model, (x, y), "mse", chunk_size=batch_size)
    hessian = curvature_operator(problem, "hessian").to_dense()
    ggn = curvature_operator(problem, "ggn").to_dense()
    torch.testing.assert_close(hessian, exact, rtol=0, atol=1e-10)
    torch.testing.assert_close(ggn, hessian, rtol=0, atol=1e-10)


def test_linear_regression_top_eigenvalue(linear_regression):
    model, x, y, exact = linear_regression
    op = curvature_operator(make_problem(model, (x, y), "mse", chunk_size=50))
    result = extremal_eigs(op, top_k=1, tol=1e-10)
    truth = torch.linalg.eigvalsh(exact)[-1].item()
    assert result.converged
    assert abs(result.top_eigenvalues[0] - truth) <= 1e-8 * truth


def test_softmax_regression_on_digits():
    x, y = load_digits(300, seed=0)
    x = x.double()
    torch.manual_seed(0)
    model = nn.Linear(64, 10).double()
    problem = make_problem(model, (x, y), "cross_entropy", chunk_size=128)
    hessian = curvature_operator(problem, "hessian").to_dense()
    ggn = curvature_operator(problem, "ggn").to_dense()
    dense = dense_hessian(model, F.cross_entropy, x, y)
    torch.testing.assert_close(hessian, dense, rtol=0, atol=1e-12)
    torch.testing.assert_close(ggn, dense, rtol=0, atol=1e-12)

    # weight block against (1/N) sum_i (diag p_i - p_i p_i^T) kron x_i x_i^T
    with torch.no_grad():
        p = torch.softmax(model(x), dim=1)
    s = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]
    closed = torch.einsum("icd,ij,ik->icjdk", s, x, x).reshape(len(x), 640, 640).mean(0)
    block = curvature_operator(problem.restricted("weight"), "hessian").to_dense()
    torch.testing.assert_close(block, closed, rtol=0, atol=1e-12)
