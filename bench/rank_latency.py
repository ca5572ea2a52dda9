"""The ranking pane: time from a judgment's keypress to the next pair on screen.

    OMP_NUM_THREADS=1 python bench/rank_latency.py [--pairs 30] [--max-new-tokens 64]

A headless app (Textual's Pilot) opens the Rank screen on a tiny Llama (built on the spot) with a
bilingual prompt file; its generation worker (a real child process) writes pairs in the background,
two samples per prompt. The bench labels ``--pairs`` pairs, each time waiting until the next pair is
ready (the case the goal is about) and then pressing a key. The figure is the screen's own measurement:
from the start of the key's handler (which commits the judgment to SQLite with synchronous=FULL) to the
end of the first refresh that shows the next pair. Goal: under 50 ms whenever the next pair was ready.

Side by side, the same model without background generation: the pair is written after the keypress
(the two answers' generation time, from the store's own records), as a pane without a queue would.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


async def label(model: Path, prompts: Path, store: Path, n: int) -> tuple[list[float], list[float]]:
    from coati_tui.ui.app import CoatiApp
    from coati_tui.ui.screens import rank as rank_mod

    app = CoatiApp(
        mode="rank",
        rank={"model": str(model), "prompts": str(prompts), "store": str(store), "annotator": "bench", "start": True},
    )
    async with app.run_test(size=(120, 40)) as pilot:
        rank = app.screen
        for i in range(n):
            deadline = time.monotonic() + 300
            while len(rank.store.pending("bench", rank_mod.AHEAD + 1)) < 2:  # this pair and the next are ready
                if time.monotonic() > deadline:
                    raise SystemExit("the worker wrote no pair in 5 minutes")
                await pilot.pause(0.05)
            await pilot.press("ab"[i % 2])
            await pilot.pause(0.02)
        gen = [r[0] for r in rank.store.db.execute("SELECT sum(gen_s) FROM responses GROUP BY prompt_id, created")]
        return list(rank.latencies), gen


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=30)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from coati_tui.trainer.tiny import build_tiny_model
    from coati_tui.ui.screens import rank as rank_mod

    rank_mod.SAMPLING["max_new_tokens"] = args.max_new_tokens
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        os.environ["COATI_TUI_HOME"] = str(tmp / "home")
        model = build_tiny_model(tmp / "model", layers=2, hidden=64)
        prompts = tmp / "prompts.jsonl"
        rows = [
            {"prompt": f"请列出{i}种水果。"} if i % 2 else {"prompt": f"List {i} fruits."}
            for i in range(args.pairs + 5)
        ]
        prompts.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
        latencies, gen = asyncio.run(label(model, prompts, tmp / "prefs.sqlite", args.pairs))
    ms = sorted(x * 1000 for x in latencies)
    gen_ms = sorted(x * 1000 for x in gen if x)
    print(
        f"rank pane, tiny Llama (2 layers, hidden 64), {len(ms)} judgments, max_new_tokens {args.max_new_tokens}, "
        f"CPU, OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}"
    )
    print("keypress -> next pair drawn (judgment committed, synchronous=FULL):")
    print(
        f"  background queue (coati-tui): median {statistics.median(ms):.1f} ms, "
        f"p95 {ms[int(0.95 * (len(ms) - 1))]:.1f} ms, max {ms[-1]:.1f} ms  (goal < 50 ms)"
    )
    print(
        f"  written after the keypress:   median {statistics.median(gen_ms):.0f} ms, max {gen_ms[-1]:.0f} ms "
        "(two answers' generation time; what a pane without a queue makes the user wait)"
    )


if __name__ == "__main__":
    main()
