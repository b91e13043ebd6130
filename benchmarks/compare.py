"""Side by side: the same curvature jobs through hessian-probe and its peers, one table.

Each (tool, job) runs in its own subprocess (fresh memory peak, a crash or a time-out costs only
that cell) on the same model, data, device and precision; the table gives wall time, Hessian-
vector products, seconds per product, peak memory and each value's agreement with hessian-probe.

    python benchmarks/compare.py --workload digits-mlp --device cpu
    python benchmarks/compare.py --workload resnet18 --device cuda --peer-probes 1 --timeout 150 \
        --json resnet18.json --markdown resnet18.md

Peers are found if importable (pip install pyhessian==0.1 hessian-eigenthings
curvlinops-for-pytorch --no-deps); a missing one is reported as such, never an error.
With ``--peer-probes p < --probes``, peers run SLQ with p probes and their time for the full
number is extrapolated linearly (they run probes one after another), marked '~' in the table.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import json
import os
import platform
import resource
import shlex
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

JOBS = ("top", "trace", "slq")
DEFAULT_TOOLS = ("hessian-probe", "pyhessian", "eigenthings", "curvlinops")


def set_precision(tf32: bool) -> None:
    """Strict float32 products unless ``tf32`` (both cuBLAS matmuls and cuDNN convolutions)."""
    import torch

    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32


def worker(args: argparse.Namespace) -> dict:
    """Run one (tool, job) and measure it; called in a subprocess by :func:`main`."""
    import tools
    import torch
    from tools import MODULES, TOOLS
    from workloads import make_workload

    # Import time is not compute: load the tool and torch's lazily imported compiler stack
    # (torch.func's first call imports torch._dynamo, ~1.5 s on a CPU) before the clock starts.
    importlib.import_module(MODULES[args.tool])
    importlib.import_module("torch._dynamo")
    set_precision(args.tf32)
    tools.TRACE_PRODUCTS = args.trace_products
    device = torch.device(args.device)
    workload = make_workload(args.workload, args.samples, args.batch_size)
    model = workload.model.to(device).eval()
    batches = [(x.to(device), y.to(device)) for x, y in workload.batches]
    loss = torch.nn.functional.cross_entropy(model(batches[0][0]), batches[0][1])
    loss.backward()  # warm-up (CUDA context, cuDNN heuristics): the same for every tool
    model.zero_grad(set_to_none=True)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    sync()
    t0 = time.perf_counter()
    out = TOOLS[args.tool](args.job, model, batches, device, args.probes_here)
    sync()
    wall = time.perf_counter() - t0
    peak = (torch.cuda.max_memory_allocated(device) if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return {**out, "wall_s": wall, "peak_mb": peak / 2**20,
            "peak_kind": "CUDA allocated" if device.type == "cuda" else "process RSS"}


def run_cell(args: argparse.Namespace, tool: str, job: str) -> dict:
    from tools import PEER_MODULES

    module = PEER_MODULES.get(tool)
    if module and importlib.util.find_spec(module) is None:
        return {"status": "not installed"}
    probes = args.probes if tool.startswith("hessian-probe") or job != "slq" else args.peer_probes
    with tempfile.TemporaryDirectory() as tmp:
        result_file = Path(tmp) / "cell.json"
        command = [sys.executable, __file__, "--worker", tool, job, "--result-file", str(result_file),
                   "--probes-here", str(probes), *args.forwarded]
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(command, capture_output=True, text=True, timeout=args.timeout)
        except subprocess.TimeoutExpired:
            return {"status": f"did not finish in {args.timeout:g} s", "probes": probes}
        if proc.returncode != 0 or not result_file.exists():
            last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            return {"status": f"crashed after {time.perf_counter() - t0:.0f} s: {last[:160]}", "probes": probes}
        cell = json.loads(result_file.read_text())
    cell.update(status="ok", probes=probes)
    cell["s_per_product"] = cell["wall_s"] / cell["products"] if cell["products"] else None
    return cell


def agreement(cells: dict, args: argparse.Namespace) -> None:
    """Relative difference of each value from hessian-probe's; SLQ time scaled to the full probe count."""
    for job in JOBS:
        ours = cells.get(("hessian-probe", job), {})
        for (tool, j), cell in cells.items():
            if j != job or cell.get("status") != "ok":
                continue
            ref = ours.get("value") if ours.get("status") == "ok" else None
            if ref is None and job == "slq":
                ref = cells.get(("hessian-probe", "top"), {}).get("value")
            if ref is not None and cell.get("value") is not None:
                cell["rel_diff"] = abs(cell["value"] - ref) / abs(ref)
            cell["wall_full_s"] = cell["wall_s"] * (args.probes / cell["probes"] if job == "slq" else 1)
        if ours.get("status") == "ok":
            for (tool, j), cell in cells.items():
                if j == job and cell.get("status") == "ok":
                    cell["time_ratio"] = cell["wall_full_s"] / ours["wall_full_s"]


