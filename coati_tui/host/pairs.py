"""The Rank pane's pair writer (no torch): two answers to each prompt, written in the background by
generation workers into the preference store, so the next pairs are ready before the one on screen is
judged. One model: two samples of it (their seeds differ); two models: one answer each. Which answer goes
left is a coin flip, recorded with the pair.

The writer holds no widgets and starts no threads: the screen reads each worker's ``events()`` on its
own thread and hands every event to ``handle`` on the UI thread, then shows what changed.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

from coati_tui.core import paths
from coati_tui.data import prefstore
from coati_tui.host.gen_client import GenerationClient, stop

AHEAD = 2  # pairs kept ready beyond the one on screen
SAMPLING = {"temperature": 0.8, "top_p": 0.95, "top_k": 0, "max_new_tokens": 128, "repetition_penalty": 1.0}
SLOTS = "AB"  # model A's worker, model B's

Prompt = dict[str, Any]  # {"messages": [...], "source": "typed" | a file | "chat history"}
Handled = Literal["", "loaded", "answer", "pair", "error"]


def worker_log(store_path: Path, slot: str) -> Path:
    """Where model ``slot``'s worker writes its stderr: beside the store (prefs-worker-A.log)."""
    return store_path.with_name(f"{store_path.stem}-worker-{slot}.log")


class PairWriter:
    def __init__(self) -> None:
        self.workers: list[GenerationClient] = []  # one per model (one: two samples of it)
        self.loaded: dict[str, dict[str, Any]] = {}  # slot -> its loaded event
        self.stopped: set[str] = set()  # slots whose worker died
        self.prompts: deque[Prompt] = deque()
        self.inflight: dict[str, tuple[int, int]] = {}  # request id -> (prompt id, which answer)
        self.partial: dict[int, dict[int, dict[str, Any]]] = {}
        self.seeds: dict[str, int] = {}
        self.counter = 0

    # ---- prompts ---------------------------------------------------------------------------------------
    def queue(self, prompts: Sequence[list[dict[str, Any]]], source: str, store: prefstore.Store) -> None:
        """The prompts to answer: typed ones first, then these (shuffled) that have no pair in ``store`` yet."""
        done = store.prompts_with_pairs()
        fresh = [p for p in prompts if prefstore.prompt_key(p) not in done]
        random.shuffle(fresh)
        typed = [p for p in self.prompts if p["source"] == "typed"]
        self.prompts = deque(typed + [{"messages": p, "source": source} for p in fresh])

    def add_typed(self, text: str) -> None:
        self.prompts.appendleft({"messages": [{"role": "user", "content": text}], "source": "typed"})

    # ---- workers ---------------------------------------------------------------------------------------
    def start(self, specs: Sequence[str], log_for: Callable[[str], Path]) -> list[GenerationClient]:
        """(Re)start one worker per model spec; returns them (the caller reads their events)."""
        self.stop()
        self.loaded, self.stopped, self.inflight, self.partial = {}, set(), {}, {}
        self.workers = [GenerationClient(spec, "none", log=log_for(SLOTS[i])) for i, spec in enumerate(specs)]
        return list(self.workers)

    def stop(self) -> None:
        stop(*self.workers)
        self.workers = []

    def slot(self, worker: GenerationClient) -> str:
        return SLOTS[self.workers.index(worker)] if worker in self.workers else ""

    def state(self) -> str:
        """What generation is doing, for the status line ("" when nothing runs)."""
        if not self.workers:
            return ""
        if self.stopped:
            return f"model {' and '.join(sorted(self.stopped))}'s worker stopped: ctrl+l starts it again"
        waiting = [n for n, _ in zip(SLOTS, self.workers) if n not in self.loaded]
        if waiting:
            return f"loading model {' and '.join(waiting)}…"
        if self.inflight:
            return "writing the next pair…"
        return "" if self.prompts else "no prompts left: type one below"

    # ---- events ----------------------------------------------------------------------------------------
    def handle(self, worker: GenerationClient, ev: dict[str, Any], store: prefstore.Store | None) -> Handled:
        """One event of ``worker``: what it changed ("pair": a pair was stored; "": nothing, e.g. a token
        or a worker already replaced)."""
        where = self.slot(worker)
        if not where:
            return ""
        kind = ev["type"]
        if kind == "loaded":
            self.loaded[where] = ev
            return "loaded"
        if kind == "answer":
            return self._answer(where, ev, store)
        if kind == "error":
            if worker.poll() is not None:
                self.stopped.add(where)
            for rid in [r for r, (_, s) in self.inflight.items() if len(self.workers) == 1 or s == SLOTS.index(where)]:
                self.inflight.pop(rid, None)
            return "error"
        return ""

    def _answer(self, where: str, ev: dict[str, Any], store: prefstore.Store | None) -> Handled:
        prompt_id, which = self.inflight.pop(ev["id"], (None, None))
        if prompt_id is None or which is None:
            return ""
        self.partial.setdefault(prompt_id, {})[which] = {
            "text": ev["text"].strip(),
            "model": self.loaded[where]["model"],
            "sampling": {**SAMPLING, "seed": self.seeds.get(ev["id"])},
            "gen_s": ev["tokens"] / max(ev["tokens_per_s"], 1e-9),
        }
        if len(self.partial[prompt_id]) < 2 or store is None:
            return "answer"
        got = self.partial.pop(prompt_id)
        store.add_pair(prompt_id, got[0], got[1], swapped=random.random() < 0.5)
        return "pair"

    def pump(self, store: prefstore.Store | None, ready: Callable[[], int]) -> bool:
        """Ask for the next pair while fewer than AHEAD wait (``ready()``: pairs pending beyond the one on
        screen, asked last: it reads the store); True when it asked."""
        if (
            not self.workers
            or len(self.loaded) < len(self.workers)
            or self.stopped
            or self.inflight
            or not self.prompts
            or store is None
            or ready() >= AHEAD
        ):
            return False
        item = self.prompts.popleft()
        prompt_id = store.add_prompt(item["messages"], item["source"])
        seed = random.randrange(2**31)
        for which in (0, 1):
            worker = self.workers[which if len(self.workers) == 2 else 0]
            self.counter += 1
            rid = f"p{prompt_id}-{which}-{self.counter}"
            self.inflight[rid] = (prompt_id, which)
            self.seeds[rid] = seed + (which if len(self.workers) == 1 else 0)  # one model: two different samples
            worker.generate(item["messages"], rid=rid, **SAMPLING, seed=self.seeds[rid])
        return True


def default_store() -> Path:
    """Where the Rank pane keeps its labels unless told otherwise."""
    return paths.home() / "prefs.sqlite"


def default_annotator() -> str:
    """Who is labeling: ``$COATI_TUI_ANNOTATOR``, else the login name."""
    import getpass
    import os

    try:
        return os.environ.get("COATI_TUI_ANNOTATOR") or getpass.getuser()
    except Exception:  # no user name (some containers)
        return "me"
