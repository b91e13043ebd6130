"""Batch-noise stability against ground truth: least squares with exact per-example Hessians, every
batch enumerated; the recursions against torch.optim step by step; batch sharpness and Adam's
second moment at batch size B against dense float64 values and enumeration."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from torch import nn

from hessian_probe import make_problem
from hessian_probe.analysis.batch_scan import batch_scan, measure_batch
from hessian_probe.analysis.lr import learning_rates
from hessian_probe.analysis.noise import SubspaceNoise, effective_noise, gradient_moments
from hessian_probe.analysis.stability import (
    adam_mean_square_threshold,
    mean_square_threshold,
    quadratic_threshold,
    recursion,
    spectral_radius,
)
from hessian_probe.problem import split_batches

F64 = torch.float64


@pytest.fixture(scope="module")
def least_squares():
    """Mean-MSE linear regression with one output on N = 8 examples in d = 3: h_i = 2 x_i x_i^T exactly."""
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(8, 3, generator=generator, dtype=F64) * torch.tensor([1.5, 1.0, 0.5], dtype=F64)
    y = torch.randn(8, 1, generator=generator, dtype=F64)
    per_example = [2 * np.outer(v, v) for v in x.numpy()]
    return x, y, per_example


def exact_noise(per_example: list[np.ndarray]) -> SubspaceNoise:
    """Sigma from every single example (B = 1 has x(1) = 1): the exact per-example covariance."""
    mean = sum(per_example) / len(per_example)
    return SubspaceNoise.from_batches(mean, [(1, h) for h in per_example], len(per_example))


def enumerated_growth(optimizer: str, lr: float, momentum: float, per_example: list[np.ndarray], batch_size: int,
                      steps: int = 1500) -> float:
    """Growth per step of E[z z^T] when E runs over every batch of B examples out of N (all subsets,
    equally likely), iterating the second moments directly: Z <- mean_B A(H_B) Z A(H_B)^T."""
    batches = [sum(per_example[i] for i in c) / batch_size
               for c in itertools.combinations(range(len(per_example)), batch_size)]
    maps = [recursion(optimizer, lr, momentum, h)[0] for h in batches]
    z = np.eye(len(maps[0]))
    growth = 1.0
    for _ in range(steps):
        z = sum(a @ z @ a.T for a in maps) / len(maps)
        growth = np.trace(z)
        z /= growth
    return float(growth)


def enumerated_threshold(optimizer: str, momentum: float, per_example: list[np.ndarray], batch_size: int) -> float:
    lo, hi = 1e-3, 10.0
    while hi / lo > 1.002:
        mid = np.sqrt(lo * hi)
        lo, hi = (mid, hi) if enumerated_growth(optimizer, mid, momentum, per_example, batch_size) < 1 else (lo, mid)
    return lo


def closed_form_sgd(per_example: list[np.ndarray], batch_size: int) -> float:
    """eta where T = I - eta (H (x) I + I (x) H) + eta^2 [H (x) H + x(B)(S - H (x) H)] reaches radius 1,
    S = (1/N) sum h_i (x) h_i, x(B) = (N - B)/(B (N - 1)) (batches without replacement; docs/theory.md 3)."""
    n, d = len(per_example), per_example[0].shape[0]
    h = sum(per_example) / n
    s = sum(np.kron(p, p) for p in per_example) / n
    eye, hh, x = np.eye(d), np.kron(h, h), effective_noise(batch_size, n)
    lo, hi = 1e-6, 10.0
    for _ in range(100):
        eta = 0.5 * (lo + hi)
        t = np.eye(d * d) - eta * (np.kron(h, eye) + np.kron(eye, h)) + eta**2 * (hh + x * (s - hh))
        lo, hi = (eta, hi) if np.max(np.abs(np.linalg.eigvals(t))) < 1 else (lo, eta)
    return lo


@pytest.mark.parametrize("batch_size", [2, 4])
def test_sgd_mean_square_threshold_equals_the_closed_form_and_the_enumerated_second_moments(least_squares, batch_size):
    _, _, per_example = least_squares
    noise = exact_noise(per_example)
    ours = mean_square_threshold("sgd", noise.mean, noise.at(batch_size))
    closed = closed_form_sgd(per_example, batch_size)
    direct = enumerated_threshold("sgd", 0.0, per_example, batch_size)
    assert ours == pytest.approx(closed, rel=0.02) and ours == pytest.approx(direct, rel=0.02)
    assert ours < quadratic_threshold("sgd", float(np.linalg.eigvalsh(noise.mean)[-1])) * 0.98  # noise matters here


@pytest.mark.parametrize("batch_size,optimizer", [(2, "momentum"), (4, "momentum"), (2, "nesterov")])
def test_momentum_mean_square_threshold_equals_the_enumerated_second_moments(least_squares, batch_size, optimizer):
    _, _, per_example = least_squares
    noise = exact_noise(per_example)
    ours = mean_square_threshold(optimizer, noise.mean, noise.at(batch_size), momentum=0.9)
    direct = enumerated_threshold(optimizer, 0.9, per_example, batch_size)
    assert ours == pytest.approx(direct, rel=0.02)
    noiseless = quadratic_threshold(optimizer, float(np.linalg.eigvalsh(noise.mean)[-1]), 0.9)
    assert ours < 0.5 * noiseless  # heavy ball is far below 2(1 + rho)/lambda under this much noise


def test_without_noise_the_radius_crosses_one_at_the_quadratic_thresholds():
    mean = np.diag([3.0, 1.0])
    zero = np.zeros((4, 4))
    for optimizer, momentum in (("sgd", 0.0), ("momentum", 0.9), ("nesterov", 0.5)):
        limit = quadratic_threshold(optimizer, 3.0, momentum)
        assert spectral_radius(optimizer, 0.999 * limit, momentum, mean, zero) < 1
        assert spectral_radius(optimizer, 1.001 * limit, momentum, mean, zero) > 1
        assert mean_square_threshold(optimizer, mean, zero, momentum=momentum) == limit
    assert spectral_radius("sgd", 0.999 * 0.5, 0.0, mean + np.eye(2), zero) < 1  # wd = 1: 2 / (3 + 1)
    assert mean_square_threshold("sgd", mean, zero, weight_decay=1.0) == pytest.approx(0.5)
    assert adam_mean_square_threshold(mean, zero, 0.9) == pytest.approx(38 / 3.0)
    assert mean_square_threshold("sgd", np.diag([1.0, -1.0]), zero) is None


def test_a_flat_noisy_direction_ends_the_bisection():
    """Curvature 1e-12 with noise: the threshold 2h/(h^2 + s^2) of such a direction is below what
    float64 resolves, and the search ends (None, or a rate 1e8 below the stiff direction's) instead
    of halving forever."""
    mean = np.diag([1.0, 1e-12])
    noise = np.zeros((4, 4))
    noise[3, 3] = 1.0  # variance of the second direction's curvature
    assert mean_square_threshold("sgd", mean, noise) is None
    momentum = mean_square_threshold("momentum", mean, noise, momentum=0.9)
    assert momentum is None or momentum < 1e-6


@pytest.mark.parametrize("optimizer,options", [("momentum", dict(momentum=0.8)),
                                               ("nesterov", dict(momentum=0.8, nesterov=True)), ("sgd", {})])
def test_recursions_follow_torch_optim_step_by_step(optimizer, options):
    """z' = A(H_t) z reproduces torch.optim.SGD on f_t(w) = w^T H_t w / 2 with a new H_t every step."""
    generator = torch.Generator().manual_seed(0)
    lr, momentum = 0.3, options.get("momentum", 0.0)
    w = torch.randn(3, generator=generator, dtype=F64, requires_grad=True)
    opt = torch.optim.SGD([w], lr=lr, **options)
    x_prev = w.detach().numpy().copy()
    z = None
    for _ in range(8):
        a = torch.randn(3, 3, generator=generator, dtype=F64)
        h = (a @ a.T / 3).numpy()
        x = w.detach().numpy().copy()
        if z is None:  # torch's first step: the buffer starts at the first gradient (b = 0 before it)
            z = np.concatenate([x,
                                x_prev if optimizer == "momentum" else np.zeros(3)])[: 3 if optimizer == "sgd" else 6]
        z = recursion(optimizer, lr, momentum, h)[0] @ z
        opt.zero_grad()
        (0.5 * w @ torch.from_numpy(h) @ w).backward()
        opt.step()
        assert np.allclose(z[:3], w.detach().numpy(), rtol=1e-12, atol=1e-12)


def test_settled_adam_is_heavy_ball_on_the_preconditioned_problem():
    """torch Adam with v held fixed (beta2 -> 1, a step count that makes both bias corrections 1), m starting
    at 0, on w^T H w / 2:
    x' = x - lr (1 - beta1) D^-1 H x + beta1 (x - x_prev) with D = sqrt(v) + eps."""
    generator = torch.Generator().manual_seed(1)
    a = torch.randn(3, 3, generator=generator, dtype=F64)
    h = a @ a.T / 3
    v = torch.rand(3, generator=generator, dtype=F64) + 0.5
    lr, beta1, eps = 0.05, 0.9, 1e-8
    w = torch.randn(3, generator=generator, dtype=F64, requires_grad=True)
    opt = torch.optim.Adam([w], lr=lr, betas=(beta1, 1 - 1e-15), eps=eps)
    opt.state[w] = {"step": torch.tensor(1e18, dtype=F64), "exp_avg": torch.zeros(3, dtype=F64),
                    "exp_avg_sq": v.clone()}
    d = (v.sqrt() + eps).numpy()
    x = x_prev = w.detach().numpy().copy()
    for _ in range(10):
        x, x_prev = x - lr * (1 - beta1) * (h.numpy() @ x) / d + beta1 * (x - x_prev), x
        opt.zero_grad()
        (0.5 * w @ h @ w).backward()
        opt.step()
        assert np.allclose(x, w.detach().numpy(), rtol=1e-10, atol=1e-12)


def test_pooled_noise_from_sampled_batches_gives_the_exact_thresholds(least_squares):
    """The whole pipeline (batch_scan's projections on every direction, the pooled Sigma over batch
    sizes 2 and 4) against the exact thresholds: sampling error only."""
    x, y, per_example = least_squares
    problem = make_problem(nn.Linear(3, 1, bias=False).double(), (x, y), "mse", dtype=F64)
    result = learning_rates(problem, batch_sizes=[2, 4, 8], n_batches=400, subspace=3, optimizers=("sgd", "momentum"),
                            tol=1e-10)
    exact = exact_noise(per_example)
    for b in (2, 4):
        mss = result.row(b).models
        assert mss["sgd_mss"] == pytest.approx(mean_square_threshold("sgd", exact.mean, exact.at(b)), rel=0.05)
        assert mss["momentum_mss"] == pytest.approx(
            mean_square_threshold("momentum", exact.mean, exact.at(b), momentum=0.9), rel=0.05)
    assert result.row(8).models["sgd_mss"] == pytest.approx(2 / np.linalg.eigvalsh(exact.mean)[-1], rel=1e-4)
    assert np.allclose(np.linalg.eigvalsh(result.noise.mean), np.linalg.eigvalsh(exact.mean), rtol=1e-8, atol=1e-10)


def test_batch_sharpness_equals_its_dense_value():
    from helpers import dense_hessian

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3)).double()
    x, y = torch.randn(40, 5, dtype=F64), torch.randint(0, 3, (40,))
    problem = make_problem(model, (x, y), "cross_entropy", dtype=F64)
    idx = torch.arange(0, 40, 3)
    batch = problem.with_batches(split_batches(x[idx], y[idx], 4))
    measured = measure_batch(batch, "hessian", batch_size=len(idx), index=0, tol=1e-10, seed=0)
    hessian = dense_hessian(model, torch.nn.functional.cross_entropy, x[idx], y[idx])
    g = torch.func.grad(lambda p: torch.nn.functional.cross_entropy(
        torch.func.functional_call(model, p, (x[idx],)), y[idx]))(dict(model.named_parameters()))
    g = torch.cat([t.reshape(-1) for t in g.values()]).detach()
    assert measured.batch_sharpness == pytest.approx(float(g @ hessian @ g / (g @ g)), rel=1e-8)


