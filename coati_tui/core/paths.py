"""Where coati-tui keeps things. One place, so the UI, the trainer and the tests agree."""

from __future__ import annotations

import os
from pathlib import Path


def home() -> Path:
    """``$COATI_TUI_HOME``, else ``~/coati-tui``: runs, preference stores, user presets live here."""
    return Path(os.environ.get("COATI_TUI_HOME") or Path.home() / "coati-tui").expanduser()


def runs_dir() -> Path:
    return home() / "runs"


def user_presets_dir() -> Path:
    """Extra presets a user drops in; same format as the shipped ones, and they win on a name clash."""
    return home() / "presets"
