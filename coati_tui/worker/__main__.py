"""``python -m coati_tui.worker MODEL [--quant Q] [--dtype D]``: the generation worker (see generate.py).

``COATI_TUI_WORKER_STDERR_NOISE=N`` (for tests) makes it write N bytes of warnings to stderr before each
answer, as bitsandbytes does on a CPU (a line per 8-bit matmul): a client that does not drain stderr
blocks the worker once the pipe is full.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from coati_tui.worker import generate

NOISE_ENV = "COATI_TUI_WORKER_STDERR_NOISE"
NOISE_LINE = "MatMul8bitLt: inputs will be cast from torch.float32 to float16 during quantization\n"


def _noisy(nbytes: int) -> None:
    plain = generate.Worker.generate

    def noisy_generate(self: generate.Worker, req: dict[str, Any]) -> None:
        sys.stderr.write(NOISE_LINE * (nbytes // len(NOISE_LINE) + 1))
        sys.stderr.flush()
        plain(self, req)

    generate.Worker.generate = noisy_generate  # type: ignore[method-assign]


if __name__ == "__main__":
    noise = int(os.environ.get(NOISE_ENV) or 0)
    if noise > 0:
        _noisy(noise)
    sys.exit(generate.main())