def test_adam_second_moment_at_batch_size_b_equals_enumeration_over_batches():
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2)).double()
    x, y = torch.randn(7, 4, dtype=F64), torch.randint(0, 2, (7,))
    problem = make_problem(model, (x, y), "cross_entropy", dtype=F64, chunk_size=3)
    moments = gradient_moments(problem)
    per_example = torch.stack([make_problem(model, (x[i:i + 1], y[i:i + 1]), "cross_entropy", dtype=F64).gradient()
                               for i in range(7)])
    assert torch.allclose(moments.mean, per_example.mean(0), rtol=1e-10, atol=1e-14)
    assert torch.allclose(moments.mean_square, per_example.square().mean(0), rtol=1e-10, atol=1e-14)
    for b in (1, 3, 7):
        batches = [per_example[list(c)].mean(0) for c in itertools.combinations(range(7), b)]
        expected = torch.stack([g.square() for g in batches]).mean(0)
        assert torch.allclose(moments.batch_second_moment(b), expected, rtol=1e-10, atol=1e-14)


def test_scan_projections_are_the_dense_batch_hessians_in_the_reference_subspace(least_squares):
    x, y, _ = least_squares
    problem = make_problem(nn.Linear(3, 1, bias=False).double(), (x, y), "mse", dtype=F64)
    scan = batch_scan(problem, batch_sizes=[4, 8], n_batches=3, subspace=2, tol=1e-10)
    q = scan.full.eigs.top_eigenvectors
    assert q.shape == (2, 3) and np.allclose(scan.full.projected, np.diag(scan.full.eigs.top_eigenvalues), atol=1e-10)
    from hessian_probe.analysis.batch_scan import batch_indices

    for m in scan.measurements:
        xb = x[batch_indices(8, 4, 0, m.index)]
        dense = (q @ (2 * xb.T @ xb / 4) @ q.T).numpy()
        assert np.allclose(m.projected, dense, rtol=1e-10, atol=1e-12)
