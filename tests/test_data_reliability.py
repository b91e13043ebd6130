"""The data paths at their edges: batches with no label that counts (-100) in shards, random
batches and training runs; a DataLoader's own sampler, workers and failures; streamed samples
re-chunked, moved or sharded without reading their targets again; an interrupted progress line."""

from __future__ import annotations

import pickle
import sys
from functools import partial

import pytest
import torch
from test_streaming import CountingDigits
from torch import nn
from torch.utils.data import BatchSampler, DataLoader, Dataset, DistributedSampler, SubsetRandomSampler

from hessian_probe import make_problem, streamed
from hessian_probe.analysis.batch_scan import random_batch
from hessian_probe.analysis.validate import TrainingRecipe, train
from hessian_probe.errors import InputError, NonFiniteError
from hessian_probe.loading.builtin_models import mlp
from hessian_probe.loading.data import _loader_sample
from hessian_probe.loading.datasets import load_digits
from hessian_probe.operators import HessianOperator
from hessian_probe.progress import ProductProgress


@pytest.fixture
def model():
    torch.manual_seed(0)
    return mlp()


class OtherRankCounts:
    """Rank 0 of 2, where the other rank (not run) holds every label that counts: the label count
    gets its 60; any other sum is this rank's share alone (the other's is not needed here)."""

    rank, world_size = 0, 2

    def all_reduce_sum(self, tensor):
        return tensor.add_(60) if tensor.dtype == torch.float64 and tensor.numel() == 1 else tensor


def test_a_shard_whose_labels_are_all_ignored_adds_zero_instead_of_failing(model):
    x, y = load_digits(120)
    y = y.clone()
    y[:60] = -100  # rank 0's whole shard
    problem = make_problem(model, (x, y), "cross_entropy", chunk_size=20, shard=(0, 2), group=OtherRankCounts())
    assert problem.batch_weights == (0.0, 0.0, 0.0)
    assert problem.loss_value() == 0.0
    gradient = problem.gradient()
    assert gradient.shape == (problem.n_params,) and not gradient.any()


def test_random_batches_with_no_counted_label_are_drawn_again_and_training_skips_them(model):
    x, y = load_digits(150)
    y = y.clone()
    y[2:] = -100  # two labels count
    problem = make_problem(model, (x, y), "cross_entropy", dtype=torch.float64)
    batch = random_batch(problem, problem.indexed_examples(), 4, 0, 0, None)
    assert problem.loss.term_count(batch.batches[0][1]) > 0
    recipe = TrainingRecipe(steps=20, check_every=5, dtype="float64")
    outcome = train(problem, "sgd", 1e-3, 2, recipe, seed=0)  # most batches of 2 count no label
    assert not outcome.blew_up and outcome.final_loss == pytest.approx(outcome.start_loss, rel=0.05)
    half_labels = load_digits(150)[1].clone()
    half_labels[75:] = -100  # half the batches of 1 count no label, the last step's too: its check still runs
    half = make_problem(model, (x, half_labels), "cross_entropy", dtype=torch.float64)
    ran = train(half, "sgd", 1.0, 1, TrainingRecipe(steps=10, check_every=100, dtype="float64"), seed=0)
    assert ran.final_loss != ran.start_loss


class ZeroSafeSqrt(nn.Module):
    def forward(self, x):
        return torch.sqrt(torch.abs(x))  # finite at 0, its derivative there is not


def test_a_non_finite_gradient_names_its_batch_counting_the_batches_that_weigh_zero():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 10, bias=False), ZeroSafeSqrt())
    x, y = load_digits(120)
    x, y = x.clone(), y.clone()
    y[:40] = -100  # batch 0 weighs 0
    x[80:] = 0.0  # batch 2: a finite loss, a NaN gradient
    problem = make_problem(model, (x, y), "cross_entropy", chunk_size=40)
    with pytest.raises(NonFiniteError, match=r"on batch 2 \(40 examples\)"):
        problem.gradient()


class FailingDigits(CountingDigits):
    def __getitem__(self, i):
        if i == 7:
            raise ValueError("pixel file 7 is truncated")
        return super().__getitem__(i)


class ChainedFailure(CountingDigits):
    def __getitem__(self, i):
        if i != 7:
            return super().__getitem__(i)
        try:
            return {"header": 1}["pixels"]
        except KeyError:
            raise ValueError("pixel file 7 is truncated")  # noqa: B904 (chained on purpose)


def test_a_dataloader_workers_failure_is_the_original_error_in_one_line(model):
    for data in (FailingDigits(), ChainedFailure()):  # the second raised while handling a KeyError
        with pytest.raises(InputError) as caught:
            make_problem(model, streamed(DataLoader(data, batch_size=8, num_workers=1), chunk_size=32),
                         "cross_entropy")
        message = str(caught.value)
        assert "\n" not in message and "Caught" not in message
        assert "ValueError: pixel file 7 is truncated" in message, message


