"""The `coati-tui` console script. Opening the app (no command) skips typer's import: the app's first
frame waits on every import, and the machine profile starts before them. Anything else goes to coati_tui.cli."""

from __future__ import annotations

import sys


def main() -> None:
    args = sys.argv[1:]
    if not args or (len(args) == 2 and args[0] == "--model"):
        from coati_tui.core import hardware

        hardware.profile_early()
        from coati_tui.ui.app import run_app

        run_app(model=args[1] if args else None)
        return
    from coati_tui.cli import main as cli_main

    cli_main()


if __name__ == "__main__":
    main()
