"""An Input that completes file-system paths as you type (right arrow or tab accepts the suggestion)."""

from __future__ import annotations

import os
from pathlib import Path

from textual.suggester import Suggester


class PathSuggester(Suggester):
    """Suggests the first entry of the typed path's folder that starts with what follows the last slash;
    folders end with "/", so completing goes on into them. Hidden entries only when a dot is typed."""

    def __init__(self, suffixes: tuple[str, ...] = (), dirs_only: bool = False) -> None:
        super().__init__(use_cache=False, case_sensitive=True)
        self.suffixes, self.dirs_only = suffixes, dirs_only

    async def get_suggestion(self, value: str) -> str | None:
        if not value:
            return None
        expanded = os.path.expanduser(value)
        folder, _, stem = expanded.rpartition("/")
        base = Path(folder or ("/" if expanded.startswith("/") else "."))
        try:
            names = sorted(os.listdir(base))
        except OSError:
            return None
        for name in names:
            if not name.startswith(stem) or name == stem or (name.startswith(".") and not stem.startswith(".")):
                continue
            is_dir = (base / name).is_dir()
            if not is_dir and (self.dirs_only or (self.suffixes and not name.endswith(self.suffixes))):
                continue
            return value[: len(value) - len(stem)] + name + ("/" if is_dir else "")
        return None
