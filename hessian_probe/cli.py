"""The hessian-probe command line: parse options, make one library call, write what it returns.

Every command loads a :class:`~hessian_probe.loading.ProblemSpec` into a Problem, builds the
curvature operator and calls exactly one analysis function, so the shell and the Python API
give the same numbers. Bad input ends with one ``Error:`` line and exit code 1 (data, model,
files) or 2 (usage); ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import torch

from . import __version__, distributed
from .errors import InputError, UsageError, first_line, one_line
from .files import OWN_FILES, Manifest, OutputLock, refuse_foreign
from .results import to_jsonable

DEBUG_ENV = "HESSIAN_PROBE_DEBUG"
OPERATOR_NAMES = ("hessian", "ggn", "fisher", "empirical-fisher")  # operators.OPERATORS, named without importing torch


class CommandError(click.ClickException):
    """One line on stderr and a chosen exit code, no traceback. Under torchrun, an error every
    rank raised alike is printed by rank 0 only; another rank's own error names the rank."""

    def __init__(self, message: str, exit_code: int = 1, on_every_rank: bool = False) -> None:
        rank = distributed.rank()
        super().__init__(f"[rank {rank}] {message}" if rank else message)
        self.exit_code = exit_code
        self.silent = bool(rank) and on_every_rank

    def show(self, file: Any = None) -> None:
        if not self.silent:
            super().show(file)


