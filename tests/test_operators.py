"""Operator contracts: blocks of k, determinism in eval mode, dtypes, devices, losses, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hessian_probe import curvature_operator, make_problem
from hessian_probe.linalg import random_probes
from hessian_probe.loading.builtin_models import mlp
from hessian_probe.loading.datasets import load_digits

F64 = torch.float64


@pytest.fixture(scope="module")
def digits():
    return load_digits(200, seed=2)


@pytest.mark.parametrize("kind", ["hessian", "ggn"])
def test_a_block_of_k_vectors_gives_the_k_separate_products(digits_network, kind):
    name, model, x, y = digits_network
    op = curvature_operator(make_problem(model, (x, y), "cross_entropy", chunk_size=100), kind)
    V = random_probes(8, op.size, seed=0, dtype=F64, device="cpu", distribution="gaussian")
    block = op.matmat(V)
    separate = torch.stack([op.matvec(v) for v in V])
    # equal up to floating-point reassociation inside batched BLAS calls
    torch.testing.assert_close(block, separate, rtol=0, atol=1e-14 * block.abs().max().item())


class NoisyNet(nn.Module):
    """Dropout and BatchNorm: random or batch-dependent in train mode, fixed in eval mode."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(64, 16), nn.BatchNorm1d(16), nn.Tanh(), nn.Dropout(0.5), nn.Linear(16, 10))

    def forward(self, x):
        return self.body(x)


@pytest.mark.parametrize("kind", ["hessian", "ggn"])
def test_eval_mode_makes_the_operator_deterministic(digits, kind):
    x, y = digits
    torch.manual_seed(0)
    model = NoisyNet()
    model.train()
    model(x)  # give BatchNorm running statistics that differ from any batch's
    problem = make_problem(model, (x, y), "cross_entropy", chunk_size=64, dtype=F64)
    assert model.training, "the user's module keeps its mode; the problem evaluates in eval mode"
    op = curvature_operator(problem, kind)
    v = random_probes(1, op.size, seed=1, dtype=F64, device="cpu")[0]
    assert torch.equal(op.matvec(v), op.matvec(v))
    # batching only bounds memory: BN uses running statistics, so the chunking does not matter
    whole = make_problem(model, (x, y), "cross_entropy", dtype=F64)
    torch.testing.assert_close(op.matvec(v), curvature_operator(whole, kind).matvec(v), rtol=1e-12, atol=1e-14)


def test_float32_products_agree_with_float64(digits):
    x, y = digits
    torch.manual_seed(0)
    model = mlp()
    v = random_probes(3, sum(p.numel() for p in model.parameters()), seed=2, dtype=F64, device="cpu")
    for kind in ("hessian", "ggn"):
        exact = curvature_operator(make_problem(model, (x, y), "cross_entropy", dtype=F64), kind).matmat(v)
        single = curvature_operator(make_problem(model, (x, y), "cross_entropy", dtype=torch.float32), kind)
        assert single.dtype == torch.float32
        approx = single.matmat(v.float()).double()
        assert (approx - exact).norm() <= 1e-5 * exact.norm()
    assert next(model.parameters()).dtype == torch.float32, "the user's module is left as it was"


def test_custom_loss_uses_the_same_gauss_newton(digits):
    x, y = digits
    torch.manual_seed(0)
    model = mlp().double()
    builtin = make_problem(model, (x, y), "cross_entropy", dtype=F64, chunk_size=64)
    custom = make_problem(model, (x, y), lambda out, t: F.cross_entropy(out, t), dtype=F64, chunk_size=64)
    v = random_probes(2, builtin.n_params, seed=3, dtype=F64, device="cpu")
    for kind in ("hessian", "ggn"):
        torch.testing.assert_close(
            curvature_operator(builtin, kind).matmat(v), curvature_operator(custom, kind).matmat(v),
            rtol=1e-12, atol=1e-15
        )


