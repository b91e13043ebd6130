"""Learning rate as a function of batch size: the scan against dense eigenvalues, the exact
least-squares stability threshold, the fit, the threshold formulas against simulated dynamics,
Adam's preconditioned operator, and `hessian-probe lr` on the digits MLP."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from helpers import adam_steps
from torch import nn

from hessian_probe import make_problem
from hessian_probe.analysis.batch_scan import batch_indices, batch_scan, default_batch_sizes, effective_noise
from hessian_probe.analysis.lr import fit_batch_size, momentum_threshold, nesterov_threshold, sgd_threshold
from hessian_probe.cli import main
from hessian_probe.demo import train_digits_mlp
from hessian_probe.loading.optimizer import read_optimizer_state
from hessian_probe.operators import DenseOperator
from hessian_probe.operators.preconditioned import PreconditionedOperator

F64 = torch.float64


@pytest.fixture(scope="module")
def least_squares():
    """Mean-MSE linear regression, one output: per-example Hessians h_i = 2 x_i x_i^T, exactly."""
    torch.manual_seed(0)
    n, d = 64, 4
    x = torch.randn(n, d, dtype=F64) * torch.tensor([2.0, 1.0, 0.7, 0.3], dtype=F64)
    y = torch.randn(n, 1, dtype=F64)
    problem = make_problem(nn.Linear(d, 1, bias=False).double(), (x, y), "mse", dtype=F64)
    return problem, x


def exact_stability_threshold(per_example: list[np.ndarray], batch_size: int) -> float:
    """eta_c(B): the step where the second-moment map of SGD on a quadratic has spectral radius 1,
    T = I - eta (H kron I + I kron H) + eta^2 [H kron H + (S - H kron H)/B]
    (with replacement; docs/theory.md section 3)."""
    d = per_example[0].shape[0]
    H = sum(per_example) / len(per_example)
    S = sum(np.kron(h, h) for h in per_example) / len(per_example)
    eye, HH = np.eye(d), np.kron(H, H)

    def radius(eta: float) -> float:
        T = np.eye(d * d) - eta * (np.kron(H, eye) + np.kron(eye, H)) + eta**2 * (HH + (S - HH) / batch_size)
        return float(np.max(np.abs(np.linalg.eigvals(T))))

    lo, hi = 1e-9, 10.0
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if radius(mid) < 1 else (lo, mid)
    return lo


def test_scan_equals_dense_eigenvalues_and_tracks_the_exact_threshold(least_squares):
    problem, x = least_squares
    n = len(x)
    sizes = [2, 4, 8, 16, 32]
    scan = batch_scan(problem, "hessian", batch_sizes=sizes + [n], n_batches=200, tol=1e-10, seed=0)
    for m in scan.measurements:  # every batch, against eigvalsh of its dense Hessian (2/B) X_b^T X_b
        xb = x[batch_indices(n, m.batch_size, 0, m.index)]
        exact = torch.linalg.eigvalsh(2 * xb.T @ xb / m.batch_size)
        assert m.lambda_max == pytest.approx(float(exact[-1]), rel=1e-6)
        assert m.lambda_min == pytest.approx(float(exact[0]), rel=1e-6, abs=1e-9 * float(exact[-1]))
    assert scan.full.lambda_max == pytest.approx(float(torch.linalg.eigvalsh(2 * x.T @ x / n)[-1]), rel=1e-10)
    per_example = [2 * np.outer(v, v) for v in x.numpy()]
    ratios = []
    for row in scan.by_size():
        mean = float(np.mean(row.lambda_max))
        predicted = sgd_threshold(mean)
        assert predicted == pytest.approx(2 / mean, rel=1e-15)
        exact = exact_stability_threshold(per_example, row.batch_size)
        ratios.append(predicted / exact)
        print(f"B={row.batch_size:3d}  2/E lambda'(B) = {predicted:.4f}  eta_c(B) = {exact:.4f}  "
              f"ratio {predicted / exact:.3f}")
    # measured band: 1.97 (B=2), 1.43, 1.25, 1.14, 1.08 (B=32): sharpness alone over-estimates the
    # mean-square threshold at tiny batches and converges to it as B grows
    assert all(0.9 < r < 2.5 for r in ratios)
    assert ratios[-1] < 1.15 and ratios == sorted(ratios, reverse=True)


def test_fit_recovers_exact_parameters_and_reports_the_critical_batch():
    n = 5000
    sizes = np.array([8, 16, 32, 64, 128, 256, 512, 1024])
    x = np.array([effective_noise(int(b), n) for b in sizes])
    fit = fit_batch_size(x, 2.0 + 30.0 * x**0.7, np.full(len(x), 1e-3), n)
    assert fit.converged and fit.lambda_inf == pytest.approx(2.0, rel=1e-6)
    assert fit.kappa == pytest.approx(30.0, rel=1e-6) and fit.p == pytest.approx(0.7, rel=1e-6)
    x_c = (2.0 / 30.0) ** (1 / 0.7)
    assert fit.critical_batch_size == pytest.approx(n / (1 + x_c * (n - 1)), rel=1e-6)
    linear = fit_batch_size(x, 1.0 + 4.0 * x**1.3, np.full(len(x), 1e-3), n)  # outside [1/2, 1]: p pinned at 1
    assert linear.p == pytest.approx(1.0, abs=1e-6)
    assert not fit_batch_size(x[:2], x[:2], x[:2], n).converged


def _diverges(step: float, sharpness: float, momentum: float = 0.0, nesterov: bool = False, decay: float = 0.0) -> bool:
    """torch.optim.SGD on f(w) = sharpness/2 w^2 for 2,000 steps: does |w| blow up?"""
    w = torch.ones(1, dtype=F64, requires_grad=True)
    optimizer = torch.optim.SGD([w], lr=step, momentum=momentum, nesterov=nesterov, weight_decay=decay)
    for _ in range(2000):
        optimizer.zero_grad()
        (0.5 * sharpness * w.square()).sum().backward()
        optimizer.step()
    return not bool(w.abs() < 1e3)


@pytest.mark.parametrize("momentum,nesterov,decay", [(0.0, False, 0.0), (0.9, False, 0.0), (0.5, True, 0.0),
                                                     (0.9, False, 0.3)])
def test_thresholds_match_torch_sgd_on_a_quadratic(momentum, nesterov, decay):
    sharpness = 3.0
    if nesterov:
        limit = nesterov_threshold(sharpness, momentum, decay)
    elif momentum:
        limit = momentum_threshold(sharpness, momentum, decay)
    else:
        limit = sgd_threshold(sharpness, decay)
    assert not _diverges(0.99 * limit, sharpness, momentum, nesterov, decay)
    assert _diverges(1.01 * limit, sharpness, momentum, nesterov, decay)


def test_preconditioned_operator_has_the_eigenvalues_of_d_inverse_a():
    torch.manual_seed(1)
    a = torch.randn(7, 7, dtype=F64)
    a = a + a.T
    diagonal = torch.rand(7, dtype=F64) + 0.1
    op = PreconditionedOperator(DenseOperator(a), diagonal)
    dense = op.to_dense()
    assert torch.allclose(dense, dense.T)
    expected = np.sort(np.linalg.eigvals((a / diagonal[:, None]).numpy()).real)
    assert np.allclose(torch.linalg.eigvalsh(dense).numpy(), expected)


def test_optimizer_state_is_read_for_sgd_and_adam():
    model = nn.Linear(3, 2)
    names = [n for n, _ in model.named_parameters()]
    sgd = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.8, nesterov=True, weight_decay=1e-4)
    adam = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.8, 0.99), eps=1e-7)
    for optimizer in (sgd, adam):
        optimizer.zero_grad()
        model(torch.randn(4, 3)).sum().backward()
        optimizer.step()
    info = read_optimizer_state(sgd.state_dict(), names)
    assert (info.kind, info.momentum, info.nesterov, info.weight_decay) == ("sgd", 0.8, True, 1e-4)
    info = read_optimizer_state(adam.state_dict(), names)
    assert info.kind == "adam" and info.betas == (0.8, 0.99) and info.eps == 1e-7 and info.step == 1
    assert set(info.exp_avg_sq) == set(names) and info.exp_avg_sq["weight"].shape == (2, 3)
    assert read_optimizer_state(None, names).kind is None


def test_default_grid():
    assert default_batch_sizes(1797) == [16, 32, 64, 128, 256, 512, 1024, 1797]
    assert default_batch_sizes(20, smallest=8) == [8, 16, 20]


@pytest.fixture(scope="module")
def digits_lr(tmp_path_factory):
    out = tmp_path_factory.mktemp("lr")
    train_digits_mlp(out / "checkpoint.pt")
    result = CliRunner().invoke(main, ["lr", "--checkpoint", str(out / "checkpoint.pt"), "--model", "mlp", "--data",
                                       "digits", "--out", str(out / "lr"), "--quiet"])
    assert result.exit_code == 0, result.output
    return out, result.stdout


def test_lr_on_the_digits_mlp(digits_lr):
    out, stdout = digits_lr
    record = json.loads((out / "lr" / "lr.json").read_text())
    rows = record["rows"]
    full = record["full_sample"]["lambda_max"]
    assert [r["batch_size"] for r in rows] == default_batch_sizes(1797)
    means = [r["lambda_max_mean"] for r in rows[:-1]]
    # sharpness falls with the batch size toward the full sample's
    assert means[0] > means[-1] and means[0] > 1.3 * full and abs(means[-1] - full) < 0.1 * full
    assert np.corrcoef(np.log([r["batch_size"] for r in rows[:-1]]), means)[0, 1] < -0.8
    fit = record["fit"]
    assert fit["converged"] and abs(fit["lambda_inf"] - full) < 0.1 * full and 0.5 <= fit["p"] <= 1
    assert record["adam_model"] == "preconditioned"
    assert record["hyperparameters"]["sources"]["beta1"] == "checkpoint" and record["adam_state"]["source"] == "saved"
    for r in rows:
        assert r["lr_max_sgd"] == pytest.approx(2 / r["lambda_max_mean"])
        assert r["lr_max_adam"] == pytest.approx(3.8 / (0.1 * r["adam_sharpness_mean"]))
        assert r["lr_max_sgd_batch_sharpness"] == pytest.approx(2 / r["batch_sharpness_mean"])
        for opt, models in (("sgd", ("sgd", "sgd_mss", "sgd_batch_sharpness")),
                            ("momentum", ("momentum", "momentum_mss")),
                            ("nesterov", ("nesterov", "nesterov_mss")), ("adam", ("adam", "adam_mss"))):
            # conservative by construction: 0.6 x the smallest model, never above any of them
            assert r[f"lr_recommended_{opt}"] == pytest.approx(0.6 * min(r[f"lr_max_{m}"] for m in models))
    # heavy ball under batch noise: far below 2(1 + rho)/lambda' at the smallest batch, equal at B = N
    assert rows[0]["lr_max_momentum_mss"] < 0.5 * rows[0]["lr_max_momentum"]
    assert rows[-1]["lr_max_momentum_mss"] == pytest.approx(3.8 / full, rel=1e-3)
    assert record["noise"]["subspace"] == 8 and record["cost"]["operator_products"]["projections"]["products"] > 0
    with (out / "lr" / "lr.csv").open() as fh:
        table = list(csv.DictReader(fh))
    assert len(table) == len(rows) and float(table[0]["lr_max_sgd"]) == pytest.approx(rows[0]["lr_max_sgd"])
    assert {"lr.json", "lr.csv", "lr.png", "spectra_by_batch.png"} <= {p.name for p in (out / "lr").iterdir()}
    assert "maximal stable learning rates" in stdout and "critical batch size" in stdout
    assert "recommended learning rates" in stdout and "lr_state.pt" in stdout


def test_lr_without_optimizer_state_estimates_adams_second_moment(tmp_path):
    model = nn.Sequential(nn.Linear(64, 8), nn.Tanh(), nn.Linear(8, 10))
    torch.save(model.state_dict(), tmp_path / "w.pt")
    result = CliRunner().invoke(main, ["lr", "--checkpoint", str(tmp_path / "w.pt"), "--model", "mlp", "--model-arg",
                                       "hidden=8", "--data", "digits", "--samples", "200", "--batch-sizes", "25,50,100",
                                       "--batches", "2", "--density-steps", "0", "--momentum", "0.5", "--safety", "0.5",
                                       "--out", str(tmp_path / "o"), "--json", "--quiet"])
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert record["adam_model"] == "preconditioned" and record["adam_state"]["source"] == "estimated"
    assert record["hyperparameters"]["sources"]["momentum"] == "option"
    row = record["rows"][0]
    assert row["lr_max_momentum"] == pytest.approx(0.5 * 2 * 1.5 / row["lambda_max_mean"])
    assert row["lr_max_adam"] == pytest.approx(0.5 * 38 / row["adam_sharpness_mean"])
    assert [r["batch_size"] for r in record["rows"]] == [25, 50, 100, 200]
    assert not record["fit"]["converged"] and "at least 4" in record["warnings"][0]  # too few points: said so
    full = record["rows"][-1]  # N was not in --batch-sizes: its row still has every model
    assert full["lr_max_adam"] == pytest.approx(0.5 * 38 / full["adam_sharpness_mean"])
    assert full["lr_max_momentum_mss"] == pytest.approx(0.5 * 3.0 / full["lambda_max_mean"], rel=1e-6)


def test_lr_without_a_subspace_has_no_mean_square_thresholds(tmp_path):
    model = nn.Sequential(nn.Linear(64, 8), nn.Tanh(), nn.Linear(8, 10))
    torch.save(model.state_dict(), tmp_path / "w.pt")
    result = CliRunner().invoke(main, ["lr", "--checkpoint", str(tmp_path / "w.pt"), "--model", "mlp", "--model-arg",
                                       "hidden=8", "--data", "digits", "--samples", "100", "--batch-sizes", "25,50",
                                       "--batches", "2", "--density-steps", "0", "--subspace", "0",
                                       "--out", str(tmp_path / "o"), "--json", "--quiet"])
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert record["noise"] is None and record["cost"]["operator_products"].get("projections") is None
    for row in record["rows"]:
        assert all(row[f"lr_max_{opt}_mss"] is None for opt in ("sgd", "momentum", "nesterov", "adam"))
        assert row["lr_recommended_sgd"] == pytest.approx(
            0.6 * min(row["lr_max_sgd"], row["lr_max_sgd_batch_sharpness"]))


def test_measured_threshold_of_gradient_descent_on_least_squares(least_squares):
    """Full-batch GD on a quadratic diverges once |1 - lr lambda_1|^100 > 10, i.e. at
    lr = (1 + 10^(1/100)) / lambda_1: the bisection must find exactly that."""
    from hessian_probe.analysis.validate import TrainingRecipe, measure_threshold

    problem, x = least_squares
    top = float(torch.linalg.eigvalsh(2 * x.T @ x / len(x))[-1])
    predicted = 2 / top
    recipe = TrainingRecipe(steps=100, check_every=1, precision=1e-3)
    measured, = measure_threshold(problem, "sgd", len(x), predicted, recipe=recipe)
    expected = (1 + 10 ** (1 / 100)) / top
    assert measured.measured_lr <= measured.diverging_lr <= measured.measured_lr * 1.001
    assert measured.ratio == pytest.approx(expected / predicted, rel=0.02)


def test_validate_lr_reports_measured_against_predicted(digits_lr):
    out, _ = digits_lr
    result = CliRunner().invoke(main, ["validate-lr", "--checkpoint", str(out / "checkpoint.pt"), "--model", "mlp",
                                       "--data", "digits", "--out", str(out / "lr"), "--batch-sizes", "64,1024",
                                       "--optimizers", "sgd,adam", "--steps", "100", "--seeds", "1",
                                       "--precision", "0.03", "--quiet"])
    assert result.exit_code == 0, result.output
    record = json.loads((out / "lr" / "validation.json").read_text())
    rows = {(v["optimizer"], v["batch_size"]): v for v in record["validation"]}  # blow-up: one row each, as before
    assert set(rows) == {("sgd", 64), ("adam", 64), ("sgd", 1024), ("adam", 1024)}
    assert {v["criterion"] for v in record["validation"]} == {"blowup"}
    assert {v["criterion"] for v in record["validation_no_progress"]} == {"no_progress"}
    for v in record["validation"] + record["validation_no_progress"]:
        assert v["measured_lr"] < v["diverging_lr"] <= v["measured_lr"] * 1.03
        assert v["ratio"] == pytest.approx(v["measured_lr"] / v["predicted_lr"])
        assert v["ratio_to_recommended"] == pytest.approx(v["measured_lr"] / v["recommended_lr"])
        assert v["ratio_to_best"] == pytest.approx(v["measured_lr"] / v["best_prediction"])
    for v in record["validation_no_progress"]:  # no progress comes no later than blow-up
        assert v["measured_lr"] <= rows[(v["optimizer"], v["batch_size"])]["measured_lr"]
    # digits MLP, 100 steps, divergence = loss above 10x its start: SGD measured 1.2-1.5x the
    # linear-stability prediction (catapult dynamics survive a little above 2/lambda')
    assert all(0.7 < rows[("sgd", b)]["ratio"] < 2.0 for b in (64, 1024))
    saved = json.loads((out / "lr" / "lr.json").read_text())
    assert saved["validation"] == record["validation"] and "measured vs predicted" in result.stdout
    assert saved["validation_no_progress"] == record["validation_no_progress"]
    for name in ("validation.csv", "validation_no_progress.csv"):
        with (out / "lr" / name).open() as fh:
            assert len(list(csv.DictReader(fh))) == 4


def test_adam_moments_with_several_groups_are_not_guessed():
    model = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 4))
    names = [n for n, _ in model.named_parameters()]
    adam = torch.optim.AdamW([{"params": model[2].parameters()}, {"params": model[0].parameters()}], lr=1e-3)
    model(torch.randn(3, 4)).sum().backward()
    adam.step()
    info = read_optimizer_state(adam.state_dict(), names)
    assert info.kind == "adam" and info.exp_avg_sq is None and info.weight_decay is None
    assert any("parameter groups" in n for n in info.notes) and any("weight decay" in n for n in info.notes)


def test_bisection_reports_only_rates_it_tried(least_squares, monkeypatch):
    from hessian_probe.analysis import validate

    problem, _ = least_squares
    tried = []

    def outcome(blew_up):
        def run(problem, optimizer, lr, *args, **kwargs):
            tried.append(lr)
            return validate.RunOutcome(blew_up, 1.0, None if blew_up else 0.5)
        return run

    monkeypatch.setattr(validate, "train", outcome(False))
    stable, = validate.measure_threshold(problem, "sgd", 8, 1.0)
    assert stable.measured_lr == max(tried) and stable.diverging_lr is None and "no failure" in stable.note
    tried.clear()
    monkeypatch.setattr(validate, "train", outcome(True))
    unstable, = validate.measure_threshold(problem, "sgd", 8, 1.0)
    assert unstable.diverging_lr == min(tried) and unstable.measured_lr is None and "even at" in unstable.note


def test_a_rate_fails_when_most_seeds_fail_and_each_criterion_has_its_threshold(least_squares, monkeypatch):
    """Runs blow up above 1.0 on every seed, and above 0.5 on one seed in three; they make no progress
    above 0.25: the majority sees blow-up at 1.0, and no progress at 0.25."""
    from hessian_probe.analysis import validate

    problem, _ = least_squares
    seeds = validate.run_seeds(0, 8, "sgd", 3)
    runs = []

    def run(problem, optimizer, lr, batch_size, recipe, seed, adam_state=None):
        runs.append((lr, seed))
        blew = lr > 1.0 or (lr > 0.5 and seed == seeds[0])
        return validate.RunOutcome(blew, 1.0, None if blew else (2.0 if lr > 0.25 else 0.5))

    monkeypatch.setattr(validate, "train", run)
    recipe = validate.TrainingRecipe(precision=1e-3)
    blowup, no_progress = validate.measure_threshold(problem, "sgd", 8, 0.4, recipe=recipe,
                                                     criteria=("blowup", "no_progress"))
    assert blowup.measured_lr == pytest.approx(1.0, rel=2e-3) and blowup.seeds == 3
    assert no_progress.measured_lr == pytest.approx(0.25, rel=2e-3)
    assert len(runs) == len(set(runs))  # a run is never repeated: the criteria share them


def test_explicit_options_override_the_checkpoint_and_stale_results_are_refused(tmp_path):
    model = nn.Sequential(nn.Linear(64, 8), nn.Tanh(), nn.Linear(8, 10))
    sgd = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    torch.save({"model": model.state_dict(), "optimizer": sgd.state_dict()}, tmp_path / "sgd.pt")
    args = ["--checkpoint", str(tmp_path / "sgd.pt"), "--model", "mlp", "--model-arg", "hidden=8", "--data", "digits",
            "--samples", "120", "--batch-sizes", "15,30,60", "--batches", "2", "--density-steps", "0", "--quiet"]
    run = CliRunner().invoke(main, ["lr", *args, "--momentum", "0.5", "--out", str(tmp_path / "o"), "--json"])
    assert run.exit_code == 0, run.output
    hp = json.loads(run.stdout)["hyperparameters"]
    assert hp["momentum"] == 0.5 and hp["sources"]["momentum"].startswith("option")
    assert hp["weight_decay"] == 5e-4 and hp["sources"]["weight_decay"] == "checkpoint"
    other = nn.Sequential(nn.Linear(64, 8), nn.Tanh(), nn.Linear(8, 10))
    torch.save(other.state_dict(), tmp_path / "other.pt")
    args[1] = str(tmp_path / "other.pt")
    stale = CliRunner().invoke(main, ["validate-lr", *args[:-7], "--samples", "120", "--quiet", "--out",
                                      str(tmp_path / "o")])
    assert stale.exit_code == 2 and "another checkpoint" in stale.stderr


@pytest.fixture(scope="module")
def small_mlp_problem():
    """A briefly trained digits MLP on 300 examples (float64), with Adam's state."""
    from hessian_probe.loading.builtin_models import mlp
    from hessian_probe.loading.datasets import load_digits

    torch.manual_seed(0)
    x, y = load_digits(300, seed=0)
    model = mlp(hidden=16)
    adam = adam_steps(model, x, y, torch.nn.functional.cross_entropy, 40)
    problem = make_problem(model, (x, y), "cross_entropy", dtype=F64)
    info = read_optimizer_state(adam.state_dict(), [n for n, _ in model.named_parameters()])
    from hessian_probe.loading.optimizer import saved_adam_state

    return problem, saved_adam_state(info, problem)


