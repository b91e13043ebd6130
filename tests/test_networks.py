"""A briefly trained tanh MLP and CNN on digits against their dense float64 Hessians."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import trained_digits
from helpers import dense_hessian

from hessian_probe import curvature_operator, extremal_eigs, hutchinson, hutchpp, make_problem, slq


@functools.cache
def dense_truth(name: str):
    model, x, y = trained_digits(name)
    dense = dense_hessian(model, F.cross_entropy, x, y)
    return dense, np.linalg.eigvalsh(dense.numpy())


@pytest.fixture
def network_truth(digits_network):
    name, model, x, y = digits_network
    return (name, model, x, y, *dense_truth(name))


def unequal_batches(x, y, sizes=(100, 100, 37)):
    cuts = np.cumsum((0, *sizes))
    return [(x[a:b], y[a:b]) for a, b in zip(cuts[:-1], cuts[1:])]


def test_unequal_batches_give_the_hessian_of_the_mean_loss(network_truth):
    _, model, x, y, dense, _ = network_truth
    assert len(x) == 237
    problem = make_problem(model, unequal_batches(x, y), "cross_entropy")
    assert [len(b[0]) for b in problem.batches] == [100, 100, 37]
    operator = curvature_operator(problem, "hessian").to_dense()
    scale = dense.abs().max().item()
    torch.testing.assert_close(operator, dense, rtol=0, atol=1e-12 * scale)


@pytest.mark.parametrize("mode", ["reverse", "forward"])
@pytest.mark.parametrize("max_rows", [None, 70])
def test_every_product_path_gives_the_dense_hessian(network_truth, mode, max_rows):
    """Reverse- and forward-over-reverse, one vector (autograd double backward) and a block
    (vmap), whole batches and batches split into pieces of max_rows / k examples."""
    _, model, x, y, dense, _ = network_truth
    problem = make_problem(model, unequal_batches(x, y), "cross_entropy")
    op = curvature_operator(problem, "hessian", hessian_mode=mode, max_rows=max_rows)
    V = torch.randn(5, op.size, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    exact = V @ dense
    tol = dict(rtol=0, atol=1e-12 * exact.abs().max().item())
    torch.testing.assert_close(op.matmat(V), exact, **tol)
    torch.testing.assert_close(op.matvec(V[0]), exact[0], **tol)
    if max_rows is not None:
        ggn = curvature_operator(problem, "ggn")
        split = curvature_operator(problem, "ggn", max_rows=max_rows)
        torch.testing.assert_close(split.matmat(V), ggn.matmat(V), **tol)


def test_extremal_eigenvalues_match_eigvalsh(network_truth):
    _, model, x, y, _, spectrum = network_truth
    op = curvature_operator(make_problem(model, (x, y), "cross_entropy", chunk_size=100))
    result = extremal_eigs(op, top_k=5, bottom_k=3, tol=1e-9)
    assert result.converged
    top, bottom = spectrum[::-1][:5], spectrum[:3]
    assert spectrum[0] < 0, "a tanh network away from a minimum has negative curvature"
    np.testing.assert_allclose(result.top_eigenvalues, top, rtol=1e-6)
    np.testing.assert_allclose(result.bottom_eigenvalues, bottom, rtol=1e-6)
    assert np.all(result.top_residuals <= 1e-9 * np.abs(result.top_eigenvalues))


def test_trace_estimates_within_three_stderr(network_truth):
    _, model, x, y, _, spectrum = network_truth
    op = curvature_operator(make_problem(model, (x, y), "cross_entropy", chunk_size=128))
    exact = spectrum.sum()
    for result in (hutchinson(op, 60, seed=3), hutchpp(op, 60, seed=3)):
        assert abs(result.estimate - exact) <= 3 * result.stderr, result
    density = slq(op, n_steps=40, n_probes=6, seed=3)
    assert abs(density.trace_estimate - exact) <= 3 * density.trace_stderr


def test_ggn_is_psd_and_differs_from_the_hessian(network_truth):
    _, model, x, y, dense, _ = network_truth
    ggn = curvature_operator(make_problem(model, (x, y), "cross_entropy", chunk_size=128), "ggn").to_dense()
    torch.testing.assert_close(ggn, ggn.T, rtol=0, atol=1e-14)
    eigenvalues = torch.linalg.eigvalsh(ggn)
    assert eigenvalues[0] >= -1e-12 * eigenvalues[-1]
    assert (ggn - dense).norm() > 1e-2 * dense.norm()


def test_parameter_subset_is_the_dense_block(network_truth):
    name, model, x, y, _, _ = network_truth
    layer = "3" if name == "cnn" else "2"  # the second linear or second convolution
    problem = make_problem(model, (x, y), "cross_entropy", params=layer, chunk_size=128)
    names = [n for n, _ in model.named_parameters() if n.startswith(layer + ".")]
    assert list(problem.params) == names
    block = dense_hessian(model, F.cross_entropy, x, y, names=names)
    torch.testing.assert_close(curvature_operator(problem).to_dense(), block, rtol=0, atol=1e-12)