def test_mse_ggn_equals_hessian_for_a_linear_model():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(90, 5, generator=g, dtype=F64), torch.randn(90, 2, generator=g, dtype=F64)
    problem = make_problem(nn.Linear(5, 2).double(), (x, y), "mse", chunk_size=40)
    torch.testing.assert_close(
        curvature_operator(problem, "ggn").to_dense(), curvature_operator(problem, "hessian").to_dense(),
        rtol=0, atol=1e-13
    )


def test_the_problem_loss_and_gradient_are_the_mean_over_all_examples(digits):
    x, y = digits
    model = mlp().double()
    problem = make_problem(model, [(x[:150], y[:150]), (x[150:], y[150:])], "cross_entropy", dtype=F64)
    model.zero_grad()
    loss = F.cross_entropy(model(x.double()), y)
    loss.backward()
    assert problem.loss_value() == pytest.approx(loss.item(), rel=1e-12)
    expected = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
    torch.testing.assert_close(problem.gradient(), expected, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda m, x, y: (m, (x[:0], y[:0]), {}), "empty"),
        (lambda m, x, y: (m, (x, y + 10), {}), r"labels must lie in \[0, 9\]"),
        (lambda m, x, y: (m, (x, y[:-1]), {}), "inputs but"),
        (lambda m, x, y: (m, (x[:, :10], y), {}), "cannot run"),
        (lambda m, x, y: (m, (x, y), {"params": "nothing.here"}), "matches no parameter"),
        (lambda m, x, y: (m, (x, y.float()), {}), "stored as floating point"),
        (lambda m, x, y: (m, (x, F.one_hot(y, 10).double() * 2), {}), "sum to 1"),
        (lambda m, x, y: (m, (x, y), {"dtype": torch.float16}), "float32 or float64"),
        (lambda m, x, y: (_poisoned(m), (x, y), {}), "non-finite"),
    ],
)
def test_bad_input_is_refused_with_a_clear_message(digits, change, message):
    x, y = digits
    model, data, kwargs = change(mlp(), x, y)
    with pytest.raises(ValueError, match=message):
        make_problem(model, data, "cross_entropy", **kwargs)


def test_with_batches_casts_and_validates(digits):
    x, y = digits
    problem = make_problem(mlp(), (x, y), "cross_entropy", dtype=F64)
    batch = problem.with_batches([(x[:50], y[:50].int())])  # float32 inputs, int32 labels
    assert batch.batches[0][0].dtype == F64 and batch.batches[0][1].dtype == torch.int64
    assert batch.n_samples == 50
    v = random_probes(1, problem.n_params, seed=0, dtype=F64, device="cpu")
    assert torch.isfinite(curvature_operator(batch).matmat(v)).all()
    with pytest.raises(ValueError, match="labels must lie"):
        problem.with_batches([(x[:50], y[:50] + 10)])


def test_torch_losses_map_to_the_closed_forms(digits):
    x, y = digits
    g = torch.Generator().manual_seed(0)
    targets = torch.randn(len(x), 10, generator=g)
    model = mlp()
    reference = curvature_operator(make_problem(model, (x, targets), "mse", dtype=F64), "hessian")
    v = random_probes(2, reference.size, seed=0, dtype=F64, device="cpu")
    for loss in (F.mse_loss, nn.MSELoss()):
        op = curvature_operator(make_problem(model, (x, targets), loss, dtype=F64), "hessian")
        torch.testing.assert_close(op.matmat(v), reference.matmat(v), rtol=0, atol=0)
    for loss in (F.cross_entropy, nn.CrossEntropyLoss()):
        assert make_problem(model, (x, y), loss).loss.name == "cross_entropy"


def test_half_precision_models_are_measured_in_float32(digits):
    x, y = digits
    problem = make_problem(mlp().to(torch.bfloat16), (x, y), "cross_entropy")
    assert problem.dtype == torch.float32


def _poisoned(model: nn.Module) -> nn.Module:
    with torch.no_grad():
        next(model.parameters())[0, 0] = float("nan")
    return model