def test_calibration_carries_the_measured_factor_down_and_the_noise_scale_up(small_mlp_problem, monkeypatch):
    """A fake trainer whose runs blow up above 0.8 x the best model at B0 = 32 for every optimizer:
    the factor is 0.8 (to the bisection's precision) and carries as a constant to B <= B0; the
    fitted noise scale c (> 1: more noise than measured) makes the mean-square threshold at B0
    equal the measured one and gives the rates above B0, down to the noiseless threshold at B = N,
    where the noise and with it the calibration vanish; the recommended rate is 0.7 x
    min(calibrated, best model)."""
    from hessian_probe.analysis import validate
    from hessian_probe.analysis.lr import learning_rates

    problem, saved = small_mlp_problem
    result = learning_rates(problem, batch_sizes=[16, 32, 64, 300], n_batches=3, subspace=4, saved_state=saved,
                            density_steps=0)
    best = {opt: result.predictions(opt, 32)[result.best_model(opt)] for opt in result.optimizers}

    def run(problem, optimizer, lr, batch_size, recipe, seed, adam_state=None):
        blew = lr > 0.8 * best[optimizer]
        return validate.RunOutcome(blew, 1.0, None if blew else 0.5)

    monkeypatch.setattr(validate, "train", run)
    calibrated = learning_rates(problem, batch_sizes=[16, 32, 64, 300], n_batches=3, subspace=4, saved_state=saved,
                                density_steps=0, calibrate_at=32, recipe=validate.TrainingRecipe(precision=1e-3))
    calibration = calibrated.calibration
    assert calibration.batch_size == 32
    for opt in calibrated.optimizers:
        measured = next(t.measured_lr for t in calibration.measured if t.optimizer == opt)
        assert calibration.factors[opt] == pytest.approx(0.8, rel=2e-3)
        scale = calibration.noise_scales[opt]
        assert scale > 1 and calibrated.mean_square(opt, 32, scale) == pytest.approx(measured, rel=3e-3)
        model = {b: calibrated.predictions(opt, b)[calibrated.best_model(opt)] for b in (16, 32, 64, 300)}
        assert calibrated.calibrated(opt, 16) == pytest.approx(calibration.factors[opt] * model[16])
        assert calibrated.calibrated(opt, 64) == pytest.approx(calibrated.mean_square(opt, 64, scale))
        assert calibrated.calibrated(opt, 64) < model[64]
        assert calibrated.calibrated(opt, 300) == pytest.approx(model[300], rel=1e-9)  # no noise at B = N
        for b in (16, 64, 300):
            assert calibrated.recommended(opt, b) == pytest.approx(0.7 * min(calibrated.calibrated(opt, b), model[b]))
            assert result.recommended(opt, b) == pytest.approx(0.6 * min(
                v for v in result.predictions(opt, b).values() if v is not None))
    rows = calibrated.to_dict()["rows"]
    assert all(r["calibrated"] for r in rows) and not any(r["calibrated"] for r in result.to_dict()["rows"])
    assert rows[0]["lr_calibrated_sgd"] == pytest.approx(calibrated.calibrated("sgd", 16))


