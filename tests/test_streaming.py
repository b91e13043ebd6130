"""Data streamed from the user's dataset at every product (issue 17, item 3): the same operator as
the held sample, every example read once per product, never more than a chunk in memory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from click.testing import CliRunner
from torch.utils.data import DataLoader, Dataset

from hessian_probe import extremal_eigs, make_problem, streamed
from hessian_probe.analysis.batch_scan import random_batch
from hessian_probe.cli import main
from hessian_probe.errors import InputError
from hessian_probe.loading.builtin_models import mlp
from hessian_probe.loading.datasets import load_digits
from hessian_probe.operators import HessianOperator
from hessian_probe.streams import StreamedBatches


class CountingDigits(Dataset):
    """Digits as dict items, counting every item read and every batch collated."""

    def __init__(self, n: int = 150, noise: float = 0.0):
        self.x, self.y = load_digits(n)
        self.noise, self.reads, self.collated = noise, 0, []

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        self.reads += 1
        x = self.x[i] + self.noise * torch.rand(()) if self.noise else self.x[i]
        return {"pixel_values": x, "label": self.y[i]}

    def collate(self, items):
        self.collated.append(len(items))
        return torch.utils.data.default_collate(items)


@pytest.fixture
def model():
    torch.manual_seed(0)
    return mlp()


def test_a_streamed_dataset_is_the_held_samples_operator_read_once_per_product(model):
    data = CountingDigits()
    held = make_problem(model, load_digits(150), "cross_entropy", chunk_size=40, dtype=torch.float64)
    loader = DataLoader(data, batch_size=7, shuffle=True, collate_fn=data.collate)
    problem = make_problem(model, streamed(loader, chunk_size=40), "cross_entropy", dtype=torch.float64)
    assert isinstance(problem.batches, StreamedBatches) and problem.n_samples == 150
    assert problem.batches.lengths == (40, 40, 40, 30) and problem.chunk_size == 40
    v = torch.randn(problem.n_params, dtype=torch.float64)
    operator = HessianOperator(problem)
    operator.matvec(v)  # the first also sizes its passes on one chunk
    before = data.reads
    streamed_product = operator.matvec(v)
    assert data.reads - before == 150  # every example, once, at this product
    assert torch.allclose(streamed_product, HessianOperator(held).matvec(v), rtol=1e-12, atol=1e-14)
    assert max(data.collated) <= 40  # never more than a chunk in memory
    top = extremal_eigs(HessianOperator(problem), 2, tol=1e-10, seed=0).top_eigenvalues
    assert top == pytest.approx(extremal_eigs(HessianOperator(held), 2, tol=1e-10, seed=0).top_eigenvalues,
                                rel=1e-10)
    assert problem.loss_value() == pytest.approx(held.loss_value(), rel=1e-12)
    workers = DataLoader(CountingDigits(), batch_size=7, num_workers=2)  # a pass reads with the loader's workers
    in_workers = make_problem(model, streamed(workers, chunk_size=40), "cross_entropy", dtype=torch.float64)
    assert torch.allclose(HessianOperator(in_workers).matvec(v), streamed_product, rtol=1e-12, atol=1e-14)


def test_random_batches_and_shards_of_a_stream_read_only_their_examples(model):
    data = CountingDigits()
    problem = make_problem(model, streamed(data, chunk_size=64), "cross_entropy", dtype=torch.float64)
    held = make_problem(model, load_digits(150), "cross_entropy", chunk_size=64, dtype=torch.float64)
    before = data.reads
    batch = random_batch(problem, problem.indexed_examples(), 16, 3, 1, 8)
    assert data.reads - before == 16
    expected = random_batch(held, held.indexed_examples(), 16, 3, 1, 8)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(batch.batches, expected.batches))
    share = problem.sharded(1, 3)
    assert share.n_local_samples == 50 and share.n_samples == 150 and share.batches.indices == tuple(range(50, 100))
    assert share.gathered().n_local_samples == 150
    assert problem.cast(torch.float32).batches[0][0].dtype == torch.float32


def test_random_transforms_are_refused_when_streamed_and_drawn_once_when_held(model, tmp_path, monkeypatch):
    with pytest.raises(InputError, match="change from one read to the next"):
        streamed(CountingDigits(noise=0.1))
    (tmp_path / "noisy.py").write_text(textwrap.dedent('''
        from test_streaming import CountingDigits

        def dataset(noise=0.0):
            return CountingDigits(noise=noise)
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.syspath_prepend(str(__import__("pathlib").Path(__file__).parent))
    torch.save(model.state_dict(), tmp_path / "m.pt")

    def eigs(*args):
        return CliRunner().invoke(main, ["eigs", "--checkpoint", str(tmp_path / "m.pt"), "--model", "mlp", "--data",
                                         "noisy:dataset", "--top-k", "1", "--json", "--quiet", "--out",
                                         str(tmp_path / f"o{len(list(tmp_path.iterdir()))}"), *args])

    refused = eigs("--data-arg", "noise=0.1", "--stream-data", "always")
    assert refused.exit_code == 1 and "--stream-data never" in refused.stderr
    held = eigs("--data-arg", "noise=0.1", "--stream-data", "never")
    assert held.exit_code == 0 and any("drawn once" in w for w in json.loads(held.stdout)["warnings"])
    import hessian_probe.loading as loading

    monkeypatch.setattr(loading, "STREAM_MEMORY_FRACTION", 1e-12)  # auto streams what would not fit
    auto = eigs()
    assert auto.exit_code == 0 and any("at every product" in w for w in json.loads(auto.stdout)["warnings"])
    never = eigs("--stream-data", "never")
    assert json.loads(never.stdout)["top_eigenvalues"] == pytest.approx(
        json.loads(auto.stdout)["top_eigenvalues"], rel=1e-10)


MEMORY_SCRIPT = textwrap.dedent('''
    import resource, sys, threading, time, torch
    from torch.utils.data import Dataset
    from hessian_probe.cli import main

    class Big(Dataset):  # 3,000 images of 3 x 48 x 48: 166 MB in float64, made on the fly
        def __len__(self):
            return 3000
        def __getitem__(self, i):
            g = torch.Generator().manual_seed(i)
            return torch.rand(3, 48, 48, generator=g), i % 2

    def big():
        return Big()

    if __name__ == "__main__":
        torch.manual_seed(0)
        net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 48 * 48, 2))
        torch.save(net.state_dict(), sys.argv[2] + "/m.pt")
        with open(sys.argv[2] + "/net.py", "w") as f:
            f.write("import torch\\ndef net():\\n    return torch.nn.Sequential(torch.nn.Flatten(), "
                    "torch.nn.Linear(3 * 48 * 48, 2))\\n")
        sys.path.insert(0, sys.argv[2])

        def eigs(out, *more):
            try:
                main(["eigs", "--checkpoint", sys.argv[2] + "/m.pt", "--model", "net:net", "--data", "bigdata:big",
                      "--stream-data", sys.argv[1], "--chunk-size", "100", "--top-k", "1", "--tol", "1e-3",
                      "--quiet", "--out", sys.argv[2] + "/" + out + "-" + sys.argv[1], *more])
            except SystemExit as exc:
                return exc.code

        def resident():
            with open("/proc/self/statm") as fh:
                return int(fh.read().split()[1]) * resource.getpagesize()

        peak = [0]

        def watch():  # the largest resident size while the run goes (ru_maxrss would count earlier peaks)
            while True:
                peak[0] = max(peak[0], resident())
                time.sleep(0.002)

        warm = eigs("warm", "--samples", "20")  # every import and kernel warmed up: what follows is the data
        start = resident()
        threading.Thread(target=watch, daemon=True).start()
        code = eigs("out")
        print("exit codes", warm, code)
        print(peak[0] - start)
''')


def test_streamed_memory_is_bounded_by_the_chunk_not_the_dataset(tmp_path):
    """Peak memory of the whole run above what the process held before it: streamed, it stays below
    a third of the 166 MB sample; held, the sample alone takes it (resident size sampled every 2 ms,
    in separate processes; glibc's malloc told to return large blocks, else its heap keeps freed
    chunks and blurs the figure)."""
    (tmp_path / "bigdata.py").write_text(MEMORY_SCRIPT)
    growth = {}
    for mode in ("always", "never"):
        out = subprocess.run([sys.executable, str(tmp_path / "bigdata.py"), mode, str(tmp_path)], cwd=tmp_path,
                             capture_output=True, text=True, timeout=300,
                             env={**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"})
        assert out.returncode == 0 and "exit codes 0 0" in out.stdout, out.stdout + out.stderr
        growth[mode] = int(out.stdout.split()[-1])
    sample = 3000 * 3 * 48 * 48 * 8
    assert growth["never"] > sample and growth["always"] < sample / 3, growth


def test_a_loaders_own_sampler_is_drawn_once_and_said(model):
    from hessian_probe.loading.data import _loader_sample

    data = CountingDigits()
    notes = []
    weights = torch.zeros(150)
    weights[:10] = 1.0  # only the first ten examples can be drawn
    sampler = torch.utils.data.WeightedRandomSampler(weights, 40, generator=torch.Generator().manual_seed(0))
    sample = _loader_sample(DataLoader(data, batch_size=8, sampler=sampler), "weighted", notes)
    assert len(sample) == 40 and set(sample.order) <= set(range(10))
    assert "WeightedRandomSampler: one draw was taken (40 indices" in notes[0]
    problem = make_problem(model, streamed(DataLoader(data, batch_size=8, sampler=sampler)), "cross_entropy")
    assert problem.n_samples == 40