def test_unknown_names_are_refused(digits):
    x, y = digits
    with pytest.raises(ValueError, match="unknown loss"):
        make_problem(mlp(), (x, y), "hinge")
    with pytest.raises(ValueError, match="unknown operator"):
        curvature_operator(make_problem(mlp(), (x, y), "cross_entropy"), "kfac")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("kind", ["hessian", "ggn"])
def test_cuda_products_match_cpu(digits, kind):
    x, y = digits
    torch.manual_seed(0)
    model = mlp()
    cpu = curvature_operator(make_problem(model, (x, y), "cross_entropy", dtype=F64), kind)
    gpu = curvature_operator(make_problem(model, (x, y), "cross_entropy", dtype=F64, device="cuda"), kind)
    v = random_probes(4, cpu.size, seed=0, dtype=F64, device="cpu")
    torch.testing.assert_close(gpu.matmat(v.cuda()).cpu(), cpu.matmat(v), rtol=1e-10, atol=1e-13)


CPU_OOM = RuntimeError("[enforce fail at alloc_cpu.cpp:117] . DefaultCPUAllocator: can't allocate memory: you tried "
                       "to allocate 68719476736 bytes. Error code 12 (Cannot allocate memory)")


@pytest.mark.parametrize("error", [torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)"), CPU_OOM],
                         ids=["cuda", "cpu"])
def test_a_batch_that_does_not_fit_is_split_and_gives_the_same_product(digits, error):
    """An out-of-memory error, on a GPU or from the CPU allocator (issue 19: the default spectrum of
    a conv net asked for 64 GiB), halves the piece of the batch a k-vector product takes, for good."""
    x, y = digits
    problem = make_problem(mlp(), (x[:200], y[:200]), "cross_entropy", dtype=F64)
    op, reference = curvature_operator(problem), curvature_operator(problem)
    product, seen = op._product, []

    def small_device(xs, ys, tangents):
        rows = len(xs) * next(iter(tangents.values())).shape[0]
        seen.append(len(xs))
        if rows > 300:
            raise error
        return product(xs, ys, tangents)

    op._product = small_device
    V = torch.randn(4, op.size, dtype=F64, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(op.matmat(V), reference.matmat(V), rtol=1e-12, atol=1e-15)
    assert seen[:3] == [200, 100, 50] and set(seen[3:]) == {50} and op.max_rows == 200


def test_a_product_that_fits_nowhere_names_the_fix(digits):
    from hessian_probe.errors import InputError

    x, y = digits
    op = curvature_operator(make_problem(mlp(), (x[:20], y[:20]), "cross_entropy", dtype=F64))

    def no_memory(xs, ys, tangents):
        raise CPU_OOM

    op._product = no_memory
    with pytest.raises(InputError, match="does not fit in memory.*`probe_block`"):
        op.matmat(torch.ones(2, op.size, dtype=F64))
    op._product = lambda xs, ys, tangents: (_ for _ in ()).throw(
        RuntimeError("mat1 and mat2 shapes cannot be multiplied"))
    with pytest.raises(RuntimeError, match="shapes"):  # any other error is not taken for a lack of memory
        op.matmat(torch.ones(2, op.size, dtype=F64))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_a_basis_in_host_memory_gives_the_same_numbers(digits, monkeypatch):
    """A Lanczos basis too large for the device lives in pinned host memory and is streamed."""
    from hessian_probe.linalg import extremal_eigs, lanczos, slq

    x, y = digits
    torch.manual_seed(0)
    op = curvature_operator(make_problem(mlp(), (x, y), "cross_entropy", dtype=F64, device="cuda"))
    on_device = slq(op, 30, 4), extremal_eigs(op, 2, 1, tol=1e-8)
    monkeypatch.setattr("hessian_probe.linalg.lanczos.DEVICE_BASIS_FRACTION", 0.0)
    on_host = slq(op, 30, 4), extremal_eigs(op, 2, 1, tol=1e-8)
    assert ("pinned host memory" in on_host[0].basis_memory["device"]
            and on_host[1].basis_memory["device"] == "cpu (pinned host memory)")
    assert on_device[0].basis_memory["device"].startswith("cuda")
    for a, b in zip(on_device[0].nodes, on_host[0].nodes):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(on_device[1].top_eigenvalues, on_host[1].top_eigenvalues, rtol=1e-10)
    assert lanczos(op, 5, keep_basis=True).basis.device.type == "cpu"
    assert lanczos(op, 5, keep_basis=True, basis="device").basis.device.type == "cuda"  # forced, even when large
    monkeypatch.setattr("hessian_probe.linalg.lanczos.DEVICE_BASIS_FRACTION", 0.5)
    forced = slq(op, 30, 4, basis="host")
    assert "pinned host memory" in forced.basis_memory["device"]
    for a, b in zip(on_device[0].nodes, forced.nodes):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["hessian", "ggn"])