def environment(args: argparse.Namespace) -> dict:
    import torch

    device = args.device
    name = torch.cuda.get_device_name(0) if device.startswith("cuda") else (platform.processor() or platform.machine())
    return {"date": dt.date.today().isoformat(), "device": device, "device_name": name,
            "cpu_count": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version(),
            "command": "python benchmarks/compare.py " + " ".join(shlex.quote(a) for a in args.argv)}


def markdown(cells: dict, args: argparse.Namespace, env: dict) -> str:
    from workloads import make_workload

    w = make_workload(args.workload, args.samples, args.batch_size)
    head = (f"**{w.name}** ({w.description}; P = {w.n_params:,}, N = {w.n_samples:,} in "
            f"{len(w.batches)} batches of {len(w.batches[0][0])}), {env['device_name']} ({env['device']}), "
            f"torch {env['torch']}, {'TF32' if args.tf32 else 'strict fp32'}, {env['date']}.\n"
            f"`{env['command']}`\n\n")
    rows = ["| job | tool | status | wall s | x hessian-probe | products | ms / product | peak MiB | value | rel. diff "
            "| converged | notes |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for (tool, job), c in cells.items():
        if c.get("status") != "ok":
            rows.append(f"| {job} | {tool} | {c['status']} | | | | | | | | | |")
            continue
        approx = "~" if c["wall_full_s"] != c["wall_s"] else ""
        wall = f"{approx}{c['wall_full_s']:.2f}" + (
            f" ({c['probes']} probe{'s' * (c['probes'] > 1)}: {c['wall_s']:.2f})" if approx else "")
        rows.append("| " + " | ".join([
            job, tool, "ok", wall, f"{c['time_ratio']:.2f}" if "time_ratio" in c else "",
            str(c["products"]), f"{1e3 * c['s_per_product']:.2f}" if c["s_per_product"] else "",
            f"{c['peak_mb']:.0f}", f"{c['value']:.6g}" if c["value"] is not None else "",
            f"{c['rel_diff']:.1e}" if "rel_diff" in c else "", "" if c["converged"] is None else str(c["converged"]),
            c["notes"]]) + " |")
    return head + "\n".join(rows) + "\n"


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workload", default="digits-mlp", choices=["digits-mlp", "resnet18", "transformer-lm"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--samples", type=int, help="examples (default: the workload's)")
    p.add_argument("--batch-size", type=int, help="examples per batch (default: the workload's)")
    p.add_argument("--tf32", action="store_true", help="allow TF32 in every tool's products (CUDA)")
    p.add_argument("--jobs", default=",".join(JOBS))
    p.add_argument("--tools", default=",".join(DEFAULT_TOOLS),
                   help="comma-separated; also hessian-probe-compiled (torch.compile of the batch product)")
    p.add_argument("--probes", type=int, default=8, help="SLQ probes")
    p.add_argument("--trace-products", type=int, default=64, help="Hutchinson products (a multiple of 8)")
    p.add_argument("--peer-probes", type=int, help="SLQ probes for the peers (default: --probes)")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds per (tool, job)")
    p.add_argument("--json", type=Path)
    p.add_argument("--markdown", type=Path)
    p.add_argument("--worker", nargs=2, metavar=("TOOL", "JOB"), help=argparse.SUPPRESS)
    p.add_argument("--result-file", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--probes-here", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.argv = argv
    args.peer_probes = args.peer_probes or args.probes
    args.forwarded = ["--workload", args.workload, "--device", args.device]
    args.forwarded += [f for k in ("samples", "batch_size") if getattr(args, k)
                       for f in (f"--{k.replace('_', '-')}", str(getattr(args, k)))]
    args.forwarded += ["--tf32"] if args.tf32 else []
    args.forwarded += ["--trace-products", str(args.trace_products)]
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse(sys.argv[1:] if argv is None else argv)
    if args.worker:
        args.tool, args.job = args.worker
        try:
            args.result_file.write_text(json.dumps(worker(args)))
        except Exception:
            traceback.print_exc()
            sys.exit(1)
        return
    cells = {}
    for job in args.jobs.split(","):
        for tool in args.tools.split(","):
            cells[(tool, job)] = run_cell(args, tool, job)
            c = cells[(tool, job)]
            print(f"{job:6s} {tool:24s} {c['status']:10s} "
                  + (f"{c['wall_s']:8.2f} s {c['products']:5d} products value {c['value']}"
                     if c["status"] == "ok" else ""),
                  file=sys.stderr, flush=True)
    agreement(cells, args)
    env = environment(args)
    table = markdown(cells, args, env)
    print(table)
    if args.markdown:
        args.markdown.write_text(table)
    if args.json:
        args.json.write_text(json.dumps({"environment": env, "workload": args.workload, "tf32": args.tf32,
                                         "cells": [{"tool": t, "job": j, **c} for (t, j), c in cells.items()]},
                                        indent=1))


if __name__ == "__main__":
    main()
