"""``python -m coati_tui.worker MODEL [--quant Q] [--dtype D]``: the generation worker (see generate.py).

Two settings for tests, which need a worker to be noisy or slow on purpose:

- ``COATI_TUI_WORKER_STDERR_NOISE=N`` makes it write N bytes of warnings to stderr before each answer, as
  bitsandbytes does on a CPU (a line per 8-bit matmul): a client that does not drain stderr blocks the
  worker once the pipe is full.
- ``COATI_TUI_WORKER_TOKEN_DELAY=S`` makes each generated token take S seconds longer, as a big model on
  a small GPU does: a server's queue, its 429 and a cancel on disconnect can then be seen at work.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

from coati_tui.worker import generate

NOISE_ENV = "COATI_TUI_WORKER_STDERR_NOISE"
DELAY_ENV = "COATI_TUI_WORKER_TOKEN_DELAY"
NOISE_LINE = "MatMul8bitLt: inputs will be cast from torch.float32 to float16 during quantization\n"


def _noisy(nbytes: int) -> None:
    plain = generate.Worker.generate

    def noisy_generate(self: generate.Worker, req: dict[str, Any]) -> None:
        sys.stderr.write(NOISE_LINE * (nbytes // len(NOISE_LINE) + 1))
        sys.stderr.flush()
        plain(self, req)

    generate.Worker.generate = noisy_generate  # type: ignore[method-assign]


def _slow(seconds: float) -> None:
    """Each new token takes ``seconds`` longer (the streamer's ``put`` runs once a token, in generate)."""
    from transformers import TextIteratorStreamer

    plain = TextIteratorStreamer.put

    def slow_put(self: TextIteratorStreamer, value: Any) -> None:
        time.sleep(seconds)
        plain(self, value)

    TextIteratorStreamer.put = slow_put  # type: ignore[method-assign]


if __name__ == "__main__":
    noise = int(os.environ.get(NOISE_ENV) or 0)
    if noise > 0:
        _noisy(noise)
    delay = float(os.environ.get(DELAY_ENV) or 0)
    if delay > 0:
        _slow(delay)
    sys.exit(generate.main())
