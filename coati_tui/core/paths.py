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


def checkpoints(run_dir: str | Path) -> list[Path]:
    """A run folder's finished checkpoints (``checkpoints/step-N``), oldest first. Half-written ones
    (``.tmp-step-N``) are not listed."""
    folder = Path(run_dir) / "checkpoints"
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.is_dir() and p.name.startswith("step-") and p.name[5:].isdigit()]
    return sorted(found, key=lambda p: int(p.name[5:]))
