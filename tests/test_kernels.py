"""Krylov kernels on explicit matrices: quadrature exactness, random-matrix laws, ghosts, traces."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers import marchenko_pastur_cdf, random_symmetric, semicircle_cdf, wasserstein1

from hessian_probe import DenseOperator, extremal_eigs, hutchinson, hutchpp, lanczos, slq, trace
from hessian_probe.linalg import gauss_quadrature

F64 = torch.float64


def diagonal_operator(values) -> DenseOperator:
    return DenseOperator(torch.diag(torch.as_tensor(values, dtype=F64)))


def test_quadrature_is_exact_up_to_degree_2m_minus_1():
    a = random_symmetric(60, seed=1)
    m = 6
    run = lanczos(DenseOperator(a), m, seed=2, keep_basis=True)
    nodes, weights = gauss_quadrature(run.alphas[0], run.betas[0])
    assert weights.sum() == pytest.approx(1.0, abs=1e-14)
    q1 = run.basis[0, 0]
    for j in range(2 * m + 2):
        moment = float(q1 @ torch.linalg.matrix_power(a, j) @ q1)
        rule = float(weights @ nodes**j)
        if j <= 2 * m - 1:
            assert rule == pytest.approx(moment, rel=1e-10, abs=1e-12), j
        else:  # the rule is exact no further: this test can fail
            assert abs(rule - moment) > 1e-6, j


def test_breakdown_on_an_invariant_subspace_gives_the_exact_measure():
    op = diagonal_operator([1.0] * 10 + [2.0] * 20 + [5.0] * 30)
    z = torch.ones(1, 60, dtype=F64)
    run = lanczos(op, 20, start=z)
    assert run.n_steps == (3,) and run.broke_down == (True,)
    nodes, weights = gauss_quadrature(run.alphas[0], run.betas[0])
    np.testing.assert_allclose(nodes, [1.0, 2.0, 5.0], atol=1e-12)
    np.testing.assert_allclose(weights, [10 / 60, 20 / 60, 30 / 60], atol=1e-12)


def test_slq_recovers_the_wigner_semicircle():
    n = 2000
    result = slq(DenseOperator(random_symmetric(n, seed=3)), n_steps=80, n_probes=4, seed=0)
    distance = wasserstein1(result.cdf, semicircle_cdf, -2.5, 2.5)
    print(f"Wigner n={n}, m=80, 4 probes: W1(SLQ, semicircle) = {distance:.4f} (support width 4)")
    assert distance < 0.03  # measured 0.021: 0.5% of the support width
    assert result.trace_estimate == pytest.approx(0.0, abs=3 * result.trace_stderr + 1e-9)
    density = result.density(grid=np.linspace(-3, 3, 6001), variance=0.01)
    grid_step = density.grid[1] - density.grid[0]
    assert density.values.sum() * grid_step == pytest.approx(1.0, abs=1e-3)
    middle = np.abs(density.grid) < 1.5
    law = np.sqrt(4 - density.grid[middle] ** 2) / (2 * np.pi)
    assert np.abs(density.values[middle] - law).max() < 0.05


@pytest.mark.parametrize("gamma", [0.5, 2.0])
def test_slq_recovers_marchenko_pastur(gamma):
    p = 1000
    n = int(p / gamma)
    g = torch.Generator().manual_seed(4)
    x = torch.randn(n, p, generator=g, dtype=F64)
    result = slq(DenseOperator(x.T @ x / n), n_steps=80, n_probes=4, seed=0)
    hi = (1 + np.sqrt(gamma)) ** 2
    distance = wasserstein1(result.cdf, lambda t: marchenko_pastur_cdf(t, gamma), -0.5, hi + 0.5)
    print(f"Marchenko-Pastur gamma={gamma}, P={p}: W1(SLQ, law) = {distance:.4f} (support width {hi:.2f})")
    assert distance < 0.01 * hi
    if gamma > 1:  # the atom at zero carries mass 1 - 1/gamma
        assert result.cdf(np.array([1e-6]))[0] == pytest.approx(1 - 1 / gamma, abs=0.03)


@pytest.mark.parametrize("theta, expected", [(2.0, 2.5), (3.0, 3.0 + 1 / 3), (0.5, 2.0)])
def test_spiked_wigner_outlier_at_theta_plus_inverse_theta(theta, expected):
    n = 2000
    w = random_symmetric(n, seed=5)
    g = torch.Generator().manual_seed(6)
    v = torch.randn(n, generator=g, dtype=F64)
    v /= v.norm()
    result = extremal_eigs(DenseOperator(w + theta * torch.outer(v, v)), top_k=1, tol=1e-8)
    assert result.converged
    assert result.top_eigenvalues[0] == pytest.approx(expected, abs=0.06)


def test_ghosts_without_reorthogonalisation_keep_the_true_weight():
    values = np.concatenate([np.linspace(0.0, 1.0, 200), [10.0]])
    op = diagonal_operator(values)
    z = torch.ones(1, len(values), dtype=F64)
    plain = lanczos(op, 120, start=z, reorth="none")
    nodes, weights = gauss_quadrature(plain.alphas[0], plain.betas[0])
    ghosts = np.abs(nodes - 10.0) < 1e-6
    assert ghosts.sum() >= 2, "without reorthogonalisation the outlier is found more than once"
    assert weights[ghosts].sum() == pytest.approx(1 / len(values), rel=1e-6)
    full = lanczos(op, 120, start=z, reorth="full")
    nodes, weights = gauss_quadrature(full.alphas[0], full.betas[0])
    assert (np.abs(nodes - 10.0) < 1e-6).sum() == 1
    assert weights[np.abs(nodes - 10.0) < 1e-6].sum() == pytest.approx(1 / len(values), rel=1e-9)


def test_hutchinson_variance_formula():
    a = random_symmetric(50, seed=7) + torch.diag(torch.linspace(0, 2, 50, dtype=F64))
    predicted = 2 * (a.square().sum() - a.diagonal().square().sum()).item()
    n = 4000
    result = hutchinson(DenseOperator(a), n, seed=1, block_size=500)
    measured_variance = result.stderr**2 * n
    assert measured_variance == pytest.approx(predicted, rel=0.1)  # sampling error ~ sqrt(2/n)
    assert abs(result.estimate - a.trace().item()) <= 3 * result.stderr


def test_hutchpp_is_exact_on_low_rank_psd_and_beats_hutchinson():
    g = torch.Generator().manual_seed(8)
    u = torch.randn(300, 10, generator=g, dtype=F64)
    low_rank = DenseOperator(u @ u.T)
    exact = (u @ u.T).trace().item()
    result = hutchpp(low_rank, 60, seed=0)
    assert result.estimate == pytest.approx(exact, rel=1e-10) and not result.warnings
    rotation = torch.linalg.qr(torch.randn(300, 300, generator=g, dtype=F64)).Q
    spectrum = 1.0 / torch.arange(1, 301, dtype=F64) ** 2  # rotated: not diagonal, where Rademacher is exact
    decaying = DenseOperator(rotation @ torch.diag(spectrum) @ rotation.T)
    errors = {
        method: np.mean([abs(trace(decaying, 60, method=method, seed=s).estimate - spectrum.sum().item())
                         for s in range(10)])
        for method in ("hutchinson", "hutchpp")
    }
    assert errors["hutchpp"] < 0.2 * errors["hutchinson"]


def test_hutchpp_warns_on_indefinite_operators():
    assert hutchpp(DenseOperator(random_symmetric(100, seed=9)), 30).warnings


def test_power_iteration_agrees_with_lanczos_and_costs_more():
    a = random_symmetric(300, seed=10) + 3.0 * torch.diag((torch.arange(300) == 0).to(F64))
    op = DenseOperator(a)
    exact = np.linalg.eigvalsh(a.numpy())
    fast = extremal_eigs(op, top_k=2, bottom_k=1, tol=1e-8)
    slow = extremal_eigs(op, top_k=2, bottom_k=1, tol=1e-8, method="power", max_iter=20_000)
    for result in (fast, slow):
        assert result.converged
        np.testing.assert_allclose(result.top_eigenvalues, exact[::-1][:2], rtol=1e-6)
        np.testing.assert_allclose(result.bottom_eigenvalues, exact[:1], rtol=1e-6)
    assert slow.n_products > 5 * fast.n_products


def test_float32_lanczos_does_not_stop_early_under_a_large_outlier():
    g = torch.Generator().manual_seed(15)
    values = torch.rand(1000, generator=g, dtype=F64) * 0.1
    values[0], values[1] = 1e3, -0.05
    result = extremal_eigs(DenseOperator(torch.diag(values).float()), top_k=2, bottom_k=2, tol=1e-4)
    truth = np.sort(values.numpy())
    assert result.n_steps >= 10, "a small genuine beta under the outlier's scale is not a breakdown"
    # float32 resolves eigenvalues to about eps * |A| = 1.2e-4 here; converged means residual <= 10 eps |A|
    assert result.top_eigenvalues[0] == pytest.approx(1e3, rel=1e-6)
    np.testing.assert_allclose(result.top_eigenvalues[1], truth[-2], atol=2e-3)
    np.testing.assert_allclose(result.bottom_eigenvalues, truth[:2], atol=2e-3)
    assert result.bottom_eigenvalues[0] < -0.04


def test_repeated_eigenvalues_are_found_with_their_multiplicity():
    g = torch.Generator().manual_seed(16)
    x = torch.randn(40, 5, generator=g, dtype=F64)
    block = x.T @ x
    op = DenseOperator(torch.kron(torch.eye(3, dtype=F64), block))  # each eigenvalue three times
    result = extremal_eigs(op, top_k=4, bottom_k=3, tol=1e-10)
    spectrum = np.linalg.eigvalsh(op.matrix.numpy())
    assert result.converged
    np.testing.assert_allclose(result.top_eigenvalues, spectrum[::-1][:4], rtol=1e-8)
    np.testing.assert_allclose(result.bottom_eigenvalues, spectrum[:3], rtol=1e-8)
    low_rank = DenseOperator(x[:2].T @ x[:2])  # rank 2 in R^5: zero three times
    result = extremal_eigs(low_rank, top_k=2, bottom_k=3, tol=1e-10)
    np.testing.assert_allclose(result.bottom_eigenvalues, 0.0, atol=1e-12)
    assert result.top_eigenvalues.min() > 1.0


def test_unconverged_results_say_so():
    op = DenseOperator(random_symmetric(500, seed=11))
    result = extremal_eigs(op, top_k=3, tol=1e-12, max_steps=10)
    assert not result.converged and result.n_steps == 10
    assert not np.all(result.top_converged)
    assert np.all(result.top_residuals > 1e-12 * np.abs(result.top_eigenvalues))


def test_eigenvectors_have_the_reported_residuals():
    a = random_symmetric(200, seed=12)
    result = extremal_eigs(DenseOperator(a), top_k=2, bottom_k=2, tol=1e-8, return_eigenvectors=True)
    for values, vectors, residuals in (
        (result.top_eigenvalues, result.top_eigenvectors, result.top_residuals),
        (result.bottom_eigenvalues, result.bottom_eigenvectors, result.bottom_residuals),
    ):
        actual = (vectors @ a - torch.as_tensor(values)[:, None] * vectors).norm(dim=1).numpy()
        np.testing.assert_allclose(vectors.norm(dim=1).numpy(), 1.0, atol=1e-10)
        np.testing.assert_allclose(actual, residuals, rtol=1e-3, atol=1e-12)


def test_results_serialise_to_json_without_heavy_payloads():
    op = DenseOperator(random_symmetric(100, seed=13))
    eigs = json.loads(extremal_eigs(op, top_k=2, bottom_k=1, return_eigenvectors=True).to_json())
    assert {"top_eigenvalues", "bottom_eigenvalues", "top_residuals", "top_converged", "n_products",
            "wall_time_s"} <= set(eigs)
    assert "top_eigenvectors" not in eigs
    density = json.loads(slq(op, 20, 3).to_json())
    assert len(density["nodes"]) == 3 and len(density["weights"][0]) == 20
    assert density["trace_stderr"] > 0
    tr = json.loads(hutchinson(op, 10).to_json())
    assert {"estimate", "stderr", "method"} <= set(tr)
    assert json.loads(slq(op, 5, 1).to_json())["trace_stderr"] is None  # one probe: no stderr, not NaN


def test_lockstep_probes_equal_separate_runs():
    op = DenseOperator(random_symmetric(150, seed=14))
    together = lanczos(op, 30, n_probes=3, seed=5)
    from hessian_probe.linalg import random_probes

    starts = random_probes(3, 150, seed=5, dtype=F64, device="cpu")
    for i in range(3):
        alone = lanczos(op, 30, start=starts[i : i + 1])
        np.testing.assert_allclose(together.alphas[i], alone.alphas[0], rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(together.betas[i], alone.betas[0], rtol=1e-10, atol=1e-12)
    assert together.n_products == 90


def test_bad_kernel_arguments_are_refused():
    op = DenseOperator(random_symmetric(10, seed=0))
    with pytest.raises(ValueError, match="at least one eigenvalue"):
        extremal_eigs(op, top_k=0)
    with pytest.raises(ValueError, match="cannot find"):
        extremal_eigs(op, top_k=6, bottom_k=5)
    with pytest.raises(ValueError, match="half precision"):
        lanczos(DenseOperator(torch.eye(4, dtype=torch.bfloat16)), 2)
    with pytest.raises(ValueError, match="unknown eigen method"):
        extremal_eigs(op, method="arnoldi")
    with pytest.raises(ValueError, match="reorth"):
        lanczos(op, 3, reorth="partial")
    with pytest.raises(ValueError, match="shape"):
        op.matmat(torch.zeros(2, 11, dtype=F64))


def test_float32_residuals_bound_the_eigenvalue_error_and_orthogonality_is_checked_in_float64():
    """Issue 19: in float32 the Ritz estimate beta |u_m| can fall to 0.0 while the eigenvalues are
    off by 1e-5; the reported residual must bound |theta - lambda| (an eigenvalue of a symmetric
    matrix lies within |A y - theta y| of theta), and the orthogonality test must be the float64
    Gram matrix of the stored basis, not its own float32 rounding."""
    from hessian_probe.linalg.lanczos import LanczosProcess
    from hessian_probe.linalg.probes import random_probes

    torch.manual_seed(0)
    n = 700
    q, _ = torch.linalg.qr(torch.randn(n, n, dtype=torch.float64))
    values = torch.cat([torch.tensor([2.0, 1.97, 1.95]), torch.rand(n - 3, dtype=torch.float64)])
    matrix = ((q * values) @ q.T).float()
    exact = torch.linalg.eigvalsh(matrix.double()).flip(0).numpy()
    result = extremal_eigs(DenseOperator(matrix), 3, 1, tol=1e-6)
    for theta, residual in zip(result.top_eigenvalues, result.top_residuals):
        assert residual > 0
        assert np.min(np.abs(exact - theta)) <= residual
    process = LanczosProcess(DenseOperator(matrix), random_probes(1, n, seed=0, dtype=torch.float32, device="cpu"),
                             reorth="full", capacity=41)
    for _ in range(40):
        process.step()
    basis = process.basis[:41, 0].double()
    gram = basis @ basis.T
    assert process.orthogonality_error(0) == pytest.approx(
        float((gram - torch.eye(41, dtype=torch.float64)).abs().max()), rel=1e-9, abs=1e-12)


def test_reported_products_count_every_product_and_a_start_vector_warm_starts():
    """n_products counts float32's residual checks too (one product per Ritz pair); Lanczos started
    near the top eigenvector converges in a few steps."""
    spectrum = torch.linspace(0.1, 1.0, 40, dtype=torch.float64)
    spectrum[-1] = 3.0
    op = DenseOperator(torch.diag(spectrum).float())
    calls = []
    matmat = op.matmat
    op.matmat = lambda v: calls.append(len(v)) or matmat(v)
    result = extremal_eigs(op, 2, 1, tol=1e-4)
    assert result.n_products == sum(calls) and result.converged
    calls.clear()
    unchecked = extremal_eigs(op, 2, 1, tol=1e-4, measure_residuals=False)
    assert unchecked.n_products == sum(calls) == result.n_products - 3
    near_top = torch.full((1, 40), 1e-3)  # the top eigenvector, slightly off (as training moves it)
    near_top[0, -1] = 1
    warm, cold = extremal_eigs(op, 1, 0, tol=1e-4, start=near_top), extremal_eigs(op, 1, 0, tol=1e-4)
    assert warm.n_steps <= 3 < cold.n_steps and warm.top_eigenvalues[0] == pytest.approx(3.0, rel=1e-5)


def test_a_lanczos_basis_that_cannot_fit_in_memory_is_a_clear_error_not_an_oom_kill(monkeypatch):
    import importlib

    lanczos_module = importlib.import_module("hessian_probe.linalg.lanczos")
    from hessian_probe.errors import InputError
    from hessian_probe.linalg import extremal_eigs as eigs
    from hessian_probe.operators import DenseOperator

    g = torch.Generator().manual_seed(0)
    a = torch.randn(60, 60, generator=g, dtype=torch.float64)
    op = DenseOperator(a + a.T)
    free = eigs(op, 2, 0, tol=1e-10, max_steps=40)
    monkeypatch.setattr(lanczos_module, "host_rows_that_fit", lambda row_bytes: 45)  # room for 45 steps
    assert np.allclose(eigs(op, 2, 0, tol=1e-10, max_steps=40).top_eigenvalues, free.top_eigenvalues, rtol=1e-12)
    monkeypatch.setattr(lanczos_module, "host_rows_that_fit", lambda row_bytes: 5)  # 5 vectors, then no more
    with pytest.raises(InputError, match="the Lanczos basis needs another .* holds 5 step"):
        eigs(op, 2, 0, tol=1e-10, max_steps=40)
