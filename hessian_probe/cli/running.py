"""How one analysis command runs: prepare the output folder, load the problem, build the operator,
check it is one fixed matrix, call the command's body (one library call), write the record; Ctrl-C
and SIGTERM stop cleanly, the finished pieces kept for --resume."""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click
import torch

from .. import __version__
from ..errors import UsageError, first_line
from ..files import OWN_FILES, Manifest, OutputLock, refuse_foreign
from ..io.names import RECORD_FILES
from ..results import to_jsonable
from ..runtime import torchrun as distributed
from .app import CommandError, _ignore_further_interrupts, main
from .options import PROBLEM_KEYS, expand_checkpoints, problem_options


def analysis_command(name: str, *, one_batch: bool = True, may_hold: frozenset[str] = frozenset(),
                     outputs: frozenset[str] = RECORD_FILES, many_checkpoints: bool = False) -> Callable:
    """Register an analysis command: ``body(op, *, seed, progress, out_dir, loaded, journal,
    **command_options) -> (result, extra_files)``, the result typed; its writer and summary are its
    type's (io.formats.format_of). ``may_hold``: files that --out may already hold without
    --overwrite (validate-lr reads lr's outputs there); ``outputs``: every file name the command may
    write (a namesake hessian-probe did not write is never replaced). ``many_checkpoints``: CHECKPOINT...
    arguments instead of --checkpoint; the first is loaded as the problem, the body gets them all
    as ``checkpoints``."""

    def register(body: Callable) -> Callable:
        @functools.partial(problem_options, one_batch=one_batch, many_checkpoints=many_checkpoints)
        @click.pass_context
        @functools.wraps(body)
        def command(ctx: click.Context, operator: str, out_dir: Path | None, as_json: bool, quiet: bool,
                    resume: bool, overwrite: bool, **options: Any) -> dict[str, Any]:
            spec_options = {k: options.pop(k, None) for k in PROBLEM_KEYS}
            if many_checkpoints:
                options["checkpoints"] = expand_checkpoints(options["checkpoints"])
                spec_options["checkpoint"] = options["checkpoints"][0]
            products = {"compile": options.pop("compile_products"), "tf32": options.pop("tf32")}
            if options.pop("hvp") == "finite-difference":
                if operator != "hessian":
                    raise click.UsageError(f"--hvp finite-difference takes Hessian products; --operator {operator} "
                                           "has its own")
                products["hessian_mode"] = "finite-difference"
            check = not options.pop("allow_nondeterministic")
            run = RunOptions(name=name, operator=operator, out_dir=out_dir or Path(f"hessian-probe-{name}"),
                             as_json=as_json, quiet=quiet, resume=resume, overwrite=overwrite, may_hold=may_hold,
                             outputs=outputs, check_determinism=check,
                             settings={"operator": operator, **options, "products": products})
            with third_party_bars_off(quiet):
                return _run(ctx, run, spec_options, functools.partial(body, **options), products)

        return main.command(name)(command)

    return register


@contextlib.contextmanager
def third_party_bars_off(quiet: bool):
    """Under --quiet, the tqdm bars of other libraries too (a user's data factory, a model's
    loader): every tqdm made during the run is disabled (tqdm reads TQDM_DISABLE only when it is
    imported, so the constructor is wrapped for the run and restored after)."""
    if not quiet:
        yield
        return
    import tqdm.std

    original = tqdm.std.tqdm.__init__

    @functools.wraps(original)
    def disabled(self, *args, **kwargs):
        kwargs["disable"] = True
        original(self, *args, **kwargs)

    tqdm.std.tqdm.__init__ = disabled
    try:
        yield
    finally:
        tqdm.std.tqdm.__init__ = original


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


_ECHO: contextvars.ContextVar[bool] = contextvars.ContextVar("hessian_probe_echo", default=True)


@contextlib.contextmanager
def silently() -> Iterator[None]:
    """Analysis commands invoked inside print nothing (the demo prints its own lines)."""
    token = _ECHO.set(False)
    try:
        yield
    finally:
        _ECHO.reset(token)


class Terminated(KeyboardInterrupt):
    """SIGTERM, turned into an interruption like Ctrl-C so that the run stops the same clean way."""


def _terminate(signum: int, frame: Any) -> None:
    raise Terminated()


