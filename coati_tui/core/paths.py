"""Where coati-tui keeps things. One place, so the UI, the trainer and the tests agree."""

from __future__ import annotations

import json
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


# ---- a checkpoint's manifest: every file it holds and its size, written last before the rename ------------
MANIFEST = "manifest.json"


def write_manifest(folder: Path) -> None:
    """Flush every file of a checkpoint being written to disk, then record each one's size in
    ``manifest.json`` (written last: a folder whose manifest is whole was written whole)."""
    sizes = {}
    for file in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST):
        with file.open("rb") as f:
            os.fsync(f.fileno())
        sizes[file.relative_to(folder).as_posix()] = file.stat().st_size
    tmp = folder / f"{MANIFEST}.tmp"
    with tmp.open("w", encoding="utf-8") as f:
        json.dump({"files": sizes}, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, folder / MANIFEST)


def checkpoint_damage(folder: Path) -> str:
    """What is wrong with a finished checkpoint ("" when nothing is): a file its manifest lists that is
    missing or has another size. One written before checkpoints carried a manifest is checked for its
    run state and for empty files only (its loader names the rest)."""
    manifest = folder / MANIFEST
    if not manifest.is_file():
        if not (folder / "state.json").is_file():
            return f"{folder}: {MANIFEST} and state.json are missing"
        empty = sorted(p.name for p in folder.iterdir() if p.is_file() and p.stat().st_size == 0)
        return f"{folder / empty[0]}: empty (0 bytes)" if empty else ""
    try:
        sizes = json.loads(manifest.read_text(encoding="utf-8"))["files"]
        listed = {str(k): int(v) for k, v in sizes.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        return f"{manifest}: unreadable ({type(exc).__name__})"
    for name, size in listed.items():
        file = folder / name
        if not file.is_file():
            return f"{file}: missing (the manifest lists it, {size:,} bytes)"
        if file.stat().st_size != size:
            return f"{file}: {file.stat().st_size:,} bytes, the manifest says {size:,} (cut short or overwritten)"
    return ""


def partial_writes(run_dir: Path) -> list[Path]:
    """What a trainer stopped mid-write leaves: ``checkpoints/.tmp-*``, ``*.tmp`` (``final.tmp``) and a
    sharded strategy's ``final.weights`` (gathered shards not yet moved into the final folder)."""
    run_dir = Path(run_dir)
    found = sorted((run_dir / "checkpoints").glob(".tmp-*")) + sorted(run_dir.glob("*.tmp"))
    return found + sorted(run_dir.glob("final.weights"))