def test_compiled_products_equal_eager_ones(digits, kind):
    """torch.compile of the batch product (--compile) changes the speed, not the numbers."""
    x, y = digits
    torch.manual_seed(0)
    problem = make_problem(mlp(), (x[:300], y[:300]), "cross_entropy", dtype=F64, chunk_size=128)
    V = torch.randn(3, problem.n_params, dtype=F64, generator=torch.Generator().manual_seed(1))
    eager = curvature_operator(problem, kind).matmat(V)
    torch.testing.assert_close(curvature_operator(problem, kind, compile=True).matmat(V), eager, rtol=1e-10, atol=1e-13)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("kind", ["hessian", "ggn"])
def test_a_sample_kept_in_host_memory_gives_the_same_products(digits, kind, monkeypatch):
    """A sample too large for the GPU stays in pinned host memory, copied over batch by batch."""
    x, y = digits
    model = mlp()
    on_device = make_problem(model, (x, y), "cross_entropy", dtype=F64, device="cuda", chunk_size=500)
    monkeypatch.setattr("hessian_probe.problem.DEVICE_DATA_FRACTION", 0.0)
    on_host = make_problem(model, (x, y), "cross_entropy", dtype=F64, device="cuda", chunk_size=500)
    assert on_host.batches[0][0].device.type == "cpu" and on_device.batches[0][0].device.type == "cuda"
    V = random_probes(3, on_device.n_params, seed=0, dtype=F64, device="cuda")
    torch.testing.assert_close(curvature_operator(on_host, kind).matmat(V),
                               curvature_operator(on_device, kind).matmat(V), rtol=1e-12, atol=1e-15)


def test_binary_cross_entropy_splits_the_ggn_where_the_user_chooses():
    """Issue 19, item 5. On logits (bce_with_logits) a linear model's GGN is its Hessian, the closed
    form X^T diag(s (1 - s)) X / N; the same function written with a final sigmoid and bce has the
    same Hessian, but its GGN is taken at the probabilities and differs, and says so."""
    from hessian_probe.operators.ggn import split_description

    torch.manual_seed(0)
    x = torch.randn(40, 5, dtype=torch.float64)
    y = torch.randint(0, 2, (40, 1)).double()
    logits = nn.Linear(5, 1, bias=False).double()
    squashed = nn.Sequential(logits, nn.Sigmoid())
    on_logits = make_problem(logits, (x, y), "bce_with_logits")
    on_probabilities = make_problem(squashed, (x, y), "bce")
    with torch.no_grad():
        assert float(on_logits.loss_value()) == pytest.approx(float(F.binary_cross_entropy_with_logits(logits(x), y)),
                                                              rel=1e-12)
        assert float(on_probabilities.loss_value()) == pytest.approx(float(F.binary_cross_entropy(squashed(x), y)),
                                                                     rel=1e-12)
        s = torch.sigmoid(logits(x)).squeeze(1)
    exact = x.T @ (x * (s * (1 - s))[:, None]) / len(x)
    ggn, hessian = (curvature_operator(on_logits, kind).to_dense() for kind in ("ggn", "hessian"))
    torch.testing.assert_close(ggn, exact.detach(), rtol=0, atol=1e-12)
    torch.testing.assert_close(hessian, exact.detach(), rtol=0, atol=1e-12)
    torch.testing.assert_close(curvature_operator(on_probabilities, "hessian").to_dense(), exact.detach(), rtol=0,
                               atol=1e-12)
    assert not torch.allclose(curvature_operator(on_probabilities, "ggn").to_dense(), exact.detach(), atol=1e-6)
    assert split_description(on_logits)[1] is None
    where, warning = split_description(on_probabilities)
    assert "after the model's final Sigmoid" in where and "bce_with_logits" in warning


