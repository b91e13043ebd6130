"""plot, run (a TOML config) and demo."""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path

import click

from ..errors import one_line
from ..files import Manifest, refuse_foreign
from ..results import to_jsonable
from ..runtime import torchrun as distributed
from .analyses import spectrum
from .app import DEBUG_OPTION, CommandError, main
from .running import silently

# --- plot, run, demo -----------------------------------------------------------------------------

@main.command()
@click.argument("results", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", "out_file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Image file [default: density.png, lr.png or track.png, by what is drawn]; a density's PDF "
                   "twin is written next to it.")
@click.option("--label", "labels", multiple=True, help="Legend label per result, in order (repeatable).")
@click.option("--title", default="", help="Figure title.")
@DEBUG_OPTION
def plot(results: tuple[Path, ...], out_file: Path | None, labels: tuple[str, ...], title: str) -> None:
    """Redraw or overlay saved results: spectral densities (result.json files, or folders holding
    one), or redraw one lr or track result (lr.json, track.json, or their folder).

    \b
    Example: Hessian and GGN of the demo in one figure
      hessian-probe plot hessian-probe-demo/hessian hessian-probe-demo/ggn --out both.png
    """
    from ..files import written_by_us
    from ..io.saved import read_plottable
    from ..plots import plot_densities

    if out_file is not None and out_file.suffix.lower() not in (".png", ".pdf", ".svg", ".jpg", ".jpeg"):
        raise CommandError(f"--out {out_file}: use a .png, .pdf, .svg or .jpg file name", exit_code=2)
    found = [read_plottable(path) for path in results]
    kinds = {kind for kind, _, _ in found}
    if kinds != {"density"}:
        _redraw(found, out_file, labels)
        return
    out_file = out_file or Path("density.png")
    records = [record for _, record, _ in found]
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


def _redraw(found: list, out_file: Path | None, labels: tuple[str, ...]) -> None:
    """lr.png or track.png again from one saved lr.json or track.json."""
    from ..errors import first_line
    from ..plots import plot_learning_rates, plot_track

    if len(found) > 1:
        raise CommandError("plot overlays spectral densities only: give one lr or track result at a time", exit_code=2)
    if labels:
        raise CommandError("--label names the densities of an overlay; an lr or track figure has its own legend",
                           exit_code=2)
    kind, record, where = found[0]
    out_file = out_file or Path(f"{kind}.png")
    if out_file.parent != Path():
        out_file.parent.mkdir(parents=True, exist_ok=True)
    try:
        (plot_learning_rates if kind == "lr" else plot_track)(record, out_file)
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise CommandError(f"{where} cannot be plotted ({first_line(exc)}): rerun `hessian-probe {kind}`") from None
    click.echo(f"wrote {out_file}")


@main.command(context_settings={"ignore_unknown_options": True})
@click.argument("config", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("overrides", nargs=-1, type=click.UNPROCESSED)
@DEBUG_OPTION
@click.pass_context
def run(ctx: click.Context, config: Path, overrides: tuple[str, ...]) -> None:
    """Run what a TOML config file says (keys are the command's option names); options after it
    override the file's (`COMMAND --config FILE` does the same).

    \b
    Example (configs/ holds a commented one for every command):
      hessian-probe run configs/spectrum.toml
      hessian-probe run configs/spectrum.toml --seed 3 --out spectrum-seed3
    """
    from ..config import command_line, resolved_config, split_options

    name, argv, content = command_line(config, {n: c for n, c in main.commands.items() if n != "run"})
    if "--config" in overrides or any(o.startswith("--config=") for o in overrides):
        raise CommandError(f"run {config} takes its options from that file: drop --config (or use "
                           f"`{name} --config FILE`)", exit_code=2)
    if overrides:
        head, tail = split_options(argv)
        argv = head + [o for o in overrides if o != "--print-config"] + tail
    if "--print-config" in overrides:
        click.echo(resolved_config(main.commands[name], name, argv, ctx), nl=False)
        return
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
@click.option("--json/--no-json", "as_json", is_flag=True,
              help="Print the result JSON of both operators instead of the summary.")
@click.option("--quiet/--no-quiet", is_flag=True, help="No progress bars.")
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
    from ..demo import train_digits_mlp
    from ..plots import plot_densities

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
    with silently() if as_json else contextlib.nullcontext():
        records = [ctx.invoke(spectrum, checkpoint=checkpoint, model="mlp", data="digits", operator=kind,
                              out_dir=out_dir / kind, seed=seed, quiet=quiet, overwrite=True)
                   for kind in ("hessian", "ggn")]
    plot_densities(records, [out_dir / "density.png", out_dir / "density.pdf"],
                   title=f"digits MLP: Hessian and GGN, P = {records[0]['n_params']:,}, "
                         f"N = {records[0]['n_samples']:,}")
    Manifest(out_dir).add(demo_files)
    if as_json:
        click.echo(json.dumps(to_jsonable(records), allow_nan=False))
    else:
        click.echo(f"wrote density.png and density.pdf (both operators) to {out_dir}/; the demo took "
                   f"{time.perf_counter() - started:.1f} s")