def test_the_noise_scale_is_fitted_only_below_the_noiseless_threshold(small_mlp_problem):
    """Between the measured-noise and the noiseless threshold c lies in (0, 1) and reproduces the
    target; at or above the noiseless threshold there is no noise scale (the factor carries)."""
    from hessian_probe.analysis.lr import fit_noise_scale, learning_rates

    problem, saved = small_mlp_problem
    result = learning_rates(problem, batch_sizes=[16, 32, 64, 300], n_batches=3, subspace=4, saved_state=saved,
                            density_steps=0)
    for opt in ("sgd", "momentum", "adam"):
        noisy, noiseless = result.mean_square(opt, 32, 1.0), result.mean_square(opt, 32, 0.0)
        assert noisy < noiseless
        target = 0.5 * (noisy + noiseless)
        scale = fit_noise_scale(result, opt, 32, target)
        assert 0 < scale < 1 and result.mean_square(opt, 32, scale) == pytest.approx(target, rel=3e-3)
        assert fit_noise_scale(result, opt, 32, 1.01 * noiseless) is None


def test_adam_is_validated_from_the_state_its_prediction_assumed(small_mlp_problem, monkeypatch):
    from hessian_probe.analysis import validate
    from hessian_probe.analysis.adam import SETTLED_STEP
    from hessian_probe.analysis.lr import learning_rates
    from hessian_probe.analysis.noise import gradient_moments

    problem, saved = small_mlp_problem
    seen = {}

    def run(problem, optimizer, lr, batch_size, recipe, seed, adam_state=None):
        seen[batch_size] = adam_state
        return validate.RunOutcome(lr > 1e-3, 1.0, 0.5)

    monkeypatch.setattr(validate, "train", run)
    moments = gradient_moments(problem)
    for source in ("saved", "estimated"):
        result = learning_rates(problem, batch_sizes=[16, 64, 300], n_batches=2, subspace=2, saved_state=saved,
                                adam_state=source, density_steps=0, optimizers=("sgd", "adam"))
        assert result.adam.source == source
        seen.clear()
        validation = validate.validate_learning_rates(problem, result, optimizers=("adam",), batch_sizes=[16, 64],
                                                      criteria=("blowup",), saved_state=saved)
        assert {t.batch_size for t in validation.thresholds} == {16, 64}
        for b, (first, second, step) in seen.items():
            if source == "saved":
                assert (step == saved.step and torch.equal(second, saved.exp_avg_sq)
                        and torch.equal(first, saved.exp_avg))
            else:
                assert step == SETTLED_STEP and torch.allclose(first, moments.mean)
                assert torch.allclose(second, moments.batch_second_moment(b))
        if source == "estimated":  # v_B grows as B shrinks, so the preconditioned sharpness falls
            assert result.scan.adam_subspace(16).sharpness < result.scan.adam_subspace(64).sharpness
    with pytest.raises(ValueError, match="saved"):
        learning_rates(problem, batch_sizes=[16, 300], adam_state="saved", saved_state=None)


