"""The training-loop helpers (issue 16): the monitor's rows equal direct eigs calls and its CSV holds
them; the learner's rules give the textbook heavy-ball optimum on an exact quadratic and set a
torch.optim.SGD's rate and momentum."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hessian_probe import curvature_operator, extremal_eigs, make_problem
from hessian_probe.analysis.learner import LearnerSuggestion, extremes, heavy_ball, sgd_rate, suggest, with_batch_noise
from hessian_probe.analysis.stability import spectral_radius
from hessian_probe.loading.builtin_models import mlp
from hessian_probe.loading.datasets import load_digits
from hessian_probe.operators import DenseOperator
from hessian_probe.training import CurvatureLearner, SharpnessMonitor


def test_the_monitors_rows_equal_direct_eigs_calls_and_its_csv(tmp_path):
    torch.manual_seed(0)
    x, y = load_digits(200, seed=0)
    model = mlp(hidden=8).double()
    x = x.double()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.5)
    monitor = SharpnessMonitor(model, F.cross_entropy, (x, y), every=5, tol=1e-9, max_steps=60,
                               csv_path=tmp_path / "sharpness.csv", record_loss=True)
    direct = []
    for step in range(16):
        if monitor.step(step, optimizer) is not None:
            problem = make_problem(model, (x, y), F.cross_entropy)
            truth = extremal_eigs(curvature_operator(problem, "hessian"), 1, 0, tol=1e-12, seed=3)
            direct.append((truth.top_eigenvalues[0], problem.loss_value()))
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
    assert [r.step for r in monitor.rows] == [0, 5, 10, 15]
    for row, (lambda_max, loss) in zip(monitor.rows, direct):
        assert row.converged and row.lambda_max == pytest.approx(lambda_max, rel=1e-8)
        assert row.loss == pytest.approx(loss, rel=1e-12)
        assert row.lr == 0.5 and row.line_sgd == pytest.approx(4.0) and row.line_momentum == pytest.approx(6.0)
    assert monitor.rows[-1].lanczos_steps < monitor.rows[0].lanczos_steps  # warm-started from the last vector
    with (tmp_path / "sharpness.csv").open() as fh:
        saved = list(csv.DictReader(fh))
    assert [float(r["lambda_max"]) for r in saved] == [r.lambda_max for r in monitor.rows]
    assert monitor.n_products == sum(int(r["n_products"]) for r in saved) > 0
    with pytest.raises(FileExistsError, match="overwrite=True"):  # a user's file is never replaced unasked
        SharpnessMonitor(model, F.cross_entropy, (x, y), csv_path=tmp_path / "sharpness.csv")
    SharpnessMonitor(model, F.cross_entropy, (x, y), csv_path=tmp_path / "sharpness.csv", overwrite=True)


def test_the_monitor_logs_to_a_tensorboard_writer_it_is_given():
    class Writer:
        def __init__(self) -> None:
            self.scalars = []

        def add_scalar(self, tag, value, step):
            self.scalars.append((tag, value, step))

    torch.manual_seed(0)
    x, y = load_digits(64, seed=0)
    model, writer = mlp(hidden=4), Writer()
    monitor = SharpnessMonitor(model, F.cross_entropy, (x, y), every=2, tensorboard=writer)
    for step in range(3):
        monitor.step(step, torch.optim.SGD(model.parameters(), lr=0.5))
    tags = ["curvature/lambda_max", "curvature/converged", "curvature/line_sgd"]
    assert [(t, s) for t, _, s in writer.scalars] == [(t, s) for s in (0, 2) for t in tags]
    assert writer.scalars[0][1] == monitor.rows[0].lambda_max and writer.scalars[2][1] == 4.0


def test_the_learners_rules_are_the_textbook_heavy_ball_optimum_on_a_quadratic():
    """On H with spectrum [mu, L], Lanczos run to P steps finds mu and L exactly; the heavy ball at
    the learner's (lr, rho) contracts every eigen-direction at sqrt(rho) = (sqrt k - 1)/(sqrt k + 1),
    the optimum over a grid of (lr, rho); gradient descent at 2/(L + mu) at (k - 1)/(k + 1)."""
    spectrum = np.array([0.5, 0.8, 1.3, 2.0, 3.1, 5.0, 8.0])
    mu, big = spectrum.min(), spectrum.max()
    q, _ = np.linalg.qr(np.random.default_rng(0).standard_normal((7, 7)))
    op = DenseOperator(torch.tensor(q @ np.diag(spectrum) @ q.T))
    found = suggest(op, lanczos_steps=7)
    lr, rho = heavy_ball(big, mu)
    kappa = big / mu
    assert found.lambda_max == pytest.approx(big, rel=1e-6) and found.mu == pytest.approx(mu, rel=1e-6)
    assert found.heavy_ball_lr == pytest.approx(4 / (np.sqrt(big) + np.sqrt(mu)) ** 2, rel=1e-6)
    assert found.heavy_ball_momentum == pytest.approx(((np.sqrt(kappa) - 1) / (np.sqrt(kappa) + 1)) ** 2, rel=1e-6)
    assert found.sgd_lr == pytest.approx(2 / (big + mu), rel=1e-6)

    def rate(step: float, momentum: float) -> float:  # the heavy ball's worst contraction over the spectrum
        return max(max(abs(np.linalg.eigvals(np.array([[1 + momentum - step * h, -momentum], [1, 0]]))))
                   for h in spectrum)

    assert rate(lr, rho) == pytest.approx(np.sqrt(rho), rel=1e-6)
    grid = [rate(a, b) for a in np.linspace(0.05, 0.6, 56) for b in np.linspace(0, 0.95, 96)]
    assert min(grid) >= np.sqrt(rho) * (1 - 1e-6)
    gd = max(abs(1 - sgd_rate(big, mu) * h) for h in spectrum)
    assert gd == pytest.approx((kappa - 1) / (kappa + 1), rel=1e-9)


def test_mu_leaves_out_the_heavy_node_near_zero_or_is_the_median():
    nodes, weights = [1e-5, 1.0, 5.0, 10.0], [0.9, 0.04, 0.03, 0.03]
    assert extremes(nodes, weights) == (10.0, 1.0)
    assert extremes(nodes, weights, "median") == (10.0, 3.0)
    assert extremes([-2.0, 0.5, 4.0], [0.3, 0.3, 0.4]) == (4.0, 0.5)  # no heavy node: the smallest |theta|
    with pytest.raises(ValueError, match="mu rule"):
        extremes(nodes, weights, "mean")


def test_the_learner_sets_sgds_rate_and_momentum_every_k_steps():
    torch.manual_seed(0)
    x, y = load_digits(128, seed=0)
    model = mlp(hidden=8)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    learner = CurvatureLearner(model, F.cross_entropy, (x, y), optimizer, every=10, heavy_ball=True, safety=0.5)
    for step in range(25):
        learner.step(step)
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
    assert [s for s, _ in learner.history] == [0, 10, 20]
    last = learner.history[-1][1]
    assert optimizer.param_groups[0]["lr"] == last.heavy_ball_lr and optimizer.param_groups[0]["momentum"] == \
        last.heavy_ball_momentum
    assert last.safety == 0.5 and learner.n_products == sum(s.n_products for _, s in learner.history)
    with pytest.raises(TypeError, match="torch.optim.SGD"):
        CurvatureLearner(model, F.cross_entropy, (x, y), torch.optim.Adam(model.parameters()))


def test_the_batch_noise_correction_caps_the_rates_at_the_mean_square_thresholds():
    base = LearnerSuggestion(lambda_max=2.0, mu=0.02, mu_rule="heavy-node", sgd_lr=0.5 * sgd_rate(2.0, 0.02),
                             heavy_ball_lr=0.5 * heavy_ball(2.0, 0.02)[0], heavy_ball_momentum=heavy_ball(2.0, 0.02)[1],
                             safety=0.5, lanczos_steps=20, n_products=20)
    curvatures = [1.0, 3.0, 2.0, 6.0]  # a = 3, s^2 = 14/3: SGD's threshold 2a / (a^2 + s^2) = 6 / (41/3)
    noisy = with_batch_noise(base, curvatures, batch_size=16)
    assert noisy.batch_curvature == 3.0 and noisy.batch_curvature_std == pytest.approx(np.sqrt(14 / 3))
    assert noisy.noise_sgd_lr == pytest.approx(0.5 * 18 / 41, rel=2e-3)  # bisection to rtol 1e-3
    assert noisy.sgd_lr == noisy.noise_sgd_lr < base.sgd_lr  # the cap binds: 0.22 < 0.495
    rho, heavy = noisy.heavy_ball_momentum, noisy.noise_heavy_ball_lr / 0.5  # at the threshold the radius is 1
    mean, var = np.array([[3.0]]), np.array([[14 / 3]])
    assert spectral_radius("momentum", heavy * 0.999, rho, mean, var) < 1 < spectral_radius("momentum", heavy * 1.002,
                                                                                              rho, mean, var)
    assert noisy.heavy_ball_lr == min(base.heavy_ball_lr, noisy.noise_heavy_ball_lr)
    quiet = with_batch_noise(base, [0.01, 0.01, 0.01], batch_size=16)  # flat along v: the rule's rates stand
    assert quiet.sgd_lr == base.sgd_lr and quiet.heavy_ball_lr == base.heavy_ball_lr
    with pytest.raises(ValueError, match="at least two"):
        with_batch_noise(base, [1.0], batch_size=16)


def test_the_learner_with_a_batch_size_measures_the_noise_along_its_top_ritz_vector():
    torch.manual_seed(0)
    x, y = load_digits(128, seed=0)
    x = x.double()
    model = mlp(hidden=8).double()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    learner = CurvatureLearner(model, F.cross_entropy, (x, y), optimizer, every=10, batch_size=8, noise_batches=4)
    suggestion = learner.step(0)
    v = suggestion.top_vector
    problem = make_problem(model, (x, y), F.cross_entropy)
    truth = extremal_eigs(curvature_operator(problem, "hessian"), 1, 0, tol=1e-10)
    assert abs(float(v @ curvature_operator(problem, "hessian").matvec(v))) == pytest.approx(
        truth.top_eigenvalues[0], rel=1e-3)  # the Ritz vector of 20 steps: its Rayleigh quotient is lambda_max
    assert suggestion.batch_size == 8 and suggestion.n_products == suggestion.lanczos_steps + 4
    assert suggestion.batch_curvature_std > 0 and optimizer.param_groups[0]["lr"] == suggestion.sgd_lr == min(
        sgd_rate(suggestion.lambda_max, suggestion.mu), suggestion.noise_sgd_lr)
    again = CurvatureLearner(model, F.cross_entropy, (x, y), torch.optim.SGD(model.parameters(), lr=1e-3), every=10,
                             batch_size=8, noise_batches=4).step(0)
    assert again.batch_curvature == suggestion.batch_curvature  # seeded batches
    with pytest.raises(ValueError, match="noise_batches"):
        CurvatureLearner(model, F.cross_entropy, (x, y), optimizer, batch_size=8, noise_batches=1)


def test_the_lightning_callback_calls_the_monitor_after_each_step():
    pl = pytest.importorskip("lightning.pytorch")
    from hessian_probe.training.lightning import sharpness_callback

    torch.manual_seed(0)
    x, y = load_digits(96, seed=0)

    class Digits(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = mlp(hidden=8)

        def training_step(self, batch, batch_idx):
            inputs, targets = batch
            return F.cross_entropy(self.net(inputs), targets)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    module = Digits()
    monitor = SharpnessMonitor(module.net, F.cross_entropy, (x, y), every=5, tol=1e-6, max_steps=60)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8)
    trainer = pl.Trainer(max_steps=11, callbacks=[sharpness_callback(monitor)], logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         accelerator="cpu")
    trainer.fit(module, loader)
    assert [r.step for r in monitor.rows] == [0, 5, 10] and all(r.lr == 0.1 for r in monitor.rows)
    problem = make_problem(module.net, (x, y), F.cross_entropy)
    final = extremal_eigs(curvature_operator(problem, "hessian"), 1, 0, tol=1e-8).top_eigenvalues[0]
    assert monitor.rows[-1].lambda_max != pytest.approx(monitor.rows[0].lambda_max, rel=1e-6)  # training moved it
    assert final > 0
