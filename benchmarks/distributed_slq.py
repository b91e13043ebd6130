"""Full-sample SLQ on 1 vs several processes (torchrun), and peak memory by where the basis lives.

Each configuration runs in fresh processes: the same workload, the same seeded probes, the same
SLQ (``--steps`` x ``--probes``, full reorthogonalisation unless stated). Reported per run:
wall time of the SLQ (after one warm-up product), its ratio to the one-process run, the
largest trace relative difference to the one-process run (the operator must not change), the
basis's bytes and place, and the peak memory of the busiest rank: CUDA allocated memory on a GPU,
else the process's peak resident set (which includes torch itself, ~0.3-0.5 GB).

    python benchmarks/distributed_slq.py --workload digits-mlp              # CPU: 1 vs 2 processes
    python benchmarks/distributed_slq.py --workload resnet18 --device cuda --processes 1,2,4,8

Configurations: ``<W> proc x <T> threads`` on the CPU (all cores busy in each: T = cores / W,
and 1 x 1 for reference); on CUDA, W processes (one GPU each, NCCL), plus the memory runs with
the basis forced to the device, to pinned host memory, and SLQ without reorthogonalisation.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]


def worker(args: argparse.Namespace) -> None:
    """One rank of one configuration: build, shard, warm up, time SLQ, write this rank's figures."""
    import torch
    from workloads import make_workload

    from hessian_probe import distributed
    from hessian_probe.linalg import slq
    from hessian_probe.operators import curvature_operator
    from hessian_probe.problem import make_problem

    device = distributed.initialise(args.device)
    device = "cpu" if device == "auto" else device
    work = make_workload(args.workload, args.samples)
    shard = (distributed.rank(), distributed.world_size()) if distributed.active() else None
    problem = make_problem(work.model, work.batches, "cross_entropy", dtype=getattr(torch, args.dtype),
                           device=device, shard=shard)
    op = curvature_operator(problem, args.operator)
    op.matmat(torch.ones(args.probes, op.size, dtype=op.dtype, device=op.device))  # warm-up: lazy inits
    if op.device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    result = slq(op, args.steps, args.probes, seed=0, reorth=args.reorth, basis=args.basis)
    if op.device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    peak = (torch.cuda.max_memory_allocated() if op.device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    figures = {"rank": distributed.rank(), "seconds": seconds, "trace": result.trace_estimate, "peak_bytes": peak,
               "basis": result.basis_memory, "local_samples": problem.n_local_samples, "n_params": op.size,
               "n_samples": problem.n_samples, "device": str(op.device), "threads": torch.get_num_threads()}
    Path(args.worker).with_suffix(f".{distributed.rank()}.json").write_text(json.dumps(figures))


def launch(args: argparse.Namespace, processes: int, threads: int, reorth: str, basis: str, out: Path) -> dict:
    """Run one configuration in fresh processes; the figures of its slowest / busiest rank."""
    common = ["--worker", str(out), "--workload", args.workload, "--steps", str(args.steps), "--probes",
              str(args.probes), "--device", args.device, "--dtype", args.dtype, "--operator", args.operator,
              "--reorth", reorth, "--basis", basis] + (["--samples", str(args.samples)] if args.samples else [])
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONWARNINGS": "ignore"}
    script = [str(Path(__file__).resolve()), *common]
    command = ([sys.executable, *script] if processes == 1 else
               [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}",
                *script])
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{processes} process(es) failed:\n{done.stderr[-3000:]}")
    ranks = [json.loads(out.with_suffix(f".{r}.json").read_text()) for r in range(processes)]
    slowest = max(ranks, key=lambda r: r["seconds"])
    return {**slowest, "processes": processes, "threads": threads, "reorth": reorth, "basis_place": basis,
            "peak_bytes": max(r["peak_bytes"] for r in ranks),
            "local_samples": [r["local_samples"] for r in ranks]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workload", default="digits-mlp")
    parser.add_argument("--samples", type=int, default=None)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--probes", type=int, default=8)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--operator", default="hessian", choices=["hessian", "ggn"])
    parser.add_argument("--processes", default="1,2", help="comma-separated process counts")
    parser.add_argument("--reorth", default="full", choices=["full", "none"])
    parser.add_argument("--basis", default="auto", choices=["auto", "device", "host"])
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = parser.parse_args()
    if args.worker:
        return worker(args)

    cores = os.cpu_count() or 1
    counts = [int(v) for v in args.processes.split(",")]
    plan = []
    if args.device == "cpu":
        plan += [(w, max(1, cores // w), "full", "auto") for w in counts] + [(1, 1, "full", "auto")]
        plan += [(counts[0], max(1, cores // counts[0]), "none", "auto")]
    else:
        plan += [(w, 1, "full", "auto") for w in counts]
        plan += [(1, 1, "full", "device"), (1, 1, "full", "host"), (1, 1, "none", "auto")]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, (w, t, reorth, basis) in enumerate(plan):
            rows.append(launch(args, w, t, reorth, basis, Path(tmp) / f"run{i}"))
            print(f"  ran {w} proc x {t} threads, reorth {reorth}, basis {basis}: {rows[-1]['seconds']:.2f} s",
                  file=sys.stderr)
    base = rows[0]
    print(f"# full-sample SLQ: {args.workload}, P = {base['n_params']:,}, N = {base['n_samples']:,}, "
          f"{args.steps} steps x {args.probes} probes, {args.operator}, {args.dtype}, {args.device}; "
          f"{platform.processor() or platform.machine()}, {cores} cores")
    print("| processes x threads | reorth | basis | SLQ s | time / 1-process | trace rel. diff | "
          "basis MB (place) | peak MB (busiest rank) | shards |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        basis = r["basis"]
        place = f"{basis['bytes'] / 2**20:.1f} ({basis['device']})" if basis else "none kept"
        diff = abs(r["trace"] - base["trace"]) / abs(base["trace"])
        print(f"| {r['processes']} x {r['threads']} | {r['reorth']} | {r['basis_place']} | {r['seconds']:.2f} | "
              f"{r['seconds'] / base['seconds']:.2f} | {diff:.1e} | {place} | {r['peak_bytes'] / 2**20:.0f} | "
              f"{'+'.join(map(str, r['local_samples']))} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
