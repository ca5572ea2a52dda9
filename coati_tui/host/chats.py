"""Chat transcripts on disk (no torch): where Chat saves them, where its worker logs, and the prompts the
Rank pane takes from them when it is given no prompt file.

A transcript is ``~/coati-tui/chats/chat-STAMP-N.jsonl``: a header line (model, quant, system prompt),
then one message per line.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from coati_tui.core import paths


def chats_dir() -> Path:
    return paths.home() / "chats"


def worker_log() -> Path:
    """The chat worker's stderr, beside the transcripts (rewritten at each load)."""
    return chats_dir() / "worker.log"


def chat_prompts(folder: Path | None = None) -> list[list[dict[str, Any]]]:
    """Every user turn of the saved chats, with the conversation before it (and the chat's system prompt)."""
    folder = folder or chats_dir()
    out: list[list[dict[str, Any]]] = []
    for path in sorted(folder.glob("chat-*.jsonl")) if folder.is_dir() else []:
        try:
            lines = [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]
        except (OSError, json.JSONDecodeError):
            continue
        header, msgs = (lines[0], lines[1:]) if lines else ({}, [])
        system = [{"role": "system", "content": header["system"]}] if header.get("system") else []
        for i, m in enumerate(msgs):
            if m.get("role") == "user" and m.get("content", "").strip():
                out.append(system + msgs[: i + 1])
    return out
