"""What every command shares: the one-line failure and the stderr console."""

from __future__ import annotations

from typing import TYPE_CHECKING, NoReturn

import typer

if TYPE_CHECKING:
    from rich.console import Console


def fail(message: str, code: int = 2) -> NoReturn:
    """``error: MESSAGE`` in red on stderr, then exit ``code`` (2: the user's input is wrong)."""
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def console() -> Console:
    from rich.console import Console

    return Console(stderr=True)
