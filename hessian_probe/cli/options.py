"""Options the commands share: what defines the problem, the learning-rate scan's and the training
runs' settings, and the parsers of comma-separated values."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from ..errors import UsageError
from .app import DEBUG_OPTION

OPERATOR_NAMES = ("hessian", "ggn", "fisher", "empirical-fisher")  # operators.OPERATORS, named without importing torch

# --- options shared by the analysis commands -------------------------------------------------

BATCH_SIZE_OPTION = click.option(
    "--batch-size", type=click.IntRange(min=1), default=None,
    help="Analyse one seeded random batch of B examples (the batch Hessian) instead of the full sample.")


CHECKPOINT_OPTION = click.option(
    "--checkpoint", required=True, type=click.Path(path_type=Path),
    help="State dict (.pt/.pth/.bin/.ckpt, or a dict wrapping one), .safetensors, or a Hugging Face "
         "save_pretrained folder (needs transformers; then --model is not needed).")
CHECKPOINTS_ARGUMENT = click.argument("checkpoints", nargs=-1, required=True, metavar="CHECKPOINT...")


def _comma_separated(ctx: Any, param: Any, value: str | tuple[str, ...]) -> tuple[str, ...]:
    """'a.B, c.D' (or a config's list) -> ('a.B', 'c.D')."""
    parts = value.split(",") if isinstance(value, str) else value
    return tuple(p.strip() for p in parts if p.strip())


def problem_options(command: Callable, one_batch: bool = True, many_checkpoints: bool = False) -> Callable:
    """--checkpoint, --model, --data, --loss, --operator, ... : everything that defines the problem
    (``one_batch``: offer --batch-size, the batch operator; a batch-size scan chooses its own;
    ``many_checkpoints``: CHECKPOINT... arguments, files or globs, instead of --checkpoint)."""
    options = [
        CHECKPOINTS_ARGUMENT if many_checkpoints else CHECKPOINT_OPTION,
        click.option("--model", default=None, metavar="SPEC",
                     help="mlp | cnn (built-ins), a torchvision name, package.module:factory / file.py:factory, or "
                          "a Hugging Face save_pretrained folder (its config). Required unless the checkpoint is a "
                          "trusted pickled model or a save_pretrained folder."),
        click.option("--model-arg", "model_args", multiple=True, metavar="KEY=VALUE",
                     help="Keyword argument for the model factory (repeatable); values are Python literals."),
        click.option("--trust-checkpoint/--no-trust-checkpoint", is_flag=True,
                     help="Allow a fully pickled model (runs code from the file: only for files you trust)."),
        click.option("--safe-globals", default="", metavar="NAMES", callback=_comma_separated,
                     help="Comma-separated classes or functions a checkpoint may hold beside tensors (e.g. "
                          "argparse.Namespace, saved by timm): allowed by torch's weights_only loader one by one, "
                          "instead of --trust-checkpoint."),
        click.option("--data", required=True, metavar="SPEC",
                     help="digits | digits:image | tensors:PATH (.pt/.npz with x/y, inputs/targets, or "
                          "input_ids/labels [+ attention_mask]) | imagefolder:ROOT (--data-arg size=32 mean=... "
                          "std=...) | torchvision:NAME:ROOT | package.module:factory (a Dataset or DataLoader)."),
        click.option("--data-arg", "data_args", multiple=True, metavar="KEY=VALUE",
                     help="Keyword argument for a package.module:factory --data (repeatable; Python literals)."),
        click.option("--samples", type=click.IntRange(min=1), default=None,
                     help="Use a seeded random subset of this many examples."),
        BATCH_SIZE_OPTION,
        click.option("--chunk-size", type=click.IntRange(min=1), default=1024, show_default=True,
                     help="Examples per forward pass (memory only: the operator does not depend on it)."),
        click.option("--stream-data", type=click.Choice(["auto", "always", "never"]), default="auto",
                     show_default=True,
                     help="A dataset's examples (a Dataset, DataLoader, image folder) read chunk by chunk at every "
                          "product, memory bounded by --chunk-size (always), read once and held (never), or "
                          "streamed when holding them would take over a quarter of the free memory (auto)."),
        click.option("--loss", default="cross_entropy", show_default=True, metavar="NAME",
                     help="cross_entropy (classes on dim 1 or the last; labels -100 left out) | causal_lm "
                          "(next-token cross-entropy) | mse | bce_with_logits | bce | package.module:fn (mean loss of "
                          "outputs and targets)."),
        click.option("--operator", type=click.Choice(list(OPERATOR_NAMES)), default="hessian", show_default=True,
                     help="Hessian, generalised Gauss-Newton matrix, Fisher of the loss's predictive distribution "
                          "(the GGN for cross_entropy, mse, bce_with_logits) or empirical Fisher (the examples' "
                          "gradients' uncentred covariance at the data's labels)."),
        click.option("--hvp", type=click.Choice(["exact", "finite-difference"]), default="exact", show_default=True,
                     help="How Hessian products are taken: exactly (second derivatives), or by central differences "
                          "of two gradients, for layers torch gives no second derivative (relative error about "
                          "eps^(2/3): ~4e-11 in float64, ~2e-5 in float32)."),
        click.option("--params", default=None, metavar="PATTERN",
                     help="Only these parameters (comma-separated globs or module prefixes, e.g. 'fc2' or "
                          "'*.weight')."),
        click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda | cuda:i."),
        click.option("--dtype", type=click.Choice(["auto", "float32", "float64", "mixed"]), default="auto",
                     show_default=True, help="Precision of the products (auto: float64 on CPU, float32 on GPU; "
                     "mixed: float32 products in float64 Lanczos arithmetic, several times faster than float64 "
                     "on a CPU)."),
        click.option("--seed", type=click.IntRange(0, 2**63 - 1), default=0, show_default=True,
                     help="Seed for probes, subsets and batches."),
        click.option("--compile/--no-compile", "compile_products", is_flag=True,
                     help="torch.compile the batch product (pays off on GPUs for long runs; not used by lr's scan)."),
        click.option("--tf32/--no-tf32", is_flag=True,
                     help="Allow TF32 tensor cores in float32 products on CUDA (faster, ~1e-3 relative rounding)."),
        click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
                     help="Output folder [default: hessian-probe-<command>]."),
        click.option("--resume/--no-resume", is_flag=True,
                     help="Continue an interrupted run in --out: finished pieces (SLQ probe blocks, batches, "
                          "thresholds) are read back, not recomputed; the numbers are those of an uninterrupted "
                          "run. An "
                          "empty or missing --out starts afresh."),
        click.option("--overwrite/--no-overwrite", is_flag=True,
                     help="Write into a non-empty --out: this run's files replace their namesakes that hessian-probe "
                          "wrote (a namesake it did not write is refused; other files stay) and an interrupted run's "
                          "saved pieces there are dropped."),
        click.option("--allow-nondeterministic/--no-allow-nondeterministic", is_flag=True,
                     help="Skip the check (two products with one vector) that the operator is a fixed matrix, and "
                          "allow BatchNorm with batch statistics: the numbers may then be wrong."),
        click.option("--json/--no-json", "as_json", is_flag=True,
                     help="Print the result JSON on stdout instead of the summary."),
        click.option("--quiet/--no-quiet", is_flag=True, help="No progress bars."),
        DEBUG_OPTION,
    ]
    if not one_batch:
        options.remove(BATCH_SIZE_OPTION)
    return with_options(options)(command)


