"""torchrun data parallelism: two Gloo processes on the CPU give the single-process numbers.

Each test starts real processes with ``python -m torch.distributed.run`` (torchrun), as a user
would. The sample splits unevenly over the ranks (and into batches of unequal size), so the
size-weighting over the global N and the all-reduce are both exercised. In float64 every number
must equal the single-process one to 1e-10 (relative to its scale), and the two ranks must agree
bit for bit (they run the same Krylov iterations on the same all-reduced products).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from hessian_probe import distributed
from hessian_probe.problem import make_problem, shard_batches

sys.path.insert(0, str(Path(__file__).parent))
import distributed_worker  # noqa: E402

TOLERANCE = 1e-10


def torchrun(*args: object, cwd: Path, processes: int = 2, timeout: int = 300) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc-per-node N ARGS`` in ``cwd``, with this interpreter."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}",
               *map(str, args)]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def assert_close(single: object, parallel: object, what: str) -> None:
    a, b = np.asarray(single, dtype=float), np.asarray(parallel, dtype=float)
    assert a.shape == b.shape, what
    scale = max(float(np.abs(a).max()), 1e-300)
    assert float(np.abs(a - b).max()) <= TOLERANCE * scale, f"{what}: {np.abs(a - b).max() / scale:.2e}"


def flat(value: object) -> np.ndarray:
    """Nested lists of numbers (ragged per probe) as one vector."""
    if isinstance(value, list) and value and isinstance(value[0], list):
        return np.concatenate([flat(v) for v in value])
    return np.ravel(np.asarray(value, dtype=float))


# --- the library: operators, kernels, scans -----------------------------------------------------

@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("ranks")
    done = torchrun(Path(distributed_worker.__file__), out, cwd=out)
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]


def test_two_gloo_processes_give_the_single_process_numbers(two_ranks):
    single = distributed_worker.compute()
    first, second = two_ranks
    assert first["world_size"] == 2 and single["world_size"] == 1
    assert (first["local_samples"], second["local_samples"]) == (18, 19), "uneven shards"
    assert first["n_samples"] == second["n_samples"] == single["n_samples"] == distributed_worker.N_EXAMPLES
    for key in single:
        if key in ("world_size", "local_samples"):
            continue
        assert_close(flat(single[key]), flat(first[key]), key)
        assert flat(first[key]).tobytes() == flat(second[key]).tobytes(), f"{key}: ranks differ"


def _small_parts():
    problem = distributed_worker.small_problem(None)
    return problem.module, problem.examples()


# --- sharding arithmetic and guards (in-process) ----------------------------------------------

@pytest.mark.parametrize("n,world", [(37, 2), (10, 3), (5, 5), (1000, 7)])
def test_shards_cover_the_sample_once_and_differ_by_at_most_one(n, world):
    bounds = [distributed.shard_bounds(n, r, world) for r in range(world)]
    assert bounds[0][0] == 0 and bounds[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
    sizes = [stop - start for start, stop in bounds]
    assert max(sizes) - min(sizes) <= 1 and min(sizes) >= 1


def test_shard_batches_keep_order_and_chunking():
    x, y = torch.arange(23.0)[:, None], torch.arange(23)
    batches = list(zip(x.split(4), y.split(4)))
    shares = [shard_batches(batches, r, 3)[0] for r in range(3)]
    joined = torch.cat([b[0] for share in shares for b in share])
    assert torch.equal(joined, x)
    assert max(len(b[0]) for share in shares for b in share) == 4
    assert shard_batches(batches, 0, 1) == (batches, None)


def test_too_few_examples_for_the_processes():
    with pytest.raises(ValueError, match="too few for 4 processes"):
        shard_batches([(torch.zeros(3, 2), torch.zeros(3))], 0, 4)


def test_a_sharded_problem_refuses_to_run_without_its_process_group():
    model, (x, y) = _small_parts()
    problem = make_problem(model, (x, y), "cross_entropy", shard=(0, 2))
    assert problem.n_samples == len(x) and problem.n_local_samples == len(x) // 2
    with pytest.raises(RuntimeError, match="needs the process of that rank"):
        problem.loss_value()


# --- the command line under torchrun ------------------------------------------------------------

SPECTRUM = ("spectrum", "--model", "mlp", "--data", "digits", "--samples", "101", "--chunk-size", "16",
            "--device", "cpu", "--dtype", "float64", "--steps", "15", "--probes", "3", "--top-k", "2",
            "--bottom-k", "1", "--trace-products", "12", "--tol", "1e-8", "--quiet")


def test_cli_spectrum_under_torchrun_writes_one_set_of_the_same_numbers(tmp_path, checkpoint):
    from click.testing import CliRunner

    from hessian_probe.cli import main

    single = CliRunner().invoke(main, [*SPECTRUM, "--checkpoint", str(checkpoint), "--out", str(tmp_path / "one")])
    assert single.exit_code == 0, single.output
    done = torchrun("-m", "hessian_probe", *SPECTRUM, "--checkpoint", checkpoint, "--out", tmp_path / "two",
                    cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("wrote") == 1, done.stdout  # rank 0 alone reports
    one, two = (json.loads((tmp_path / d / "result.json").read_text()) for d in ("one", "two"))
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == sorted(p.name for p in (tmp_path / "one").iterdir())
    assert two["provenance"]["processes"] == {"world_size": 2, "backend": "gloo"}
    assert one["n_samples"] == two["n_samples"] == 101
    for key in ("top_eigenvalues", "bottom_eigenvalues"):
        assert_close(one[key], two[key], key)
    assert_close(one["trace"]["estimate"], two["trace"]["estimate"], "trace")
    assert_close(flat(one["slq"]["nodes"]), flat(two["slq"]["nodes"]), "slq nodes")
    assert_close(flat(one["slq"]["weights"]), flat(two["slq"]["weights"]), "slq weights")
    assert_close(one["density"]["values"], two["density"]["values"], "density")
    assert_close(one["provenance"]["inputs"]["loss_value"], two["provenance"]["inputs"]["loss_value"], "loss")


def test_cli_lr_and_validation_spread_over_ranks(tmp_path, checkpoint):
    lr = ("lr", "--model", "mlp", "--data", "digits", "--samples", "101", "--device", "cpu", "--dtype", "float64",
          "--batch-sizes", "16,32", "--batches", "2", "--density-steps", "4", "--quiet", "--checkpoint", checkpoint)
    validate = ("validate-lr", "--model", "mlp", "--data", "digits", "--samples", "101", "--device", "cpu",
                "--dtype", "float64", "--batch-sizes", "16", "--optimizers", "sgd,adam", "--steps", "4", "--seeds", "1",
                "--precision", "0.5", "--quiet", "--checkpoint", checkpoint)
    alone = {**os.environ, "OMP_NUM_THREADS": "1"}  # as torchrun's ranks: batches measured alike, bit for bit
    for out, launch in (("one", lambda *a: subprocess.run([sys.executable, "-m", "hessian_probe", *map(str, a)],
                                                          cwd=tmp_path, capture_output=True, text=True, env=alone)),
                        ("two", lambda *a: torchrun("-m", "hessian_probe", *a, cwd=tmp_path))):
        for args in (lr, validate):
            done = launch(*args, "--out", tmp_path / out)
            assert done.returncode == 0, f"{out} {args[0]}: {done.stderr[-3000:]}"
    one, two = (json.loads((tmp_path / d / "validation.json").read_text()) for d in ("one", "two"))
    assert two["provenance"]["processes"]["world_size"] == 2
    assert len(one["lr"]["rows"]) == len(two["lr"]["rows"]) == 3
    for a, b in zip(one["lr"]["rows"], two["lr"]["rows"]):
        assert a["batch_size"] == b["batch_size"]
        assert_close(a["lambda_max_mean"], b["lambda_max_mean"], f"lambda_max_mean at B={a['batch_size']}")
    measured = [[r["measured_lr"] for r in record["validation"]] for record in (one, two)]
    assert measured[0] == measured[1], measured


def test_a_bad_example_on_one_rank_stops_both_with_one_error_line(tmp_path, checkpoint):
    x, y = torch.rand(40, 64), torch.randint(0, 10, (40,))
    y[-1] = 99  # in rank 1's shard only
    torch.save({"x": x, "y": y}, tmp_path / "data.pt")
    done = torchrun("-m", "hessian_probe", "trace", "--checkpoint", checkpoint, "--model", "mlp", "--data",
                    f"tensors:{tmp_path / 'data.pt'}", "--device", "cpu", "--out", tmp_path / "out", cwd=tmp_path)
    assert done.returncode != 0
    errors = [line for line in done.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "99" in errors[0] and "[rank" not in errors[0], done.stderr[-3000:]


def test_a_killed_rank_stops_the_other_within_a_minute_with_one_line(tmp_path, checkpoint):
    """Issue 14, item 5: SIGKILL one of two Gloo ranks mid-run; the survivor ends within 60 s with
    one line saying what happened and that --resume continues (torchrun then adds its own report)."""
    import signal
    import time

    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
               "-m", "hessian_probe", "spectrum", "--checkpoint", str(checkpoint), "--model", "mlp", "--data", "digits",
               "--probes", "16", "--probe-block", "2", "--steps", "60", "--quiet", "--out", str(out)]
    launcher = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
    deadline = time.monotonic() + 240
    while not list((out / "partial").glob("*.pt")):
        assert launcher.poll() is None and time.monotonic() < deadline, "no piece saved before the kill"
        time.sleep(0.05)
    workers = subprocess.run(["pgrep", "-P", str(launcher.pid)], capture_output=True, text=True).stdout.split()
    assert len(workers) == 2
    os.kill(int(max(workers, key=int)), signal.SIGKILL)
    killed = time.monotonic()
    _, stderr = launcher.communicate(timeout=120)
    assert time.monotonic() - killed < 60 and launcher.returncode != 0
    errors = [line for line in stderr.splitlines() if line.startswith("Error:")]
    # the survivor sees its peer's sockets close at once; torchrun's SIGTERM to it may come first
    assert len(errors) == 1 and ("another process" in errors[0] or "SIGTERM" in errors[0]), stderr[-3000:]
    assert "--resume" in errors[0] and "Traceback" not in stderr.split("Error:")[0]


@pytest.mark.slow
def test_a_hung_rank_stops_the_other_within_the_collective_timeout(tmp_path, checkpoint):
    """A rank alive but stuck (SIGSTOP) is bounded by HESSIAN_PROBE_COLLECTIVE_TIMEOUT: the other
    rank's next collective fails after that long and it stops with one line naming --resume."""
    import signal
    import threading
    import time

    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", distributed.TIMEOUT_ENV: "8"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
               "-m", "hessian_probe", "spectrum", "--checkpoint", str(checkpoint), "--model", "mlp", "--data", "digits",
               "--probes", "16", "--probe-block", "2", "--steps", "60", "--quiet", "--out", str(out)]
    launcher = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
    errors: list[tuple[float, str]] = []
    lines: list[str] = []

    def read() -> None:
        for line in launcher.stderr:
            lines.append(line)
            if line.startswith("Error:"):
                errors.append((time.monotonic(), line.strip()))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    deadline = time.monotonic() + 240
    while not list((out / "partial").glob("*.pt")):
        assert launcher.poll() is None and time.monotonic() < deadline, "no piece saved before the hang"
        time.sleep(0.05)
    workers = subprocess.run(["pgrep", "-P", str(launcher.pid)], capture_output=True, text=True).stdout.split()
    stuck = int(max(workers, key=int))
    os.kill(stuck, signal.SIGSTOP)
    hung = time.monotonic()
    try:
        while not errors and time.monotonic() < hung + 60:
            time.sleep(0.1)
    finally:
        os.kill(stuck, signal.SIGKILL)
        launcher.communicate(timeout=120)
    reader.join(10)
    assert errors, "".join(lines)[-3000:]
    (seen, line), = errors
    print(f"hung rank: the other stopped {seen - hung:.1f} s after the SIGSTOP")
    assert seen - hung < 8 + 20, seen - hung
    assert "another process" in line and "--resume" in line, line
    assert "Traceback" not in "".join(lines).split("Error:")[0]


