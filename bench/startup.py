"""Start-up costs the user feels: `coati-tui profile`, the in-process profile, and the tiny-model build.

    python bench/startup.py

Each figure is the median of 5 runs: the whole `coati-tui profile --json` command in a fresh process
(interpreter start included), `hardware.profile()` in process, and `build_tiny_model` after its
imports are warm (the first call also pays transformers' lazy imports, printed separately).
Goals (issue 2): profile under 0.5 s; a tiny model in well under a second.
The app's first frame against a bare Textual app's: bench/app_first_frame.py.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time


def timed(fn, n=5):
    out = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return statistics.median(out)


def main() -> None:
    cmd = [sys.executable, "-m", "coati_tui", "profile", "--json"]
    whole = timed(lambda: subprocess.run(cmd, capture_output=True, check=True))
    print(f"coati-tui profile --json (fresh process): {whole:.3f} s")
    from coati_tui.core import hardware

    print(f"hardware.profile() in process:             {timed(hardware.profile):.4f} s")
    from coati_tui.trainer.tiny import build_tiny_model

    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        build_tiny_model(f"{tmp}/first")
        print(f"build_tiny_model, first call (imports):    {time.perf_counter() - t:.3f} s")
        i = iter(range(100))
        warm = timed(lambda: build_tiny_model(f"{tmp}/m{next(i)}"))
        print(f"build_tiny_model, warm:                    {warm:.3f} s")


if __name__ == "__main__":
    main()
