"""A GPT-2-small-sized causal transformer (124M parameters, built from transformers' default
GPT2Config, random weights, no download) end to end on the CPU (issue 18, item 2): the top-k
Hessian eigenvalues by Lanczos with their residuals, and the peak resident memory against a
formula.

Memory model (float32, b = 4 bytes, P parameters, m Lanczos steps, k wanted):
    peak RSS ~ B1 + c k P b + 2 k P b + 2 k P 8,   c = min(max_steps + 1, 64) basis rows
B1 the peak after one product (torch, the model, one product's double-backward activations,
measured), c k P b the Lanczos basis as allocated up front (full reorthogonalisation; on a CPU
capped to 80% of the available memory, linalg.lanczos.host_rows_that_fit),
2 k P b the current and previous Lanczos vectors, and 2 k P 8 the float64 copies of the float32
residual check (linalg.eigs._measured_residuals: A y and y in float64). The peak is ru_maxrss.

With ``--spectrum M`` it runs SLQ instead (``spectrum --reorth none``: M Lanczos steps per probe,
``--probes`` probes in one block, no basis kept): peak RSS ~ B1 + 3 k P b + k P 8, the three
current Lanczos vectors of the k probes and one float64 accumulator.

Run: python benchmarks/large_transformer.py [--tokens 64 --sequences 2 --top-k 3 --max-steps 40]
     python benchmarks/large_transformer.py --spectrum 12 --probes 2
(about 5 s per Hessian product on 2 CPU cores; needs transformers).
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import torch
from resident import resident_bytes


def rss_bytes() -> int:
    """Peak resident set size of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--sequences", type=int, default=2)
    parser.add_argument("--top-k", type=int, default=3)
    parser.add_argument("--tol", type=float, default=1e-3)
    parser.add_argument("--max-steps", type=int, default=40)
    parser.add_argument("--method", choices=["lanczos", "power"], default="lanczos")
    parser.add_argument("--spectrum", type=int, default=0, metavar="M",
                        help="SLQ with M steps and no reorthogonalisation instead of eigs")
    parser.add_argument("--probes", type=int, default=2)
    parser.add_argument("--trace-memory", action="store_true", help="print the RSS every 5 s to stderr")
    args = parser.parse_args()
    if args.trace_memory:
        import sys
        import threading

        def trace() -> None:
            while True:
                print(f"rss {resident_bytes() / 2**30:.2f} GiB", file=sys.stderr, flush=True)
                time.sleep(5)

        threading.Thread(target=trace, daemon=True).start()

    import transformers

    from hessian_probe import curvature_operator, extremal_eigs, make_problem, slq
    from hessian_probe.loading.pretrained import PretrainedLogits

    r0 = resident_bytes()
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config()).eval()
    ids = torch.randint(0, model.config.vocab_size, (args.sequences, args.tokens),
                        generator=torch.Generator().manual_seed(1))
    problem = make_problem(PretrainedLogits(model), (ids, ids), "causal_lm", dtype=torch.float32)
    op = curvature_operator(problem, "hessian")
    p, b = op.size, 4
    t0 = time.perf_counter()
    op.matvec(torch.randn(p))
    first_product_s = time.perf_counter() - t0
    base = rss_bytes()  # model, one product's activations and working vectors
    if args.spectrum:
        t0 = time.perf_counter()
        density = slq(op, args.spectrum, args.probes, seed=0, reorth="none")
        seconds, peak, k = time.perf_counter() - t0, rss_bytes(), args.probes
        predicted = base + 3 * k * p * b + k * p * 8
        print(json.dumps({
            "method": "slq, reorth none", "torch": torch.__version__, "transformers": transformers.__version__,
            "n_params": p, "tokens": args.sequences * args.tokens, "dtype": "float32", "steps": args.spectrum,
            "probes": k, "trace_estimate": density.trace_estimate, "trace_stderr": density.trace_stderr,
            "largest_node": float(max(n.max() for n in density.nodes)), "n_products": args.spectrum * k,
            "slq_s": seconds,
            "first_product_s": first_product_s, "rss_after_one_product_GiB": base / 2**30,
            "peak_rss_GiB": peak / 2**30, "predicted_peak_GiB": predicted / 2**30,
            "peak_over_predicted": peak / predicted}, indent=1))
        return
    t0 = time.perf_counter()
    eigs = extremal_eigs(op, args.top_k, 0, tol=args.tol, max_steps=args.max_steps, seed=0, method=args.method)
    seconds = time.perf_counter() - t0
    peak = rss_bytes()
    k = args.top_k
    basis = min(args.max_steps + 1, 64) * k * p * b if args.method == "lanczos" else 0  # the allocated capacity
    predicted = base + basis + 2 * k * p * b + 2 * k * p * 8
    report = {
        "method": args.method, "torch": torch.__version__, "transformers": transformers.__version__, "n_params": p,
        "tokens": args.sequences * args.tokens, "dtype": "float32", "tol": args.tol,
        "top_eigenvalues": eigs.top_eigenvalues.tolist(), "top_residuals": eigs.top_residuals.tolist(),
        "converged": bool(eigs.converged), "lanczos_steps": eigs.n_steps, "n_products": eigs.n_products,
        "eigs_s": seconds, "first_product_s": first_product_s,
        "rss_before_model_GiB": r0 / 2**30, "rss_after_one_product_GiB": base / 2**30,
        "model_and_product_in_P_b": (base - r0) / (p * b), "basis_GiB": basis / 2**30,
        "peak_rss_GiB": peak / 2**30, "predicted_peak_GiB": predicted / 2**30, "peak_over_predicted": peak / predicted,
    }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