def test_cpu_products_are_split_to_fit_the_available_memory(digits, monkeypatch):
    """Issue 19, item 1: on the CPU the rows of one pass are bounded up front by FRACTION x the
    available memory / (8 x the activations of one example); the product is the same."""
    from hessian_probe.operators import memory

    x, y = digits
    problem = make_problem(mlp(), (x[:200], y[:200]), "cross_entropy", dtype=F64)
    reference = curvature_operator(problem)
    per_example = memory.activation_bytes(problem)
    assert per_example > 0
    monkeypatch.setattr(memory, "available_memory", lambda: 2 * 8 * per_example * 100)  # room for 100 rows
    op = curvature_operator(problem)
    assert op.max_rows == 100 and reference.max_rows > 10_000
    V = torch.randn(4, op.size, dtype=F64, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(op.matmat(V), reference.matmat(V), rtol=1e-12, atol=1e-15)


def test_a_layer_without_a_second_derivative_is_one_clear_error_and_attention_just_works():
    from hessian_probe.errors import InputError

    class FirstOrderTanh(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            y = torch.tanh(x)
            ctx.save_for_backward(y)
            return y

        @staticmethod
        @torch.autograd.function.once_differentiable
        def backward(ctx, g):
            (y,) = ctx.saved_tensors
            return g * (1 - y * y)

    class Net(torch.nn.Module):
        def __init__(self, attention: bool) -> None:
            super().__init__()
            self.attention, self.proj = attention, torch.nn.Linear(4, 4)

        def forward(self, x):
            h = self.proj(x)
            if self.attention:  # default SDPA: the CPU's flash kernel has no double backward of its own
                q = h.reshape(len(x), 1, 2, 2)
                return torch.nn.functional.scaled_dot_product_attention(q, q, q).reshape(len(x), 4)
            return FirstOrderTanh.apply(h)

    torch.manual_seed(0)
    x, y = torch.randn(8, 4), torch.randn(8, 4)
    net = Net(attention=True)
    attention = make_problem(net, (x, y), "mse")
    v = torch.randn(attention.n_params)
    params = list(net.parameters())
    with torch.nn.attention.sdpa_kernel([torch.nn.attention.SDPBackend.MATH]):  # the reference, by hand
        gradient = torch.autograd.grad((net(x) - y).square().mean(), params, create_graph=True)
        hv = torch.autograd.grad(gradient, params, [t[0] for t in attention.space.unflatten(v.reshape(1, -1)).values()])
    expected = torch.cat([h.flatten() for h in hv])
    assert torch.allclose(curvature_operator(attention, "hessian").matvec(v), expected, atol=1e-6)
    first_order = Net(attention=False)
    problem = make_problem(first_order, (x, y), "mse", dtype=F64)
    with pytest.raises(InputError, match="derivatives that a layer of the model does not have.*finite-difference"):
        curvature_operator(problem, "hessian").matvec(torch.randn(problem.n_params))
    # central differences of gradients need first derivatives only: the exact Hessian of the same net
    # with torch's tanh (twice differentiable) to the eps^(2/3) bound
    twin = make_problem(torch.nn.Sequential(first_order.proj, torch.nn.Tanh()), (x, y), "mse", dtype=F64)
    V = torch.randn(3, problem.n_params, dtype=F64)
    exact = curvature_operator(twin, "hessian").matmat(V)
    approx = curvature_operator(problem, "hessian", hessian_mode="finite-difference").matmat(V)
    relative = float((approx - exact).norm() / exact.norm())
    assert 1e-14 < relative < 20 * torch.finfo(F64).eps ** (2 / 3)  # not exact, within its bound
