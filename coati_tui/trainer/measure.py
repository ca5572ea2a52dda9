"""What the trainer measures about its own process and device: the peak it computes against (MFU's
denominator) and the peak of its RSS.

- On a GPU the peak is the data sheet's, from ``core.flops.GPU_PEAK_TFLOPS`` by the card's name.
- On a CPU there is no data sheet to trust: a square fp32 matmul is timed once (about a tenth of a second,
  at the thread count the run uses) and the figure is cached in ``$COATI_TUI_HOME/cache/cpu_peak.json``,
  keyed by CPU model, threads and torch version, so later runs start without it. Its inputs come from a
  generator of its own, so a run that measures draws the same random numbers as one that reads the cache.
- The RSS peak: the step event's ``cpu_peak`` is the process's high-water mark so far (``ru_maxrss``),
  which the RSS after the step (``cpu_rss``) misses when the step has freed its activations: the DPO
  benchmark saw 477 MiB there against 1180 MiB. It is not reset per step (Linux could, through
  ``/proc/self/clear_refs``), because that resets ``ru_maxrss`` too, which benchmarks and the
  planner's accuracy check read as the run's peak.
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path

from coati_tui.core import flops, paths

CPU_MATMUL = 512  # the timed matmul's side: large enough to reach the BLAS kernel's speed, quick to run


def peak_flops(device: str, precision: str) -> float | None:
    """FLOP/s the device could do at ``precision``, or None (a card not in the table)."""
    import torch

    if device == "cuda":
        return flops.gpu_peak_flops(torch.cuda.get_device_name(), precision)
    key = f"{_cpu_model()}|threads={torch.get_num_threads()}|torch={torch.__version__}"
    cache = paths.home() / "cache" / "cpu_peak.json"
    known = _read(cache)
    if key not in known:
        known[key] = _time_matmul()
        _write(cache, known)
    return float(known[key])


def _time_matmul() -> float:
    import torch

    n = CPU_MATMUL
    # a generator of its own: drawing from the global one would shift the run's LoRA init and sampling on the
    # first run of a machine only (the figure is cached after), so that run would not repeat
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(n, n, generator=gen), torch.randn(n, n, generator=gen)
    for _ in range(2):  # warm-up: the BLAS library's first call sets itself up
        torch.mm(a, b)
    reps, t0 = 0, time.perf_counter()
    while reps < 3 or time.perf_counter() - t0 < 0.05:
        torch.mm(a, b)
        reps += 1
    return 2 * n**3 * reps / (time.perf_counter() - t0)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _read(path: Path) -> dict[str, float]:
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _write(path: Path, data: dict[str, float]) -> None:
    try:  # a cache: a read-only home only costs the measurement next time
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=1))
        tmp.replace(path)
    except OSError:
        pass


def rss_peak() -> int:
    """Bytes: this process's RSS high-water mark so far (``ru_maxrss``: Linux's VmHWM)."""
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024
