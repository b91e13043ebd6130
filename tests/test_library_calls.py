"""Each command is one library call returning a typed result (issue 15), tested without CliRunner:
lr reads an optimizer state itself and gives the same numbers as the hand-resolved call; validate-lr
scans when given no predictions; every result type has exactly one writer and one summary."""

from __future__ import annotations

import pytest
import torch
from helpers import adam_steps

from hessian_probe import curvature_operator, make_problem
from hessian_probe.analysis import (
    EigenvalueReport,
    Hyperparameters,
    TraceReport,
    TrainingRecipe,
    ValidationReport,
    check_learning_rates,
    eigenvalues,
    learning_rates,
    spectrum,
)
from hessian_probe.analysis.eigenvalues import trace
from hessian_probe.analysis.learner import suggest
from hessian_probe.analysis.optimizer_state import found_hyperparameters, optimizer_state_of, saved_adam_state
from hessian_probe.errors import UsageError
from hessian_probe.io.formats import format_of
from hessian_probe.seeds import derive

SCAN = dict(batch_sizes=[16, 64, 200], n_batches=2, subspace=2, density_steps=0)


@pytest.fixture(scope="module")
def adam_trained():
    """A small digits MLP after 30 Adam steps with non-default betas and eps, and that optimizer."""
    from hessian_probe.loading.builtin_models import mlp
    from hessian_probe.loading.datasets import load_digits

    torch.manual_seed(0)
    x, y = load_digits(200, seed=0)
    model = mlp(hidden=8)
    adam = adam_steps(model, x, y, torch.nn.functional.cross_entropy, 30, betas=(0.8, 0.99), eps=1e-7)
    return make_problem(model, (x, y), "cross_entropy", dtype=torch.float64), adam.state_dict()


def test_lr_reads_the_optimizer_state_and_matches_the_hand_resolved_call(adam_trained):
    problem, state = adam_trained
    result = learning_rates(problem, **SCAN, optimizer_state=state, hyperparameters={"momentum": 0.5, "safety": 0.5})
    hp = result.hyperparameters
    assert result.adam.source == "saved" and result.checkpoint_optimizer["kind"] == "adam"
    assert (hp.beta1, hp.beta2, hp.eps, hp.momentum, hp.safety) == (0.8, 0.99, 1e-7, 0.5, 0.5)
    assert hp.sources["beta1"] == "checkpoint" and hp.sources["momentum"] == "option"
    info = optimizer_state_of(state, problem)
    by_hand = learning_rates(problem, **SCAN, saved_state=saved_adam_state(info, problem),
                             hyperparameters=Hyperparameters.resolve({"momentum": 0.5}, found_hyperparameters(info),
                                                                     safety=0.5))
    assert result.to_dict()["rows"] == by_hand.to_dict()["rows"]
    one_shot = suggest(curvature_operator(problem, "hessian"), lanczos_steps=20, safety=0.5, seed=derive(0, "learner"))
    assert result.learner == one_shot
    assert result.to_dict()["learner"]["heavy_ball_momentum"] == one_shot.heavy_ball_momentum
    with pytest.raises(UsageError, match="larger than the sample"):
        learning_rates(problem, batch_sizes=[16, 500], optimizer_state=state)
    sgd_state = torch.optim.SGD(problem.module.parameters(), lr=0.1, momentum=0.9).state_dict()
    with pytest.raises(UsageError, match="no usable Adam moments"):
        learning_rates(problem, **SCAN, optimizer_state=sgd_state, adam_state="saved")


def test_validate_lr_is_one_call_that_scans_when_given_no_predictions(adam_trained, monkeypatch):
    from hessian_probe.analysis import validate

    problem, state = adam_trained
    monkeypatch.setattr(validate, "train",
                        lambda problem, optimizer, lr, *args: validate.RunOutcome(lr > 0.3, 1.0, 0.5))
    recipe = TrainingRecipe(steps=5, seeds=1, precision=0.1)
    with pytest.raises(UsageError, match="larger than the sample"):  # refused before any scan
        check_learning_rates(problem, predictions=None, recipe=recipe, batch_sizes=[500], optimizer_state=state)
    report = check_learning_rates(problem, "hessian", None, recipe, optimizers=("sgd", "adam"), batch_sizes=[16],
                                  criteria=("blowup",), optimizer_state=state, scan=SCAN)
    assert isinstance(report, ValidationReport) and report.learning_rates.adam.source == "saved"
    measured = report.validation.find("sgd", 16).measured_lr
    assert 0.3 / 1.1 < measured <= 0.3  # the fake trainer's threshold, to the bisection's precision
    record = report.to_dict()
    assert record["lr"]["rows"] and record["validation"][0]["measured_lr"] == measured
    assert record["settings"]["momentum"] == report.learning_rates.hyperparameters.momentum


def test_every_result_type_has_one_writer_and_one_summary(adam_trained, tmp_path):
    problem, _ = adam_trained
    op = curvature_operator(problem.restricted("2"), "ggn")
    results = [spectrum(op, n_steps=8, n_probes=2, top_k=2, bottom_k=1, trace_products=9),
               eigenvalues(op, 2, 1), trace(op, 9)]
    assert isinstance(results[1], EigenvalueReport) and isinstance(results[2], TraceReport)
    for i, result in enumerate(results):
        out = tmp_path / str(i)
        fmt = format_of(result)
        record = result.to_dict()
        written = fmt.write(record, out, result)
        assert set(written) <= fmt.files and sorted(p.name for p in out.iterdir()) == sorted(written)
        assert fmt.summary(record).startswith(f"ggn: P = {op.size:,} parameters")
    assert len({format_of(r).summary for r in results}) == 3
    with pytest.raises(TypeError, match="no writer"):
        format_of({"operator": "hessian"})
    from matplotlib.figure import Figure

    from hessian_probe.plots import plot_densities  # in a notebook: a typed result in, the figure out, no file
    figure = plot_densities([results[0]])
    assert isinstance(figure, Figure) and figure.axes and not list(tmp_path.glob("*.png"))
    mine = Figure()
    left, right = mine.subplots(1, 2)
    assert plot_densities([results[0]], ax=[left, right]) is mine and left.lines and right.lines  # your axes
    single = Figure().subplots()
    assert plot_densities([results[0]], ax=single) is single.figure and len(single.figure.axes) == 1
    with pytest.raises(ValueError, match="2 panel"):
        from hessian_probe.plots import plot_learning_rates

        plot_learning_rates({"rows": [], "n_samples": 1, "fit": None}, ax=single)


def test_importing_the_plots_chooses_no_matplotlib_backend():
    import subprocess
    import sys

    code = ("import matplotlib; before = matplotlib.get_backend(); import hessian_probe.plots, hessian_probe; "
            "assert matplotlib.get_backend() == before, (before, matplotlib.get_backend()); print(before)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**__import__("os").environ, "MPLBACKEND": "svg"})
    assert done.returncode == 0 and done.stdout.strip() == "svg", done.stderr