def test_a_distributed_sampler_reads_the_whole_dataset_and_drop_last_counts_the_samplers_draw():
    data, notes = CountingDigits(), []
    sample = _loader_sample(DataLoader(data, batch_size=8, sampler=DistributedSampler(data, 2, 1, shuffle=False)),
                            "ddp", notes)
    assert sample.order == tuple(range(150)) and "DistributedSampler" in notes[0]
    exact = _loader_sample(DataLoader(data, batch_size=8, sampler=SubsetRandomSampler(range(40)), drop_last=True),
                           "forty", [])
    assert sorted(exact.order) == list(range(40))  # 40 of 150 drawn, in batches of 8: nothing dropped
    with pytest.raises(InputError, match="drop_last"):
        _loader_sample(DataLoader(data, batch_size=8, sampler=SubsetRandomSampler(range(41)), drop_last=True),
                       "forty-one", [])
    with pytest.raises(InputError, match="drop_last"):  # a batch sampler's own sampler counts
        _loader_sample(DataLoader(data, batch_sampler=BatchSampler(SubsetRandomSampler(range(41)), 8, True)),
                       "forty-one", [])


class ListTokens(Dataset):
    """Token rows as Python lists, as a Hugging Face dataset gives them without set_format('torch')."""

    def __len__(self):
        return 6

    def __getitem__(self, i):
        return {"input_ids": [i, i + 1, i + 2], "labels": [i + 1, i + 2, -100], "tokens": ["a"] * (i + 1)}


def test_token_features_given_as_lists_are_read_as_tensors():
    batch = streamed(ListTokens(), chunk_size=4)[0]
    assert torch.equal(batch[0], torch.tensor([[0, 1, 2], [1, 2, 3], [2, 3, 4], [3, 4, 5]]))
    assert batch[1].shape == (4, 3) and int(batch[1][0, 2]) == -100


def test_a_stream_is_rechunked_on_request_and_keeps_its_targets_when_moved_or_sharded(model):
    assert streamed(CountingDigits(1500), chunk_size=None).lengths == (1024, 476)
    data = CountingDigits()
    problem = make_problem(model, streamed(data, chunk_size=64), "cross_entropy", chunk_size=16)
    assert problem.batches.lengths == (16,) * 9 + (6,)
    problem.batch_weights  # the targets are read (once, with the data check)
    before = data.reads
    for other in (problem.cast(torch.float64), problem.sharded(1, 3), problem.restricted("0.*")):
        assert [len(y) for y in other.batches.targets()] == list(other.batches.lengths)
    assert data.reads == before


def count_start(path, _worker_id):
    torch.utils.data.get_worker_info().dataset.opened = True  # as a worker opens its own file handle
    with open(path, "a") as log:
        log.write("started\n")


def test_a_streamed_loaders_workers_start_once_with_its_worker_init_fn(model, tmp_path):
    starts = tmp_path / "starts"
    loader = DataLoader(CountingDigits(), batch_size=8, num_workers=1, worker_init_fn=partial(count_start, starts))
    problem = make_problem(model, streamed(loader, chunk_size=50), "cross_entropy")
    operator = HessianOperator(problem)
    v = torch.randn(problem.n_params)
    first = operator.matvec(v)
    for _ in range(2):
        assert torch.equal(operator.matvec(v), first)
    assert starts.read_text().count("started") == 1
    twice = list(zip(problem.batches, problem.cast(torch.float64).batches, strict=True))  # two passes at once
    assert len(twice) == 3 and all(torch.equal(a[1], b[1]) for a, b in twice)
    assert pickle.loads(pickle.dumps(problem.batches)).lengths == (50, 50, 50)


def test_an_interrupted_stage_is_said_stopped_not_done(capsys):
    with pytest.raises(KeyboardInterrupt), ProductProgress(delay=0.0) as progress:
        progress.stage("eigenvalues", 300)
        progress.advance(3)
        raise KeyboardInterrupt
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith("eigenvalues: 3/300 products") and line.endswith("(stopped)"), line
    assert not sys.stderr.isatty()


def test_stream_data_auto_counts_every_process_on_the_node(monkeypatch):
    import hessian_probe.loading as loading
    from hessian_probe.loading.data import _dataset_sample
    from hessian_probe.runtime import torchrun

    sample = _dataset_sample(CountingDigits(), "digits-dataset")
    need = sample.stacked_bytes(torch.float32)
    monkeypatch.setattr(loading, "free_host_memory", lambda: 10 * need)  # one process holding it: 10% of free
    spec = loading.ProblemSpec(checkpoint="unused.pt", data="digits-dataset")
    assert not loading._wants_stream(sample, spec, torch.float32, [])
    monkeypatch.setattr(torchrun, "active", lambda: True)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")  # four: 40% of free
    notes = []
    assert loading._wants_stream(sample, spec, torch.float32, notes)
    assert "4 processes on this node" in notes[0]


def test_vectors_narrower_than_the_products_are_refused(model):
    from hessian_probe.operators import curvature_operator

    problem = make_problem(model, load_digits(40), "cross_entropy", dtype=torch.float64)
    with pytest.raises(ValueError, match="narrower"):
        curvature_operator(problem, vector_dtype=torch.float32)