def test_the_saved_lr_result_reads_back_typed_and_equal(small_mlp_problem, tmp_path):
    from hessian_probe.analysis.lr import learning_rates
    from hessian_probe.results import from_state, to_state

    problem, saved = small_mlp_problem
    result = learning_rates(problem, batch_sizes=[16, 32, 300], n_batches=2, subspace=3, saved_state=saved,
                            density_steps=0).without_vectors()
    torch.save(to_state(result), tmp_path / "lr_state.pt")
    back = from_state(torch.load(tmp_path / "lr_state.pt", weights_only=True))
    assert type(back) is type(result) and back.to_dict() == result.to_dict()
    assert back.recommended("momentum", 16) == result.recommended("momentum", 16)


def test_validate_lr_takes_the_scan_options_of_lr(tmp_path, checkpoint):
    """Issue 19, item 7: when validate-lr scans itself (no lr outputs in --out) it takes lr's
    --smallest-batch, --batches, --tol and --density-steps, and the scan follows them."""
    result = CliRunner().invoke(main, ["validate-lr", "--checkpoint", str(checkpoint), "--model", "mlp", "--data",
                                       "digits", "--samples", "100", "--smallest-batch", "8", "--batches", "2",
                                       "--tol", "1e-4", "--density-steps", "0", "--optimizers", "sgd", "--criteria",
                                       "blowup", "--steps", "5", "--seeds", "1", "--precision", "0.5", "--quiet",
                                       "--out", str(tmp_path / "v")])
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "v" / "lr.json").read_text())
    assert [r["batch_size"] for r in record["rows"]][:2] == [8, 16]
    assert all(r["n_batches"] == 2 for r in record["rows"][:-1])
    assert record["settings"]["tol"] == 1e-4 and not record["densities"]


def test_plot_redraws_lr_png_from_lr_json(digits_lr, tmp_path):
    """Issue 19, item 7: `plot` redraws an lr result (its folder or lr.json) and refuses overlays of it."""
    out, _ = digits_lr
    drawn = CliRunner().invoke(main, ["plot", str(out / "lr"), "--out", str(tmp_path / "again.png")])
    assert drawn.exit_code == 0, drawn.output
    assert (tmp_path / "again.png").stat().st_size > 20_000
    both = CliRunner().invoke(main, ["plot", str(out / "lr" / "lr.json"), str(out / "lr")])
    assert both.exit_code == 2 and "one lr or track result at a time" in both.stderr