def eigenvalue_options(*, bottom_k: int, tol_help: str, max_steps_help: str) -> list[Callable]:
    """--top-k, --bottom-k, --tol, --max-steps: which extremal eigenvalues, and to what accuracy."""
    return [
        click.option("--top-k", type=click.IntRange(min=0), default=5, show_default=True,
                     help="Largest eigenvalues to report."),
        click.option("--bottom-k", type=click.IntRange(min=0), default=bottom_k, show_default=True,
                     help="Smallest (most negative) eigenvalues to report."),
        click.option("--tol", type=FiniteRange(min=0, max=1, min_open=True, max_open=True), default=1e-6,
                     show_default=True, help=tol_help),
        click.option("--max-steps", type=click.IntRange(min=1), default=None, help=max_steps_help),
    ]


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


PROBLEM_KEYS = ("checkpoint", "model", "model_args", "trust_checkpoint", "safe_globals", "data", "data_args", "samples",
                "batch_size", "chunk_size", "stream_data", "loss", "params", "device", "dtype", "seed")



BASIS_OPTION = click.option(
    "--basis", type=click.Choice(["auto", "device", "host"]), default="auto", show_default=True,
    help="Where the Lanczos basis lives: auto keeps it on the GPU when it takes at most half its free memory, "
         "else in pinned host memory (slower, but a large model's basis fits).")


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
        click.option(f"--{prefix}steps", *([] if prefix else ["--train-steps"]), type=click.IntRange(min=1),
                     default=200, show_default=True,
                     help="Training steps per run (not Lanczos steps: --train-steps is the same option)."),
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
        click.option("--tol", type=FiniteRange(min=0, max=1, min_open=True, max_open=True), default=1e-6,
                     show_default=True,
                     help="Relative Ritz residual for each batch's extremal eigenvalues." + note),
    ]


DENSITY_STEPS_OPTION = click.option(
    "--density-steps", type=click.IntRange(min=0), default=40, show_default=True,
    help="Lanczos steps of one SLQ density per batch size, for spectra_by_batch.png (0: none).")



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


def expand_checkpoints(given: tuple[str, ...]) -> list[Path]:
    """CHECKPOINT arguments as files: each a path, or a glob (quoted, 'runs/epoch_*.pt') matching at least
    one; repeats dropped, the order kept."""
    import glob

    found: list[Path] = []
    for text in given:
        if glob.has_magic(text):
            matched = sorted(glob.glob(text))
            if not matched:
                raise UsageError(f"{text} matches no file")
            found += [Path(m) for m in matched]
        else:
            found.append(Path(text))
    unique: dict[Path, Path] = {}
    for path in found:  # one file spelled twice (a.pt, ./a.pt, /abs/a.pt) is measured once
        unique.setdefault(path.resolve(), path)
    return list(unique.values())


def _names(text: str, allowed: tuple[str, ...], option: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names or set(names) - set(allowed):
        raise UsageError(f"{option} takes {', '.join(allowed)} (comma-separated), got {text!r}")
    return names