@pytest.mark.slow  # 20 s; the default run proves the shards with spectrum and lr
def test_track_under_torchrun_measures_each_checkpoint_together_with_the_same_numbers(tmp_path, checkpoint):
    """track's ranks measure every checkpoint together, each on its shard: the rows equal one
    process's (lambda_max, trace, one batch's lambda_max and batch sharpness, Adam's sharpness)."""
    from hessian_probe.demo import train_digits_mlp

    later = tmp_path / "later.pt"
    train_digits_mlp(later, seed=0, steps=40)
    args = ("track", checkpoint, later, "--model", "mlp", "--data", "digits", "--samples", "101", "--device", "cpu",
            "--dtype", "float64", "--batch-size", "16", "--trace-products", "9", "--tol", "1e-8", "--quiet")
    alone = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, "-m", "hessian_probe", *map(str, args), "--out", str(tmp_path / "one")],
                         cwd=tmp_path, capture_output=True, text=True, env=alone)
    assert one.returncode == 0, one.stderr[-3000:]
    two = torchrun("-m", "hessian_probe", *args, "--out", tmp_path / "two", cwd=tmp_path)
    assert two.returncode == 0, two.stderr[-3000:]
    rows = [json.loads((tmp_path / d / "track.json").read_text())["rows"] for d in ("one", "two")]
    assert len(rows[0]) == len(rows[1]) == 2
    for a, b in zip(*rows):
        for key in ("lambda_max", "trace", "batch_lambda_max", "batch_sharpness", "adam_sharpness", "loss"):
            assert_close(a[key], b[key], f"{key} of {a['name']}")