def _run(ctx: click.Context, run: RunOptions, spec_options: dict[str, Any], compute: Callable,
         products: dict[str, bool] | None = None) -> dict[str, Any]:
    """Load, compute, write; Ctrl-C or SIGTERM stop cleanly, keeping the finished pieces for --resume."""
    import signal

    from ..runtime.journal import PARTIAL, Journal, remove_own_pieces, saved_pieces

    try:
        previous = signal.signal(signal.SIGTERM, _terminate)
    except ValueError:  # not the main thread: leave signals alone
        previous = None
    lock = OutputLock(run.out_dir)
    interrupted = False
    try:
        return _load_compute_write(ctx, run, spec_options, compute, products,
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
    except Exception:  # a run that failed before saving any piece leaves no partial/ to block its rerun
        if distributed.is_main() and not saved_pieces(run.out_dir):
            remove_own_pieces(run.out_dir / PARTIAL)
        raise
    finally:
        lock.release()
        if previous is not None and not interrupted:
            signal.signal(signal.SIGTERM, previous)


def _load_compute_write(ctx: click.Context, run: RunOptions, spec_options: dict[str, Any], compute: Callable,
                        products: dict[str, bool] | None,
                        start_journal: Callable[[dict[str, Any]], Any], lock: Any = None) -> dict[str, Any]:
    from ..imports import IMPORTED_FILES, imported_code_digest
    from ..io.formats import format_of, run_record
    from ..io.records import environment, file_digest, input_digests, provenance
    from ..loading import MIXED, ProblemSpec, load_problem, parse_model_args
    from ..operators import curvature_operator
    from ..operators.determinism import check_fixed_operator, evaluation_note
    from ..progress import ProductProgress

    started = time.perf_counter()
    env = environment()
    device = distributed.initialise(spec_options["device"])  # under torchrun: join the group, cuda:LOCAL_RANK
    spec = ProblemSpec(**{**spec_options, "checkpoint": str(spec_options["checkpoint"]), "device": device,
                          "model_args": parse_model_args(spec_options["model_args"]),
                          "data_args": parse_model_args(spec_options.get("data_args") or (), "--data-arg")})
    out_dir = run.out_dir
    # before any work: a run must not be lost to an unwritable folder, nor overwrite one (rank 0 writes)
    distributed.on_main(lambda: _prepare_output(out_dir, run, lock))
    IMPORTED_FILES.clear()  # the code digest covers what this run imports
    loaded = distributed.everywhere(lambda: load_problem(spec))  # a file error stops every rank alike
    mixed = {"vector_dtype": torch.float64} if spec.dtype == MIXED else {}  # float32 products, float64 vectors
    op = curvature_operator(loaded.problem, run.operator, **(products or {}), **mixed)
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
        **{f"{name}_sha256": file_digest(out_dir / name) for name in sorted(run.may_hold)
           if (out_dir / name).is_file()}})
    loaded_at = time.perf_counter()
    _hint_when_slow(op, enabled=not run.quiet and distributed.is_main() and spec.dtype != MIXED)
    with ProductProgress(quiet=run.quiet or not distributed.is_main(), label=f"{run.operator} ").attach(op) as progress:
        result, extra_files = compute(op, seed=spec.seed, progress=progress, out_dir=out_dir, loaded=loaded,
                                      journal=journal)
    finished = time.perf_counter()
    timings = {"load_s": loaded_at - started, "analysis_s": finished - loaded_at, "total_s": finished - started}
    made = provenance(env, run.name, (ctx.obj or {}).get("config"), spec, loaded, timings, digests)
    from ..operators.hessian import finite_difference_note
    from ..operators.precision import mixed_precision_note, precision_note

    speed = None if distributed.active() else precision_note(op, timings["analysis_s"])
    record = run_record(result, op, made, resumed=journal.resumed, rejected=journal.rejected,
                        evaluation_mode=evaluation_note(loaded.model), data_notes=loaded.data_notes,
                        notes=[n for n in (speed, mixed_precision_note(op), finite_difference_note(op)) if n])
    if not distributed.is_main():  # every rank holds the same record; rank 0 writes and reports it
        return record
    written = format_of(result).write(record, out_dir, result) + extra_files
    Manifest(out_dir).add(written)
    journal.finish()
    if _ECHO.get():
        resumed = f" ({journal.resumed} finished piece(s) read back)" if journal.resumed else ""
        if journal.rejected:
            resumed += f" ({journal.rejected} damaged or foreign piece(s) in partial/ computed again)"
        click.echo(json.dumps(record, allow_nan=False) if run.as_json else
                   f"{format_of(result).summary(record)}\n  wrote {', '.join(written)} to {out_dir}/ in "
                   f"{timings['total_s']:.1f} s{resumed}")
    return record


SLOW_PRODUCT_S = 20.0  # a first float64 CPU product slower than this gets a hint on stderr, at once


def _hint_when_slow(op: Any, enabled: bool) -> None:
    """After the first product of a float64 CPU run, if it took over SLOW_PRODUCT_S, one stderr
    line naming --dtype mixed while the run goes on (the measured speed-up comes in the notes)."""
    from ..operators.precision import float64_on_cpu

    if not enabled or not float64_on_cpu(op):
        return
    started, said = time.perf_counter(), []

    def first(k: int) -> None:
        seconds = time.perf_counter() - started
        if not said and seconds > SLOW_PRODUCT_S:
            click.echo(f"note: the first float64 product ({k} vector(s)) took {seconds:.0f} s; float32 products are "
                       "often several times faster on a CPU, convolutions above all: --dtype mixed runs them inside "
                       "float64 Lanczos arithmetic", err=True)
        said.append(True)

    op.observe(first)


def _prepare_output(out_dir: Path, run: RunOptions, lock: OutputLock | None = None) -> None:
    """A writable output folder that holds nothing this run would overwrite, unless --overwrite or
    --resume (which needs an interrupted run there, not a finished one); never a file hessian-probe
    did not write there (the folder's manifest, files.py). Locked for this run when ``lock``."""
    from ..runtime.journal import PARTIAL

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
