"""What the trainer child's MALLOC_MMAP_THRESHOLD_ (coati_tui/procenv.py) costs and saves on CPU.

    OMP_NUM_THREADS=1 python bench/malloc_threshold.py

The same SFT run (the ~45M Llama and data of bench/sft_vs_trl.py, lora_naive, batch 8 x <=256 tokens,
gradient checkpointing on, 12 steps) under four settings: tokens/s over steps 2..12 and the largest
RSS the step events reported.
"""

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import sft_vs_trl as b

tmp = Path(tempfile.mkdtemp())
model, data = b.build(tmp)
for thr in ("unset", "131072", "4194304", "33554432"):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    if thr != "unset":
        env["MALLOC_MMAP_THRESHOLD_"] = thr
    else:
        env.pop("MALLOC_MMAP_THRESHOLD_", None)
    out = tmp / f"r{thr}"
    out.mkdir()
    from coati_tui.core import presets
    from coati_tui.core.run_config import RunConfig

    p = presets.load("lora_naive").with_overrides(
        {"train.batch_size": 8, "train.accumulation_steps": 1, "train.max_len": 256}
    )
    RunConfig(
        stage="sft", model=str(model), data=str(data), preset=p, max_steps=12, save_interval=0, eval_split=0
    ).write(out)
    proc = subprocess.run([sys.executable, "-m", "coati_tui.train", str(out)], capture_output=True, text=True, env=env)
    st = [json.loads(line) for line in proc.stdout.splitlines() if '"step"' in line and line.startswith("{")]
    st = [e for e in st if e["type"] == "step"]
    tps = sum(e["tokens"] for e in st[1:]) / (st[-1]["time"] - st[0]["time"])
    print(
        f"MALLOC_MMAP_THRESHOLD_={thr:>9s}  tokens/s {tps:6.0f}  "
        f"max RSS {max(e['cpu_rss'] for e in st) / 2**20:6.0f} MiB",
        flush=True,
    )
