"""What `coati-tui serve` adds: time to first token and tokens/s through the server vs the worker direct.

    OMP_NUM_THREADS=1 python bench/serve_overhead.py [--tokens 128] [--rounds 7] [--hidden 512 --layers 4]

One Llama with random weights (built on the spot, nothing downloaded) and one prompt. Two paths, both to
the same generation worker code in a child process, both streamed, greedy, with the end token held off
(``min_new_tokens`` = ``max_new_tokens``) so every answer is ``--tokens`` long:

- direct: the host's ``GenerationClient`` (what Chat and Rank use) writes the request and reads the
  worker's events;
- server: a real `coati-tui serve` child (uvicorn), asked by the official ``openai`` client over HTTP,
  server-sent events.

Each round runs both, alternately; the figures are medians over the rounds. Time to first token is from
the request leaving the caller to the first piece of text arriving; tokens/s is the answer's tokens over
the whole request. Goal (issue 18): the server adds <= 5% to tokens/s and <= 20 ms to the first token.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
PROMPT = [{"role": "user", "content": "Write a long story about a fox. 讲一个关于狐狸的长故事。"}]


def direct(client, tokens: int) -> tuple[float, float]:
    events = client.events()
    t0 = time.perf_counter()
    client.generate(PROMPT, max_new_tokens=tokens, min_new_tokens=tokens, temperature=0, seed=0)
    first = None
    for ev in events:
        if ev["type"] == "token" and first is None:
            first = time.perf_counter()
        if ev["type"] == "answer":
            assert ev["tokens"] == tokens, ev
            return first - t0, tokens / (time.perf_counter() - t0)
        if ev["type"] == "error":
            raise SystemExit(f"the worker failed: {ev}")
    raise SystemExit("the worker ended")


def served(client, tokens: int) -> tuple[float, float]:
    t0 = time.perf_counter()
    stream = client.chat.completions.create(
        model="m",
        messages=PROMPT,
        max_tokens=tokens,
        temperature=0,
        seed=0,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"min_tokens": tokens},
    )
    first = None
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content and first is None:
            first = time.perf_counter()
        if chunk.usage is not None:
            assert chunk.usage.completion_tokens == tokens, chunk.usage
    return first - t0, tokens / (time.perf_counter() - t0)


def start_server(model: Path, log: Path) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "coati_tui", "serve", str(model), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=open(log, "w"),
        text=True,
    )
    line: dict = {}
    reader = threading.Thread(target=lambda: line.update(text=proc.stdout.readline()), daemon=True)
    reader.start()
    reader.join(300)
    match = re.search(r" at (http://\S+/v1)$", line.get("text", "").strip())
    if not match:
        proc.kill()
        raise SystemExit(f"the server did not start: {line.get('text')!r}\n{log.read_text()}")
    return proc, match.group(1)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--layers", type=int, default=4)
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import openai

    from coati_tui.host.gen_client import GenerationClient
    from coati_tui.trainer.tiny import build_tiny_model

    tmp = Path(tempfile.mkdtemp(prefix="serve-bench-"))
    model = build_tiny_model(tmp / "m", hidden=args.hidden, layers=args.layers, heads=8, kv_heads=4)
    worker = GenerationClient(str(model), log=tmp / "direct.log")
    for ev in worker.events():
        if ev["type"] in ("loaded", "error"):
            break
    proc, url = start_server(model, tmp / "serve.log")
    client = openai.OpenAI(base_url=url, api_key="none", max_retries=0, timeout=300)
    try:
        direct(worker, 8), served(client, 8)  # warm both
        d, s = [], []
        for _ in range(args.rounds):
            d.append(direct(worker, args.tokens))
            s.append(served(client, args.tokens))
    finally:
        worker.stop()
        proc.terminate()
        proc.wait(30)
    (d_ttft, d_rate), (s_ttft, s_rate) = ([statistics.median(x) for x in zip(*runs)] for runs in (d, s))
    print(
        f"serve overhead: model hidden {args.hidden} x {args.layers} layers (random weights), {args.tokens} tokens "
        f"a request, greedy, streamed, median of {args.rounds} rounds, {os.cpu_count()} cores, OMP_NUM_THREADS=1"
    )
    print(f"{'path':<8} {'first token':>12} {'tokens/s':>10}")
    print(f"{'direct':<8} {1000 * d_ttft:>9.1f} ms {d_rate:>10.1f}")
    print(f"{'server':<8} {1000 * s_ttft:>9.1f} ms {s_rate:>10.1f}")
    added_ms, slower = 1000 * (s_ttft - d_ttft), 100 * (1 - s_rate / d_rate)
    print(
        f"the server adds {added_ms:+.1f} ms to the first token (goal <= 20) and {slower:+.1f}% to tokens/s (goal <= 5)"
    )


if __name__ == "__main__":
    main()