class ProbeGroup(click.Group):
    """Turns user errors (and, without --debug, unexpected failures) into one line and an exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.UsageError as exc:  # a subcommand's bad option: one line, exit 2
            command = exc.ctx.command_path if exc.ctx else "hessian-probe"
            raise CommandError(f"{one_line(exc.format_message())} (see `{command} --help`)", 2) from None
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except KeyboardInterrupt:  # outside an analysis run (which saves its pieces and says so): one line, 130
            if _debugging(ctx):
                raise
            _ignore_further_interrupts()
            raise CommandError("interrupted (Ctrl-C)", 130, on_every_rank=True) from None
        except InputError as exc:
            if _debugging(ctx):
                raise
            raise CommandError(one_line(str(exc)), exc.exit_code, _on_every_rank(exc)) from None
        except Exception as exc:
            if _debugging(ctx):
                raise
            if distributed.active() and distributed.peer_lost(exc):
                raise CommandError(f"another process of this torchrun run stopped ({distributed.brief(exc)}); the "
                                   "finished pieces are saved: rerun the same command with --resume",
                                   on_every_rank=True) from None
            raise CommandError(f"{first_line(exc)} (rerun with --debug for the traceback)",
                               on_every_rank=_on_every_rank(exc)) from None


def _on_every_rank(exc: BaseException) -> bool:
    return bool(getattr(exc, "on_every_rank", False))


def _debugging(ctx: click.Context) -> bool:
    return bool((ctx.obj or {}).get("debug") or os.environ.get(DEBUG_ENV))


def _set_debug(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value:
        ctx.ensure_object(dict)
        ctx.find_root().ensure_object(dict)["debug"] = True


DEBUG_OPTION = click.option("--debug", is_flag=True, expose_value=False, is_eager=True, callback=_set_debug,
                            help="Show the full traceback on errors.")


@click.group(cls=ProbeGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="hessian-probe")
@DEBUG_OPTION
@click.pass_context
def main(ctx: click.Context) -> None:
    """Measure the curvature (Hessian, Gauss-Newton) of a PyTorch model's loss.

    \b
    Start with the built-in demo (bundled digits data, no download):
      hessian-probe demo
    then point it at your own checkpoint:
      hessian-probe spectrum --checkpoint model.pt --model mymodels:make_net --data tensors:data.pt
    """
    ctx.ensure_object(dict)


# --- options shared by the analysis commands -------------------------------------------------

BATCH_SIZE_OPTION = click.option(
    "--batch-size", type=click.IntRange(min=1), default=None,
    help="Analyse one seeded random batch of B examples (the batch Hessian) instead of the full sample.")


def problem_options(command: Callable, one_batch: bool = True) -> Callable:
    """--checkpoint, --model, --data, --loss, --operator, ... : everything that defines the problem
    (``one_batch``: offer --batch-size, the batch operator; a batch-size scan chooses its own)."""
    options = [
        click.option("--checkpoint", required=True, type=click.Path(dir_okay=False, path_type=Path),
                     help="State dict (.pt/.pth/.bin/.ckpt, or a dict wrapping one) or .safetensors."),
        click.option("--model", default=None, metavar="SPEC",
                     help="mlp | cnn (built-ins), a torchvision name, or package.module:factory / file.py:factory. "
                          "Required unless the checkpoint is a trusted pickled model."),
        click.option("--model-arg", "model_args", multiple=True, metavar="KEY=VALUE",
                     help="Keyword argument for the model factory (repeatable); values are Python literals."),
        click.option("--trust-checkpoint", is_flag=True,
                     help="Allow a fully pickled model (runs code from the file: only for files you trust)."),
        click.option("--data", required=True, metavar="SPEC",
                     help="digits | digits:image | tensors:PATH (.pt/.npz) | torchvision:NAME:ROOT | package.module:factory."),
        click.option("--samples", type=click.IntRange(min=1), default=None,
                     help="Use a seeded random subset of this many examples."),
        BATCH_SIZE_OPTION,
        click.option("--chunk-size", type=click.IntRange(min=1), default=1024, show_default=True,
                     help="Examples per forward pass (memory only: the operator does not depend on it)."),
        click.option("--loss", default="cross_entropy", show_default=True, metavar="NAME",
                     help="cross_entropy | mse | bce_with_logits | bce | package.module:fn (mean loss of outputs "
                          "and targets)."),
        click.option("--operator", type=click.Choice(list(OPERATOR_NAMES)), default="hessian", show_default=True,
                     help="Hessian, generalised Gauss-Newton matrix, Fisher of the loss's predictive distribution "
                          "(the GGN for cross_entropy, mse, bce_with_logits) or empirical Fisher (the examples' "
                          "gradients' uncentred covariance at the data's labels)."),
        click.option("--params", default=None, metavar="PATTERN",
                     help="Only these parameters (comma-separated globs or module prefixes, e.g. 'fc2' or '*.weight')."),
        click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda | cuda:i."),
        click.option("--dtype", type=click.Choice(["auto", "float32", "float64"]), default="auto", show_default=True,
                     help="Precision of the products (auto: float64 on CPU, float32 on GPU)."),
        click.option("--seed", type=click.IntRange(0, 2**63 - 1), default=0, show_default=True,
                     help="Seed for probes, subsets and batches."),
        click.option("--compile", "compile_products", is_flag=True,
                     help="torch.compile the batch product (pays off on GPUs for long runs; not used by lr's scan)."),
        click.option("--tf32", is_flag=True,
                     help="Allow TF32 tensor cores in float32 products on CUDA (faster, ~1e-3 relative rounding)."),
        click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
                     help="Output folder [default: hessian-probe-<command>]."),
        click.option("--resume", is_flag=True,
                     help="Continue an interrupted run in --out: finished pieces (SLQ probe blocks, batches, "
                          "thresholds) are read back, not recomputed; the numbers are those of an uninterrupted run. An "
                          "empty or missing --out starts afresh."),
        click.option("--overwrite", is_flag=True,
                     help="Write into a non-empty --out: this run's files replace their namesakes that hessian-probe "
                          "wrote (a namesake it did not write is refused; other files stay) and an interrupted run's "
                          "saved pieces there are dropped."),
        click.option("--allow-nondeterministic", is_flag=True,
                     help="Skip the check (two products with one vector) that the operator is a fixed matrix, and "
                          "allow BatchNorm with batch statistics: the numbers may then be wrong."),
        click.option("--json", "as_json", is_flag=True, help="Print the result JSON on stdout instead of the summary."),
        click.option("--quiet", is_flag=True, help="No progress bars."),
        DEBUG_OPTION,
    ]
    if not one_batch:
        options.remove(BATCH_SIZE_OPTION)
    return with_options(options)(command)


def with_options(options: list[Callable]) -> Callable:
    """A decorator applying click options in the order listed (the first is shown first in --help)."""
    def apply(command: Callable) -> Callable:
        for option in reversed(options):
            command = option(command)
        return command
    return apply


class FiniteRange(click.FloatRange):
    """click.FloatRange that also refuses nan and +-inf (which compare False with every bound)."""

    def convert(self, value: Any, param: Any, ctx: Any) -> Any:
        import math

        if not math.isfinite(click.FLOAT.convert(value, param, ctx)):  # said before any range
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return super().convert(value, param, ctx)


PROBLEM_KEYS = ("checkpoint", "model", "model_args", "trust_checkpoint", "data", "samples", "batch_size",
                "chunk_size", "loss", "params", "device", "dtype", "seed")


RECORD_FILES = frozenset({"result.json", "eigenvalues.csv", "density.png", "density.pdf", "eigenvectors.pt"})


def analysis_command(name: str, *, one_batch: bool = True, writer: Callable | None = None,
                     may_hold: frozenset[str] = frozenset(), outputs: frozenset[str] = RECORD_FILES) -> Callable:
    """Register an analysis command: ``body(op, *, seed, progress, out_dir, loaded, journal,
    **command_options) -> (result, extra_files)``, the result a record (a dict) or a typed result with
    ``to_dict()``; ``writer(record, out_dir, result) -> files`` saves the
    record (default: result.json, eigenvalues.csv and density plots). ``may_hold``: files that
    --out may already hold without --overwrite (validate-lr reads lr's outputs there); ``outputs``:
    every file name the command may write (a namesake hessian-probe did not write is never replaced)."""

    def register(body: Callable) -> Callable:
        @functools.partial(problem_options, one_batch=one_batch)
        @click.pass_context
        @functools.wraps(body)
        def command(ctx: click.Context, operator: str, out_dir: Path | None, as_json: bool, quiet: bool,
                    resume: bool, overwrite: bool, **options: Any) -> dict[str, Any]:
            spec_options = {k: options.pop(k, None) for k in PROBLEM_KEYS}
            products = {"compile": options.pop("compile_products"), "tf32": options.pop("tf32")}
            check = not options.pop("allow_nondeterministic")
            run = RunOptions(name=name, operator=operator, out_dir=out_dir or Path(f"hessian-probe-{name}"),
                             as_json=as_json, quiet=quiet, resume=resume, overwrite=overwrite, may_hold=may_hold,
                             outputs=outputs, check_determinism=check,
                             settings={"operator": operator, **options, "products": products})
            return _run(ctx, run, spec_options, functools.partial(body, **options), writer, products)

        return main.command(name)(command)

    return register


@dataclasses.dataclass(frozen=True)
class RunOptions:
    """How one analysis command runs and where it writes (not what it computes, except ``settings``:
    the command's own options, part of the fingerprint a resumed run must match)."""

    name: str
    operator: str
    out_dir: Path
    as_json: bool = False
    quiet: bool = False
    resume: bool = False
    overwrite: bool = False
    may_hold: frozenset[str] = frozenset()
    settings: dict[str, Any] = dataclasses.field(default_factory=dict)
    outputs: frozenset[str] = RECORD_FILES
    check_determinism: bool = True


class Terminated(KeyboardInterrupt):
    """SIGTERM, turned into an interruption like Ctrl-C so that the run stops the same clean way."""


def _terminate(signum: int, frame: Any) -> None:
    raise Terminated()


def _ignore_further_interrupts() -> None:
    """From the first interruption until the process ends, Ctrl-C and SIGTERM do nothing more: a
    stopping run counts its pieces, releases its folder and says so in one line, undisturbed (the
    pieces themselves are written atomically: whole or absent)."""
    import signal

    with contextlib.suppress(ValueError):  # not the main thread
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _run(ctx: click.Context, run: RunOptions, spec_options: dict[str, Any], compute: Callable,
         writer: Callable | None = None, products: dict[str, bool] | None = None) -> dict[str, Any]:
    """Load, compute, write; Ctrl-C or SIGTERM stop cleanly, keeping the finished pieces for --resume."""
    import signal

    from .journal import PARTIAL, Journal, saved_pieces

    try:
        previous = signal.signal(signal.SIGTERM, _terminate)
    except ValueError:  # not the main thread: leave signals alone
        previous = None
    lock = OutputLock(run.out_dir)
    interrupted = False
    try:
        return _load_compute_write(ctx, run, spec_options, compute, writer, products,
                                   lambda fingerprint: Journal.start(run.out_dir, fingerprint, resume=run.resume), lock)
    except KeyboardInterrupt as exc:
        how, code = ("SIGTERM", 143) if isinstance(exc, Terminated) else ("Ctrl-C", 130)
        interrupted = True
        _ignore_further_interrupts()  # a second Ctrl-C while the run stops changes nothing
        saved = saved_pieces(run.out_dir)
        message = (f": {saved} finished piece(s) saved in {run.out_dir / PARTIAL}; run the same command with "
                   "--resume to continue (in a config file: resume = true)" if saved else
                   " before any piece finished; nothing to resume")
        raise CommandError(f"interrupted ({how}){message}", code, on_every_rank=True) from None
    finally:
        lock.release()
        if previous is not None and not interrupted:
            signal.signal(signal.SIGTERM, previous)


def _load_compute_write(ctx: click.Context, run: RunOptions, spec_options: dict[str, Any], compute: Callable,
                        writer: Callable | None, products: dict[str, bool] | None,
                        start_journal: Callable[[dict[str, Any]], Any], lock: Any = None) -> dict[str, Any]:
    from .imports import IMPORTED_FILES, imported_code_digest
    from .loading import ProblemSpec, load_problem, parse_model_args
    from .operators import curvature_operator
    from .operators.determinism import check_fixed_operator, evaluation_note
    from .operators.ggn import split_description
    from .outputs import environment, file_digest, input_digests, plot_title, provenance, summary, write_record
    from .progress import ProductProgress

    started = time.perf_counter()
    env = environment()
    device = distributed.initialise(spec_options["device"])  # under torchrun: join the group, cuda:LOCAL_RANK
    spec = ProblemSpec(**{**spec_options, "checkpoint": str(spec_options["checkpoint"]), "device": device,
                          "model_args": parse_model_args(spec_options["model_args"])})
    out_dir = run.out_dir
    # before any work: a run must not be lost to an unwritable folder, nor overwrite one (rank 0 writes)
    distributed.on_main(lambda: _prepare_output(out_dir, run, lock))
    IMPORTED_FILES.clear()  # the code digest covers what this run imports
    loaded = distributed.everywhere(lambda: load_problem(spec))  # a file error stops every rank alike
    op = curvature_operator(loaded.problem, run.operator, **(products or {}))
    if run.check_determinism:  # two products, before any long work (operators/determinism.py)
        check_fixed_operator(op, spec.seed)
    digests = input_digests(spec)
    # what fixes the numbers: files by content (not by how their paths are spelled), every option,
    # the device and dtype actually used, the process count and the versions
    inputs = {k: v for k, v in to_jsonable(dataclasses.asdict(spec)).items() if k != "checkpoint"}
    if digests["data_sha256"]:
        inputs.pop("data")
    journal = start_journal({
        "command": run.name, **inputs, **to_jsonable(run.settings), **digests,
        "device_used": str(op.device.type), "dtype_used": str(op.dtype), "processes": distributed.world_size(),
        "version": __version__, "torch": torch.__version__, "code_sha256": imported_code_digest(),
        **{f"{name}_sha256": file_digest(out_dir / name) for name in sorted(run.may_hold) if (out_dir / name).is_file()}})
    loaded_at = time.perf_counter()
    with ProductProgress(quiet=run.quiet or not distributed.is_main(), label=f"{run.operator} ").attach(op) as progress:
        result, extra_files = compute(op, seed=spec.seed, progress=progress, out_dir=out_dir, loaded=loaded,
                                      journal=journal)
    record = result.to_dict() if hasattr(result, "to_dict") else result
    finished = time.perf_counter()
    timings = {"load_s": loaded_at - started, "analysis_s": finished - loaded_at, "total_s": finished - started}
    record["provenance"] = provenance(env, run.name, (ctx.obj or {}).get("config"), spec, loaded, timings, digests)
    record["provenance"]["products"] = dataclasses.asdict(op.settings)
    record["provenance"]["resumed_pieces"] = journal.resumed
    record["provenance"]["rejected_pieces"] = journal.rejected  # damaged or another run's: computed again
    record["provenance"]["evaluation_mode"] = evaluation_note(loaded.model)
    if op.name != "hessian":  # J^T S J, split at the model's outputs
        record["ggn_split"], split_warning = split_description(op.problem, op.name)
        if split_warning:
            record["warnings"] = [*record.get("warnings", []), split_warning]
    record = to_jsonable(record)
    if not distributed.is_main():  # every rank holds the same record; rank 0 writes and reports it
        return record
    if writer is None:
        written = write_record(record, out_dir, title=plot_title(record)) + extra_files
    else:
        written = writer(record, out_dir, result) + extra_files
    Manifest(out_dir).add(written)
    journal.finish()
    if ctx.find_root().obj.get("echo", True):
        resumed = f" ({journal.resumed} finished piece(s) read back)" if journal.resumed else ""
        if journal.rejected:
            resumed += f" ({journal.rejected} damaged or foreign piece(s) in partial/ computed again)"
        click.echo(json.dumps(record, allow_nan=False) if run.as_json else
                   f"{summary(record)}\n  wrote {', '.join(written)} to {out_dir}/ in {timings['total_s']:.1f} s{resumed}")
    return record


def _prepare_output(out_dir: Path, run: RunOptions, lock: OutputLock | None = None) -> None:
    """A writable output folder that holds nothing this run would overwrite, unless --overwrite or
    --resume (which needs an interrupted run there, not a finished one); never a file hessian-probe
    did not write there (the folder's manifest, files.py). Locked for this run when ``lock``."""
    from .journal import PARTIAL

    if run.resume and run.overwrite:
        raise UsageError("--resume continues the run in --out and --overwrite replaces it: choose one")
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"--out {out_dir} is a file; choose a folder")
    held = sorted(p.name for p in out_dir.iterdir() if p.name not in OWN_FILES) if out_dir.is_dir() else []
    refuse_foreign(out_dir, [name for name in held if name in run.outputs])
    foreign = [name for name in held if name not in run.may_hold]
    if run.resume and foreign and PARTIAL not in held:
        raise UsageError(f"--resume: {out_dir} holds no interrupted run (no partial/ folder); "
                         "pass --overwrite to run again there, or choose another --out")
    if foreign and not (run.resume or run.overwrite):
        shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
        raise UsageError(f"the output folder {out_dir} is not empty (it holds {shown}): pass --overwrite to replace "
                         "its results, --resume to continue an interrupted run there, or choose another --out")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create the output folder {out_dir}: {exc.strerror or first_line(exc)}") from None
    if not os.access(out_dir, os.W_OK):
        raise UsageError(f"the output folder {out_dir} is not writable; choose another with --out")
    if lock is not None:
        lock.acquire()


BASIS_OPTION = click.option(
    "--basis", type=click.Choice(["auto", "device", "host"]), default="auto", show_default=True,
    help="Where the Lanczos basis lives: auto keeps it on the GPU when it takes at most half its free memory, "
         "else in pinned host memory (slower, but a large model's basis fits).")


def _check_counts(op: Any, top_k: int, bottom_k: int) -> None:
    if top_k + bottom_k == 0:
        raise UsageError("ask for at least one eigenvalue: --top-k or --bottom-k")
    if top_k + bottom_k > op.size:
        raise UsageError(f"--top-k {top_k} plus --bottom-k {bottom_k} exceeds the {op.size} parameters measured")


def _operator_header(op: Any) -> dict[str, Any]:
    return {"operator": op.name, "n_params": op.size, "n_samples": op.problem.n_samples}


# --- analysis commands ------------------------------------------------------------------------

@analysis_command("spectrum")
@click.option("--steps", type=click.IntRange(min=2), default=80, show_default=True, help="Lanczos steps per SLQ probe.")
@click.option("--probes", type=click.IntRange(min=1), default=8, show_default=True, help="SLQ probes (run in lockstep).")
@click.option("--top-k", type=click.IntRange(min=0), default=5, show_default=True, help="Largest eigenvalues to report.")
@click.option("--bottom-k", type=click.IntRange(min=0), default=3, show_default=True,
              help="Smallest (most negative) eigenvalues to report.")
@click.option("--tol", type=FiniteRange(min=0, max=1, min_open=True, max_open=True), default=1e-6, show_default=True,
              help="Relative Ritz residual for extremal eigenvalues.")
@click.option("--max-steps", type=click.IntRange(min=1), default=None, help="Lanczos step budget for eigenvalues.")
@click.option("--trace-products", type=click.IntRange(min=3), default=99, show_default=True,
              help="Operator products for the trace estimate.")
@click.option("--trace-method", type=click.Choice(["hutchpp", "hutchinson"]), default="hutchpp", show_default=True,
              help="Hutch++ (lower variance for PSD operators) or plain Hutchinson.")
@click.option("--reorth", type=click.Choice(["full", "none"]), default="full", show_default=True,
              help="SLQ reorthogonalisation. none keeps no Lanczos basis (memory 2 x probes x P): the density and "
                   "trace stay right (ghost copies of outliers share their weight); eigenvalues still come from "
                   "their own reorthogonalised run.")
@BASIS_OPTION
@click.option("--probe-block", type=click.IntRange(min=1), default=None,
              help="Run the SLQ probes in blocks of this many [default: all at once]: less memory, and each "
                   "finished block is saved for --resume.")
def spectrum(op, *, seed, progress, out_dir, loaded, journal, steps, probes, top_k, bottom_k, tol, max_steps,
             trace_products, trace_method, reorth, basis, probe_block):
    """Spectral density (SLQ), extremal eigenvalues and trace.

    Writes result.json, eigenvalues.csv, density.png and density.pdf.

    \b
    Example (the demo's checkpoint):
      hessian-probe spectrum --checkpoint hessian-probe-demo/checkpoint.pt --model mlp --data digits
    """
    from .analysis import spectrum as run_spectrum

    _check_counts(op, top_k, bottom_k)
    result = run_spectrum(op, n_steps=steps, n_probes=probes, top_k=top_k, bottom_k=bottom_k, tol=tol,
                          max_steps=max_steps, trace_products=trace_products, trace_method=trace_method,
                          seed=seed, progress=progress, reorth=reorth, basis=basis, probe_block=probe_block,
                          pieces=journal)
    return result.to_dict(), []


@analysis_command("eigs")
@click.option("--top-k", type=click.IntRange(min=0), default=5, show_default=True, help="Largest eigenvalues to report.")
@click.option("--bottom-k", type=click.IntRange(min=0), default=0, show_default=True,
              help="Smallest (most negative) eigenvalues to report.")
@click.option("--tol", type=FiniteRange(min=0, max=1, min_open=True, max_open=True), default=1e-6, show_default=True,
              help="Relative Ritz residual |A v - theta v| <= tol |theta|.")
@click.option("--max-steps", type=click.IntRange(min=1), default=None,
              help="Lanczos steps (or power iterations per eigenvalue) before giving up.")
@click.option("--method", type=click.Choice(["lanczos", "power"]), default="lanczos", show_default=True)
@click.option("--eigenvectors", "save_vectors", is_flag=True,
              help="Also save the eigenvectors (rows, per-parameter layout in the file) to eigenvectors.pt.")
@BASIS_OPTION
def eigs(op, *, seed, progress, out_dir, loaded, journal, top_k, bottom_k, tol, max_steps, method, save_vectors, basis):
    """Extremal eigenvalues with Ritz residuals and converged flags.

    Writes result.json and eigenvalues.csv (and eigenvectors.pt with --eigenvectors).

    \b
    Example: the 5 largest and 3 smallest Hessian eigenvalues of the last layer
      hessian-probe eigs --checkpoint hessian-probe-demo/checkpoint.pt --model mlp --top-k 5 --bottom-k 3 --params 2
    """
    from .linalg import extremal_eigs
    from .linalg.eigs import default_max_steps

    _check_counts(op, top_k, bottom_k)
    limit = {"max_steps": max_steps, "basis": basis} if method == "lanczos" else {"max_iter": max_steps or 1000}
    progress.stage("eigenvalues", default_max_steps(op.size, top_k + bottom_k, max_steps) if method == "lanczos" else None)
    result = journal.shared("eigs", lambda: extremal_eigs(op, top_k, bottom_k, tol=tol, method=method, seed=seed,
                                                          return_eigenvectors=save_vectors, **limit))
    record = {**_operator_header(op), "top_eigenvalues": result.top_eigenvalues,
              "bottom_eigenvalues": result.bottom_eigenvalues, "eigs": result, "converged": result.converged,
              "warnings": result.notes,
              "settings": dict(top_k=top_k, bottom_k=bottom_k, tol=tol, max_steps=max_steps, method=method, seed=seed)}
    if not save_vectors or not distributed.is_main():
        return record, []
    out_dir.mkdir(parents=True, exist_ok=True)
    from .outputs import save_eigenvectors

    save_eigenvectors(result, op.space, out_dir / "eigenvectors.pt")
    return record, ["eigenvectors.pt"]


@analysis_command("trace")
@click.option("--products", type=click.IntRange(min=3), default=99, show_default=True,
              help="Operator products to spend (Hutch++ splits them in three).")
@click.option("--method", type=click.Choice(["hutchpp", "hutchinson"]), default="hutchpp", show_default=True,
              help="Hutch++ (lower variance for PSD operators) or plain Hutchinson.")
def trace(op, *, seed, progress, out_dir, loaded, journal, products, method):
    """Trace by Hutch++ or Hutchinson, with its standard error.

    \b
    Example:
      hessian-probe trace --checkpoint hessian-probe-demo/checkpoint.pt --model mlp --operator ggn
    """
    from .linalg import trace as estimate_trace

    progress.stage("trace", products)
    result = journal.shared("trace", lambda: estimate_trace(op, products, method=method, seed=seed))
    return {**_operator_header(op), "trace": result, "warnings": list(result.warnings),
            "settings": dict(products=products, method=method, seed=seed)}, []


# --- plot, run, demo -----------------------------------------------------------------------------

@main.command()
@click.argument("results", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", "out_file", type=click.Path(dir_okay=False, path_type=Path), default=Path("density.png"),
              show_default=True, help="Image file; a PDF twin is written next to it.")
@click.option("--label", "labels", multiple=True, help="Legend label per result, in order (repeatable).")
@click.option("--title", default="", help="Figure title.")
@DEBUG_OPTION
def plot(results: tuple[Path, ...], out_file: Path, labels: tuple[str, ...], title: str) -> None:
    """Redraw or overlay saved results (result.json files, or folders holding one).

    \b
    Example: Hessian and GGN of the demo in one figure
      hessian-probe plot hessian-probe-demo/hessian hessian-probe-demo/ggn --out both.png
    """
    from .files import written_by_us
    from .outputs import read_record
    from .plots import plot_densities

    if out_file.suffix.lower() not in (".png", ".pdf", ".svg", ".jpg", ".jpeg"):
        raise CommandError(f"--out {out_file}: use a .png, .pdf, .svg or .jpg file name", exit_code=2)
    records = [read_record(path) for path in results]
    if labels and len(labels) != len(records):
        raise CommandError(f"{len(labels)} --label values for {len(records)} results", exit_code=2)
    if not labels and len({r["operator"] for r in records}) < len(records):
        labels = tuple(f"{r['operator']} ({path})" for r, path in zip(records, results))
    paths, kept = [out_file], ""
    twin = out_file.with_suffix(".pdf")
    if out_file.suffix.lower() != ".pdf":  # the PDF twin, unless a file of that name is not ours
        if not twin.exists() or (twin.is_file() and not twin.is_symlink() and written_by_us(twin)):
            paths.append(twin)
        else:
            kept = f"; kept the existing {twin} (not written by hessian-probe), so no PDF twin"
    if out_file.parent != Path():
        out_file.parent.mkdir(parents=True, exist_ok=True)
    plot_densities(records, paths, title=title, labels=labels or None)
    click.echo(f"wrote {', '.join(map(str, paths))}{kept}")


@main.command()
@click.argument("config", type=click.Path(dir_okay=False, path_type=Path))
@DEBUG_OPTION
@click.pass_context
def run(ctx: click.Context, config: Path) -> None:
    """Run what a TOML config file says (keys are the command's option names).

    \b
    Example (configs/ holds a commented one for every command):
      hessian-probe run configs/spectrum.toml
    """
    from .config import command_line

    name, argv, content = command_line(config, {n: c for n, c in main.commands.items() if n != "run"})
    ctx.obj["config"] = {"path": str(config), "content": content}
    command = main.commands[name]
    try:
        sub_ctx = command.make_context(name, argv, parent=ctx)
    except click.UsageError as exc:  # a bad value in the file: name the file, one line
        raise CommandError(f"{config}: {one_line(exc.format_message())}", exit_code=2) from None
    with sub_ctx:
        command.invoke(sub_ctx)


@main.command()
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("hessian-probe-demo"),
              show_default=True, help="Folder for the checkpoint, results and plots.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the result JSON of both operators instead of the summary.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@DEBUG_OPTION
@click.pass_context
def demo(ctx: click.Context, out_dir: Path, seed: int, as_json: bool, quiet: bool) -> None:
    """Train a small MLP on the bundled digits data, then run `spectrum` for its Hessian and GGN.

    Writes checkpoint.pt, hessian/ and ggn/ (each a spectrum output folder) and density.png/.pdf
    overlaying both, in about 15 s on a laptop CPU.

    \b
    Example:
      hessian-probe demo --out hessian-probe-demo
    """
    from .demo import train_digits_mlp
    from .plots import plot_densities

    if distributed.launched():
        raise CommandError("the demo runs in one process: start it without torchrun", exit_code=2)
    started = time.perf_counter()
    demo_files = ["checkpoint.pt", "density.png", "density.pdf"]
    refuse_foreign(out_dir, demo_files)
    out_dir.mkdir(parents=True, exist_ok=True)
    checkpoint = out_dir / "checkpoint.pt"
    train_digits_mlp(checkpoint, seed=seed)
    Manifest(out_dir).add(["checkpoint.pt"])
    if not as_json:
        click.echo(f"trained a 64-32-10 tanh MLP on the 1,797 bundled digits; saved {checkpoint}")
    ctx.find_root().obj["echo"] = not as_json
    records = [ctx.invoke(spectrum, checkpoint=checkpoint, model="mlp", data="digits", operator=kind,
                          out_dir=out_dir / kind, seed=seed, quiet=quiet, overwrite=True) for kind in ("hessian", "ggn")]
    ctx.find_root().obj["echo"] = True
    plot_densities(records, [out_dir / "density.png", out_dir / "density.pdf"],
                   title=f"digits MLP: Hessian and GGN, P = {records[0]['n_params']:,}, N = {records[0]['n_samples']:,}")
    Manifest(out_dir).add(demo_files)
    if as_json:
        click.echo(json.dumps(to_jsonable(records), allow_nan=False))
    else:
        click.echo(f"wrote density.png and density.pdf (both operators) to {out_dir}/; the demo took "
                   f"{time.perf_counter() - started:.1f} s")


# --- learning rate as a function of batch size --------------------------------------------------


def _batch_sizes(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        sizes = sorted({int(v) for v in text.replace(" ", "").split(",") if v})
    except ValueError:
        raise UsageError(f"--batch-sizes takes integers separated by commas, got {text!r}") from None
    if not sizes or sizes[0] < 1:
        raise UsageError(f"--batch-sizes must be positive integers, got {text!r}")
    return sizes


def _names(text: str, allowed: tuple[str, ...], option: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names or set(names) - set(allowed):
        raise UsageError(f"{option} takes {', '.join(allowed)} (comma-separated), got {text!r}")
    return names


def _checkpoint_optimizer(loaded: Any, problem: Any) -> tuple[Any, Any]:
    """The checkpoint's optimizer state: what it says (OptimizerInfo) and Adam's moments in the
    problem's flat layout (analysis.adam.SavedAdamState, or None)."""
    from .loading.optimizer import read_optimizer_state, saved_adam_state

    info = read_optimizer_state(loaded.checkpoint.optimizer_state, [n for n, _ in loaded.model.named_parameters()])
    return info, saved_adam_state(info, problem)


def _learning_rates(op: Any, loaded: Any, seed: int, progress: Any, journal: Any, *, batch_sizes: list[int] | None,
                    smallest_batch: int = 16, n_batches: int = 5, tol: float = 1e-6, density_steps: int = 40,
                    safety: float = 1.0, given: dict[str, Any] | None = None, subspace: int = 8,
                    adam_state: str = "auto", adam_horizon: int = 200, calibrate_at: int | None = None,
                    recipe: Any = None) -> Any:
    """`lr`'s one library call: hyperparameters and Adam's moments from the checkpoint (options win)."""
    from .analysis.batch_scan import default_batch_sizes
    from .analysis.lr import Hyperparameters, learning_rates
    from .loading.optimizer import found_hyperparameters

    problem = op.problem
    sizes = batch_sizes or default_batch_sizes(problem.n_samples, smallest_batch)
    if sizes[-1] > problem.n_samples:
        raise UsageError(f"--batch-sizes: {sizes[-1]} is larger than the sample ({problem.n_samples} examples)")
    if calibrate_at is not None and calibrate_at >= problem.n_samples:
        raise UsageError(f"--calibrate-at {calibrate_at}: calibrate at a batch size below the sample "
                         f"({problem.n_samples} examples)")
    info, saved = _checkpoint_optimizer(loaded, problem)
    if adam_state == "saved" and saved is None:
        raise UsageError("--adam-state saved: the checkpoint carries no usable Adam moments (exp_avg_sq with a step "
                         "count, one parameter group, matching shapes); use --adam-state estimated")
    hp = Hyperparameters.resolve(given or {}, found_hyperparameters(info), safety=safety)
    result = learning_rates(problem, op.name, batch_sizes=sizes, n_batches=n_batches, tol=tol, subspace=subspace,
                            hyperparameters=hp, adam_state=adam_state, saved_state=saved, adam_horizon=adam_horizon,
                            calibrate_at=calibrate_at,
                            recipe=recipe, density_steps=density_steps, seed=seed, progress=progress, pieces=journal,
                            settings=dataclasses.replace(op.settings, compile=False))
    return dataclasses.replace(result, checkpoint_optimizer={"kind": info.kind, "lr": info.lr,
                                                             "notes": list(info.notes)})


LR_STATE = "lr_state.pt"
LR_FILES = frozenset({"lr.json", "lr.csv", "lr.png", "spectra_by_batch.png", LR_STATE})


def _write_lr(record: dict[str, Any], out_dir: Path, result: Any) -> list[str]:
    """lr_state.pt (the typed result, tensors and plain values only, for validate-lr), lr.json with
    that file's digest, lr.csv, lr.png and spectra_by_batch.png."""
    from .files import write_atomically
    from .outputs import file_digest, write_json, write_rows_csv
    from .plots import plot_batch_spectra, plot_learning_rates
    from .results import to_state

    state = to_state(result.without_vectors())
    write_atomically(out_dir / LR_STATE, lambda temporary: torch.save(state, temporary))
    record["state_file"] = {"name": LR_STATE, "sha256": file_digest(out_dir / LR_STATE)}
    write_json(record, out_dir / "lr.json")
    write_rows_csv(record["rows"], out_dir / "lr.csv", LR_COLUMNS)
    plot_learning_rates(record, out_dir / "lr.png")
    files = ["lr.json", "lr.csv", "lr.png", LR_STATE]
    if record["densities"]:
        plot_batch_spectra(record, out_dir / "spectra_by_batch.png")
        files.append("spectra_by_batch.png")
    return files


LR_COLUMNS = ["batch_size", "x", "n_batches", "lambda_max_mean", "lambda_max_std", "lambda_min_mean", "lambda_min_std",
              "adam_sharpness_mean", "adam_sharpness_std", "lr_max_sgd", "lr_max_momentum", "lr_max_nesterov",
              "lr_max_adam", "converged", "batch_sharpness_mean", "batch_sharpness_std", "top_direction_std",
              "lr_max_sgd_mss", "lr_max_sgd_batch_sharpness", "lr_max_momentum_mss", "lr_max_nesterov_mss",
              "lr_max_adam_mss", "lr_recommended_sgd", "lr_recommended_momentum", "lr_recommended_nesterov",
              "lr_recommended_adam", "calibrated", "lr_calibrated_sgd", "lr_calibrated_momentum",
              "lr_calibrated_nesterov", "lr_calibrated_adam"]

HYPERPARAMETER_OPTIONS = [
    click.option("--momentum", type=FiniteRange(0, 1, max_open=True), default=None,
                 help="Heavy-ball momentum rho [default: the checkpoint's, else 0.9]."),
    click.option("--nesterov/--no-nesterov", default=None, help="[default: the checkpoint's, else off]"),
    click.option("--weight-decay", type=FiniteRange(min=0), default=None,
                 help="Coupled L2 weight decay [default: the checkpoint's, else 0]."),
    click.option("--beta1", type=FiniteRange(0, 1, max_open=True), default=None,
                 help="Adam beta1 [default: the checkpoint's, else 0.9]."),
    click.option("--beta2", type=FiniteRange(0, 1, max_open=True), default=None,
                 help="Adam beta2 [default: the checkpoint's, else 0.999]."),
    click.option("--eps", type=FiniteRange(min=0), default=None,
                 help="Adam eps [default: the checkpoint's, else 1e-8]."),
]


def training_options(prefix: str = "") -> list[Callable]:
    """How measuring runs train: steps, seeds, the blow-up factor and the bisection's precision."""
    return [
        click.option(f"--{prefix}steps", type=click.IntRange(min=1), default=200, show_default=True,
                     help="Training steps per run."),
        click.option(f"--{prefix}seeds", type=click.IntRange(min=1), default=3, show_default=True,
                     help="Seeded runs per learning rate; a rate fails when most of them fail."),
        click.option(f"--{prefix}blowup", type=FiniteRange(min=1, min_open=True), default=10.0, show_default=True,
                     help="A run blows up when its loss is not finite or exceeds this multiple of its start."),
        click.option(f"--{prefix}precision", type=FiniteRange(min=0, min_open=True), default=0.05,
                     show_default=True, help="Relative width at which the bisection stops."),
    ]


def scan_options(note: str = "") -> list[Callable]:
    """The batch-size scan's options (lr; validate-lr when it scans because lr's outputs are missing)."""
    return [
        click.option("--smallest-batch", type=click.IntRange(min=1), default=16, show_default=True,
                     help="Smallest scanned batch size (at least 4 sizes below N are needed for the fit)." + note),
        click.option("--batches", "n_batches", type=click.IntRange(min=2), default=5, show_default=True,
                     help="Random batches per batch size." + note),
        click.option("--tol", type=FiniteRange(min=0, max=1, min_open=True, max_open=True), default=1e-6, show_default=True,
                     help="Relative Ritz residual for each batch's extremal eigenvalues." + note),
    ]


DENSITY_STEPS_OPTION = click.option(
    "--density-steps", type=click.IntRange(min=0), default=40, show_default=True,
    help="Lanczos steps of one SLQ density per batch size, for spectra_by_batch.png (0: none).")


@analysis_command("lr", one_batch=False, writer=_write_lr, outputs=LR_FILES)
@click.option("--batch-sizes", default=None, metavar="B1,B2,...",
              help="Batch sizes to scan [default: powers of two from --smallest-batch, then the full sample].")
@with_options(scan_options())
@with_options(HYPERPARAMETER_OPTIONS)
@click.option("--safety", type=FiniteRange(0, 1, min_open=True), default=1.0, show_default=True,
              help="Multiply every threshold and the recommended rates by this factor.")
@DENSITY_STEPS_OPTION
@click.option("--subspace", type=click.IntRange(min=0, max=16), default=8, show_default=True,
              help="Top eigenvectors of the full-sample operator in which the batch noise and the mean-square "
                   "thresholds are measured (k products per batch; 0: no mean-square thresholds).")
@click.option("--adam-state", type=click.Choice(["auto", "saved", "estimated"]), default="auto", show_default=True,
              help="Adam's second moment: the checkpoint's (saved), the one training at each B settles to, from "
                   "per-example gradients (estimated), or saved when the checkpoint has it (auto).")
@click.option("--adam-horizon", type=click.IntRange(min=1), default=200, show_default=True,
              help="Steps a saved Adam state is carried forward at each B (its second moment moves toward the one "
                   "training at B settles to): the length of the run the Adam thresholds are for.")
@click.option("--calibrate-at", type=click.IntRange(min=1), default=None, metavar="B0",
              help="Measure each optimizer's blow-up threshold at B0 by short training runs and carry the factor "
                   "measured/predicted to every B (the rates are then marked calibrated).")
@with_options(training_options("calibration-"))
def lr(op, *, seed, progress, out_dir, loaded, journal, batch_sizes, smallest_batch, n_batches, tol, momentum, nesterov,
       weight_decay, beta1, beta2, eps, safety, density_steps, subspace, adam_state, adam_horizon, calibrate_at,
       calibration_steps, calibration_seeds, calibration_blowup, calibration_precision):
    """Largest stable learning rate per batch size for SGD, momentum, Nesterov and Adam, and a rate to follow.

    Scans batch sizes; per size measures random batch Hessians' extremal eigenvalues, batch
    sharpness and noise in the top eigen-directions; fits lambda'(B) = lambda_inf + kappa x^p; and
    gives each optimizer's divergence threshold from the fixed-Hessian model, mean-square stability
    under batch noise, and (SGD) batch sharpness, plus lr_recommended_<optimizer>, conservative by
    construction (--calibrate-at B0 calibrates it by training). Adam's second moment is the one
    training at B settles to (from per-example gradients), or the checkpoint's exp_avg_sq carried
    --adam-horizon steps forward at B.
    Writes lr.json, lr.csv, lr.png, lr_state.pt and spectra_by_batch.png.

    \b
    Example (the demo's checkpoint, which carries Adam's state):
      hessian-probe lr --checkpoint hessian-probe-demo/checkpoint.pt --model mlp --data digits
    """
    from .analysis.validate import TrainingRecipe

    recipe = TrainingRecipe(steps=calibration_steps, seeds=calibration_seeds, blowup=calibration_blowup,
                            precision=calibration_precision)
    return _learning_rates(op, loaded, seed, progress, journal, batch_sizes=_batch_sizes(batch_sizes),
                           smallest_batch=smallest_batch, n_batches=n_batches, tol=tol, density_steps=density_steps,
                           safety=safety, subspace=subspace, adam_state=adam_state, adam_horizon=adam_horizon,
                           calibrate_at=calibrate_at, recipe=recipe, given=dict(momentum=momentum, nesterov=nesterov, weight_decay=weight_decay,
                                                     beta1=beta1, beta2=beta2, eps=eps)), []


def _write_validation(record: dict[str, Any], out_dir: Path, result: Any) -> list[str]:
    from .outputs import write_json, write_rows_csv

    record["lr"].setdefault("provenance", record["provenance"])  # a scan run here has this run's inputs
    files = _write_lr(record["lr"], out_dir, result.learning_rates)
    write_json(record, out_dir / "validation.json")
    write_rows_csv(record["validation"], out_dir / "validation.csv", VALIDATION_COLUMNS)
    written = ["validation.json", "validation.csv"]
    if record["validation_no_progress"]:
        write_rows_csv(record["validation_no_progress"], out_dir / "validation_no_progress.csv", VALIDATION_COLUMNS)
        written.append("validation_no_progress.csv")
    return written + files


VALIDATION_COLUMNS = ["optimizer", "batch_size", "predicted_lr", "measured_lr", "ratio", "diverging_lr", "runs", "note",
                      "criterion", "seeds", "recommended_lr", "ratio_to_recommended", "best_model", "best_prediction",
                      "ratio_to_best"]


@analysis_command("validate-lr", one_batch=False, writer=_write_validation, may_hold=LR_FILES,
                  outputs=LR_FILES | {"validation.json", "validation.csv", "validation_no_progress.csv"})
@click.option("--batch-sizes", default=None, metavar="B1,B2,...",
              help="Batch sizes to train at [default: every other batch size of the lr scan below N, at most 4].")
@click.option("--optimizers", default="sgd,momentum,adam", show_default=True,
              help="Comma-separated: sgd, momentum, nesterov, adam.")
@click.option("--criteria", default="blowup,no_progress", show_default=True,
              help="Comma-separated: blowup (non-finite, or loss above --blowup x its start), no_progress (loss "
                   "after --steps above its start).")
@with_options(training_options())
@with_options(scan_options(" Used when --out holds no lr outputs and the scan runs here."))
@DENSITY_STEPS_OPTION
def validate_lr(op, *, seed, progress, out_dir, loaded, journal, batch_sizes, optimizers, criteria, steps, seeds, blowup,
                precision, smallest_batch, n_batches, tol, density_steps):
    """Measure the divergence threshold by short training runs and compare it with `lr`'s predictions.

    Reads lr.json and lr_state.pt from --out (run `hessian-probe lr` with the same --out first; if
    they are missing the scan runs here with its defaults). For each batch size and optimizer,
    bisects the largest learning rate at which most of --seeds runs of --steps steps from the
    checkpoint (fresh seeded batches; Adam from the state its prediction assumed) pass each
    criterion. Writes validation.json, validation.csv (blow-up thresholds), validation_no_progress.csv,
    and adds the measured points to lr.json and lr.png.

    \b
    Example:
      hessian-probe lr --checkpoint hessian-probe-demo/checkpoint.pt --model mlp --data digits --out lr-demo
      hessian-probe validate-lr --checkpoint hessian-probe-demo/checkpoint.pt --model mlp --data digits --out lr-demo
    """
    from .analysis.validate import CRITERIA, OPTIMIZERS, TrainingRecipe, validate_learning_rates

    names = _names(optimizers, OPTIMIZERS, "--optimizers")
    kinds = _names(criteria, CRITERIA, "--criteria")
    sizes = _batch_sizes(batch_sizes)
    n = op.problem.n_samples
    if sizes and sizes[-1] > n:
        raise UsageError(f"--batch-sizes: {sizes[-1]} is larger than the sample ({n} examples)")
    lr_result = distributed.on_main(lambda: _matching_lr_result(out_dir, op, loaded))
    if lr_result is None:
        lr_result = _learning_rates(op, loaded, seed, progress, journal, batch_sizes=None, smallest_batch=smallest_batch,
                                    n_batches=n_batches, tol=tol, density_steps=density_steps)
    if not sizes and not lr_result.default_validation_sizes():
        raise UsageError(f"no batch size below the sample ({n} examples) to train at: pass --batch-sizes")
    _, saved = _checkpoint_optimizer(loaded, op.problem)
    recipe = TrainingRecipe(steps=steps, seeds=seeds, blowup=blowup, precision=precision)
    validation = validate_learning_rates(op.problem, lr_result, recipe, optimizers=names, batch_sizes=sizes,
                                         criteria=kinds, saved_state=saved, seed=seed, progress=progress,
                                         pieces=journal)
    return ValidationReport(header=_operator_header(op), learning_rates=dataclasses.replace(
        lr_result, validation=validation)), []


@dataclasses.dataclass(frozen=True)
class ValidationReport:
    """validate-lr's outputs: the validation beside the predictions it tested."""

    header: dict[str, Any]
    learning_rates: Any

    def to_dict(self) -> dict[str, Any]:
        validation = self.learning_rates.validation
        added = validation.record()
        return to_jsonable({**self.header, "validation": added["validation"],
                            "validation_no_progress": added["validation_no_progress"],
                            "definition": validation.definition,
                            "settings": dict(batch_sizes=validation.batch_sizes, optimizers=validation.optimizers,
                                             criteria=validation.criteria, seed=validation.seed,
                                             adam_state=validation.adam_source, **dataclasses.asdict(validation.recipe)),
                            "lr": self.learning_rates.to_dict(), "warnings": validation.warnings})


def _matching_lr_result(out_dir: Path, op: Any, loaded: Any) -> Any:
    """The typed result of an earlier `lr` run in ``out_dir`` on the same checkpoint, data, parameters
    and operator (None when there is none)."""
    from .outputs import file_digest, read_json
    from .results import from_state

    path = out_dir / "lr.json"
    if not path.is_file():
        return None
    try:
        record = read_json(path)
        inputs = record["provenance"]["inputs"]
        state_file = record["state_file"]
        _ = record["rows"], record["fit"]  # an lr record has both
    except (ValueError, KeyError, TypeError):
        raise UsageError(f"{path} is not an lr.json written by this version of `hessian-probe lr`; rerun lr with "
                         "this --out, or choose another --out") from None
    now = _operator_header(op)
    then = {k: record.get(k) for k in now}
    same_checkpoint = inputs.get("checkpoint_sha256") == file_digest(loaded.checkpoint.path)
    if then != now or not same_checkpoint or record["provenance"].get("parameters") != list(op.problem.params):
        raise UsageError(f"{path} was computed for another checkpoint, sample, parameters or operator; "
                         "rerun `hessian-probe lr` with this --out, or choose another --out")
    state_path = out_dir / LR_STATE
    if not state_path.is_file() or file_digest(state_path) != state_file.get("sha256"):
        raise UsageError(f"{state_path} is missing or is not the one {path} was written with; rerun "
                         "`hessian-probe lr` with this --out")
    try:
        return from_state(torch.load(state_path, weights_only=True))
    except Exception as exc:
        raise UsageError(f"{state_path} cannot be read ({first_line(exc)}); rerun `hessian-probe lr` with this --out") \
            from None
