"""The `hessian-probe` group: every user error (and, without --debug, every unexpected failure)
becomes one ``Error:`` line and an exit code: 1 data, model or files; 2 usage; 130 Ctrl-C."""

from __future__ import annotations

import contextlib
import os
from typing import Any

import click

from .. import __version__
from ..errors import InputError, as_flags, first_line, one_line
from ..runtime import torchrun as distributed

DEBUG_ENV = "HESSIAN_PROBE_DEBUG"


class CommandError(click.ClickException):
    """One line on stderr and a chosen exit code, no traceback, the library's `settings` shown as
    --flags (errors.as_flags). Under torchrun, an error every rank raised alike is printed by rank 0
    only; another rank's own error names the rank."""

    def __init__(self, message: str, exit_code: int = 1, on_every_rank: bool = False) -> None:
        message = as_flags(message)
        rank = distributed.rank()
        super().__init__(f"[rank {rank}] {message}" if rank else message)
        self.exit_code = exit_code
        self.silent = bool(rank) and on_every_rank

    def show(self, file: Any = None) -> None:
        if not self.silent:
            super().show(file)


class ProbeGroup(click.Group):
    """Turns user errors (and, without --debug, unexpected failures) into one line and an exit code."""

    def main(self, *args: Any, **kwargs: Any) -> Any:
        """A caller that goes on running afterwards (``standalone_mode=False``: a script, a notebook)
        gets its Ctrl-C and SIGTERM handlers back after an interrupted run; a process about to exit
        keeps ignoring them until it has (see _ignore_further_interrupts)."""
        import signal

        handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            return super().main(*args, **kwargs)
        finally:
            if not kwargs.get("standalone_mode", True):
                with contextlib.suppress(ValueError, TypeError):  # not the main thread; a handler set outside Python
                    for number, handler in handlers.items():
                        signal.signal(number, handler)

    def add_command(self, cmd: click.Command, name: str | None = None) -> None:
        """Every command but `run` takes --config FILE.toml and --print-config (config.expand)."""
        if (name or cmd.name) != "run":
            cmd.params += [
                click.Option(["--config"], metavar="FILE.toml", expose_value=False,
                             help="Read options from a TOML config (keys as in `run`); the command line wins."),
                click.Option(["--print-config"], is_flag=True, expose_value=False,
                             help="Print the options this command would run with, as a config, and exit."),
            ]
        super().add_command(cmd, name)

    def resolve_command(self, ctx: click.Context, args: list[str]) -> Any:
        name, cmd, rest = super().resolve_command(ctx, args)
        if cmd is None or cmd.name == "run":
            return name, cmd, rest
        from ..config import expand, resolved_config, split_options

        try:
            rest, config = expand(list(rest), cmd, ctx)
        except InputError as exc:
            raise CommandError(one_line(str(exc)), exc.exit_code) from None
        if config is not None:
            ctx.ensure_object(dict)["config"] = config
        if "--print-config" in split_options(rest)[0]:
            rest.remove("--print-config")
            click.echo(resolved_config(cmd, name, rest, ctx), nl=False)
            raise click.exceptions.Exit(0)
        return name, cmd, rest

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


def _ignore_further_interrupts() -> None:
    """From the first interruption until the process ends, Ctrl-C and SIGTERM do nothing more: a
    stopping run counts its pieces, releases its folder and says so in one line, undisturbed (the
    pieces themselves are written atomically: whole or absent)."""
    import signal

    with contextlib.suppress(ValueError):  # not the main thread
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
