"""The `biasmed` command line (typer). Each command lives in its own module with a `register(app)`.

Heavy libraries are imported inside the commands, so `biasmed --help` and start-up stay fast.
"""

from __future__ import annotations

import importlib
import os

import typer

from biasmed.cli._common import cli_errors, setup_logging

app = typer.Typer(
    name="biasmed",
    help="Measure how cognitive biases planted in clinical questions bend LLM answers (BiasMedQA).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

_COMMANDS = ("build", "import_logs", "run", "models", "report", "export")


def _register_all() -> None:
    for name in _COMMANDS:
        try:
            mod = importlib.import_module(f"biasmed.cli.{name}")
        except ModuleNotFoundError as e:
            if e.name == f"biasmed.cli.{name}":
                continue  # command not part of this build
            raise
        mod.register(app)


@app.callback(invoke_without_command=True)
def _root(
    ctx: typer.Context,
    version: bool = typer.Option(False, "--version", help="Print the version and exit."),
    debug: bool = typer.Option(False, "--debug", help="Show the traceback behind an error (also BIASMED_DEBUG=1)."),
) -> None:
    setup_logging()
    if debug:
        os.environ["BIASMED_DEBUG"] = "1"
    if version:
        from biasmed import __version__

        typer.echo(f"biasmed {__version__}")
        raise typer.Exit()
    if ctx.invoked_subcommand is None:
        typer.echo(ctx.get_help())
        raise typer.Exit(2)


_register_all()


def main() -> None:
    setup_logging()
    with cli_errors():  # whatever a command lets through is still one line (--debug: the traceback)
        app(standalone_mode=True)
