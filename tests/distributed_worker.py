"""Every distributed code path on one small float64 problem: run alone, or under torchrun.

    python -m torch.distributed.run --standalone --nproc-per-node 2 tests/distributed_worker.py OUT
    python tests/distributed_worker.py OUT        # the single-process reference

writes OUT/rank<r>.json with the loss, gradient, dense Hessian and GGN, extremal eigenvalues,
SLQ (with and without reorthogonalisation), traces and a batch-size scan. The sample (37
examples in chunks of 5) splits 18 + 19 over two ranks: uneven shards and uneven batches.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from torch import nn

from hessian_probe import distributed
from hessian_probe.analysis.batch_scan import batch_scan
from hessian_probe.linalg import extremal_eigs, slq, trace
from hessian_probe.operators import curvature_operator
from hessian_probe.problem import make_problem
from hessian_probe.results import to_jsonable

N_EXAMPLES, CHUNK = 37, 5


def small_problem(shard: tuple[int, int] | None):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3)).double()
    x = torch.randn(N_EXAMPLES, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    y = torch.randint(0, 3, (N_EXAMPLES,), generator=torch.Generator().manual_seed(2))
    return make_problem(model, (x, y), "cross_entropy", chunk_size=CHUNK, shard=shard)


def compute() -> dict:
    shard = (distributed.rank(), distributed.world_size()) if distributed.active() else None
    problem = small_problem(shard)
    hessian, ggn = curvature_operator(problem, "hessian"), curvature_operator(problem, "ggn")
    eigs = extremal_eigs(hessian, 3, 2, tol=1e-10, seed=3)
    full = slq(hessian, 20, 4, seed=4)
    plain = slq(hessian, 20, 4, seed=4, reorth="none")
    scan = batch_scan(problem, "hessian", batch_sizes=[4, 8, N_EXAMPLES], n_batches=3, tol=1e-9, seed=5,
                      density_steps=6, density_probes=2, chunk_size=CHUNK)
    return to_jsonable({
        "world_size": distributed.world_size(),
        "local_samples": problem.n_local_samples,
        "n_samples": problem.n_samples,
        "loss": problem.loss_value(),
        "gradient": problem.gradient(),
        "examples": problem.examples()[0].sum().item(),
        "hessian": hessian.to_dense(),
        "ggn": ggn.to_dense(),
        "top": eigs.top_eigenvalues,
        "bottom": eigs.bottom_eigenvalues,
        "slq_nodes": list(full.nodes),
        "slq_weights": list(full.weights),
        "slq_trace": full.trace_estimate,
        "plain_nodes": list(plain.nodes),
        "plain_weights": list(plain.weights),
        "density": full.density(n_points=200).values,
        "hutchpp": trace(hessian, 30, method="hutchpp", seed=6).estimate,
        "hutchinson": trace(ggn, 16, method="hutchinson", seed=7).estimate,
        "scan_max": [m.lambda_max for m in scan.measurements],
        "scan_min": [m.lambda_min for m in scan.measurements],
        "scan_sizes": [m.batch_size for m in scan.measurements],
        "scan_full": scan.full.lambda_max,
        "scan_density": list(scan.measurements[0].density.nodes),
    })


if __name__ == "__main__":
    distributed.initialise("cpu")
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    (out / f"rank{distributed.rank()}.json").write_text(json.dumps(compute()))
