"""kill -9 / resume cycles: does a run the trainer was SIGKILLed in complete, and equal the run nobody killed?

    OMP_NUM_THREADS=1 python bench/faults.py [-n 20] [--seed 14]

The tiny model of tests/test_faults_resume.py (a 2-layer Llama, hidden 256, full fine-tune, 12 steps, a
checkpoint every 3). First the uninterrupted run; then N runs, each killed (SIGKILL to the trainer under
`coati-tui train`) once or twice at seeded random moments: mid-step (after step k's event), while a
checkpoint is being written (`checkpoints/.tmp-step-k` exists), or while the final model is (`final.tmp`
exists); each kill is followed by `coati-tui train sft --resume`, the last one runs to the end. Prints how
many runs completed, how many steps were redone (step records beyond one per step in events.jsonl), where
the kills landed, and the largest difference of a step's loss (the later record of it) to the uninterrupted
run's.
"""

from __future__ import annotations

import argparse
import collections
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=20, help="runs, each killed once or twice")
    ap.add_argument("--seed", type=int, default=14)
    args = ap.parse_args()

    from sample_data import sft_records, write_jsonl
    from test_faults_resume import ARGS, Attempt, kill_at, losses, resume

    from coati_tui.core import events, paths
    from coati_tui.trainer.tiny import build_tiny_model

    root = Path(tempfile.mkdtemp(prefix="coati-faults-"))
    model = build_tiny_model(root / "model", "causal", hidden=256, intermediate=512)
    data = write_jsonl(root / "sft.jsonl", sft_records(48))
    base = ["--model", str(model), "--data", data, *ARGS, "--lora-rank", "0", "--preset", "lora_naive"]
    code, err = Attempt(root / "ref", [*base, "--out", str(root / "ref")]).finish()
    assert code == 0, err[-2000:]
    reference = losses(root / "ref")
    rng = random.Random(args.seed)
    completed, redone, worst, landed = 0, 0, 0.0, collections.Counter()
    started = time.perf_counter()
    for i in range(args.n):
        run = root / f"run-{i}"
        first = [*base, "--out", str(run)]
        for k in range(rng.choice([1, 2])):
            moment = rng.choice(["step", "checkpoint", "final"])
            step = {"step": rng.randint(1, 11), "checkpoint": rng.choice([3, 6, 9]), "final": 12}[moment]
            _, killed = kill_at(run, first if k == 0 else ["--resume", str(run)], moment, step, rng)
            inside = moment == "step" or bool(paths.partial_writes(run))
            landed[f"{moment}{'' if inside else ' (just after)'}" if killed else f"{moment} (missed: done)"] += 1
        att, code, err = resume(run)
        got = losses(run)
        done = code == 0 and [e["status"] for e in att.events if e["type"] == "done"] == ["completed"]
        done = done and sorted(got) == sorted(reference) and (run / "final" / "model.safetensors").is_file()
        completed += done
        steps = [e for e in events.read(run / "events.jsonl") if e["type"] == "step"]
        redone += len(steps) - len({e["step"] for e in steps})
        diff = max((abs(got[s] - reference[s]) for s in reference if s in got), default=float("inf"))
        worst = max(worst, diff)
        print(f"run {i}: {'completed' if done else 'NOT completed'}, loss diff {diff:.2e}", flush=True)
    print(f"\n{completed}/{args.n} runs completed; {redone} steps redone; largest loss difference {worst:.2e}")
    print("kills: " + ", ".join(f"{k} {v}" for k, v in sorted(landed.items())))
    print(f"{time.perf_counter() - started:.0f} s")
    shutil.rmtree(root, ignore_errors=True)  # 20 full fine-tune runs: ~0.9 GB of checkpoints and final models


if __name__ == "__main__":
    main()
