"""The `coder` command line: parses options and calls one library function per command.

Every CoderError becomes one line on stderr and an exit code, here and only here
(see ``_reported``). Tracebacks and their locals are never shown: they could print note text.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import TypeVar

import typer

from coder.errors import CoderError

F = TypeVar("F", bound=Callable)

app = typer.Typer(
    name="coder",
    help="Assign ranked ICD-10-CM and ICD-10-PCS codes to clinical notes, and audit them against coders.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
codes_app = typer.Typer(help="Look up and validate ICD-10 codes against the ontology.", no_args_is_help=True)
app.add_typer(codes_app, name="codes")


def _reported(command: F) -> F:
    """Turn a CoderError into one stderr line and its exit code."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except CoderError as error:
            typer.echo(f"error: {error}", err=True)
            raise typer.Exit(code=error.exit_code) from None

    return wrapper  # type: ignore[return-value]


@app.callback()
def _main(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log debug messages to stderr."),
) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


# --- commands are added below, one function each -------------------------------------------------


if __name__ == "__main__":
    app()
