"""The trainer child's allocator setting (issue 15): speed and peak RSS of SFT and RM steps under each.

    OMP_NUM_THREADS=1 python bench/allocator.py [--steps 14] [--rounds 2]

Issue 15's setup: a ~12M Llama built from a config (vocabulary 2000, hidden 384, 6 layers), 512 bilingual
chat conversations (SFT) or pairs (RM), LoRA r16 / alpha 32 / dropout 0 on q/k/v/o, batch 8, max length
256, fp32, one thread, gradient checkpointing off. Each row is `python -m coati_tui.train RUN` in a fresh
child with only the candidate's malloc variables changed. Figures: non-pad tokens/s over steps 4..N (from
the step events' times) and the child's peak RSS (the last step event's ``cpu_peak``, ``ru_maxrss``),
with the planner's predicted peak for the same settings beside it. Rounds interleave the candidates so
that a busy machine slows them alike; the best round of each is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import sft_vs_trl  # noqa: E402  (the bilingual word lists)

from coati_tui.core.procenv import mimalloc_library  # noqa: E402

MIB = 2**20
CANDIDATES: dict[str, dict[str, str]] = {
    "threshold 128 KiB (first shipped)": {"MALLOC_MMAP_THRESHOLD_": "131072"},
    "glibc default (dynamic threshold)": {},
    "threshold 4 MiB": {"MALLOC_MMAP_THRESHOLD_": str(4 * MIB)},
    "threshold 16 MiB": {"MALLOC_MMAP_THRESHOLD_": str(16 * MIB)},
    "threshold 32 MiB": {"MALLOC_MMAP_THRESHOLD_": str(32 * MIB)},
    # glibc >= 2.35: mmap'd chunks asked to be transparent huge pages (kernel THP "madvise" or "always"):
    # a 2 MiB page faults once where 512 small ones would
    "threshold 128 KiB + huge pages": {"MALLOC_MMAP_THRESHOLD_": "131072", "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"},
    "threshold 1 MiB + huge pages": {"MALLOC_MMAP_THRESHOLD_": str(MIB), "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"},
    # trainer/malloc.py: the threshold raised around each backward pass only, the heap trimmed after it
    "128 KiB + huge pages, 4 MiB in backward (glibc fallback)": {
        "MALLOC_MMAP_THRESHOLD_": "131072",
        "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1",
        "COATI_TUI_BACKWARD_MMAP": str(4 * MIB),
    },
    "128 KiB + huge pages, 32 MiB in backward": {
        "MALLOC_MMAP_THRESHOLD_": "131072",
        "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1",
        "COATI_TUI_BACKWARD_MMAP": str(32 * MIB),
    },
}
MIMALLOC = mimalloc_library()
if MIMALLOC:  # cmeel-mimalloc's library, preloaded (Linux x86_64 / aarch64)
    CANDIDATES.update(
        {
            # procenv's: its defaults, a freed page decommitted (given back) 10 ms after its last block went
            "mimalloc, its defaults (shipped)": {"LD_PRELOAD": MIMALLOC},
            # freed pages given back with MADV_FREE: the kernel takes them when it needs memory, a reuse before
            # that costs no fault; they count in RSS until taken
            "mimalloc, MADV_FREE purge": {"LD_PRELOAD": MIMALLOC, "MIMALLOC_PURGE_DECOMMITS": "0"},
            "mimalloc, never purge": {"LD_PRELOAD": MIMALLOC, "MIMALLOC_PURGE_DELAY": "-1"},
        }
    )


def build(folder: Path) -> tuple[Path, Path, Path]:
    """Issue 15's model (sft_vs_trl's "small" setup), its SFT conversations and the same as pairs."""
    model, sft = sft_vs_trl.build(folder, "small")
    pairs_dir = folder / "p"
    pairs_dir.mkdir()
    _, pairs = sft_vs_trl.build(pairs_dir, "small", pairs=True)
    return model, sft, pairs


def overrides() -> dict:
    return {
        "train.batch_size": 8,
        "train.accumulation_steps": 1,
        "train.max_len": 256,
        "train.grad_checkpointing": False,
        "lora.rank": 16,
        "lora.alpha": 32.0,
        "lora.dropout": 0.0,
        "lora.targets": ["q_proj", "k_proj", "v_proj", "o_proj"],
    }


def run(stage: str, model: Path, data: Path, steps: int, env_extra: dict[str, str], out: Path) -> dict:
    from coati_tui.core import presets
    from coati_tui.core.run_config import RunConfig

    preset = presets.load("lora_naive").with_overrides(overrides())
    cfg = RunConfig(stage=stage, model=str(model), data=str(data), preset=preset, max_steps=steps)
    cfg.save_interval, cfg.eval_split = 0, 0.0
    out.mkdir(parents=True)
    cfg.write(out)
    ours = ("MALLOC_", "GLIBC_TUNABLES", "COATI_TUI_BACKWARD", "COATI_TUI_ALLOCATOR", "LD_PRELOAD", "MIMALLOC_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(ours)}
    env.update(OMP_NUM_THREADS="1", **env_extra)
    proc = subprocess.run([sys.executable, "-m", "coati_tui.train", str(out)], capture_output=True, text=True, env=env)
    if proc.returncode:
        raise RuntimeError(proc.stderr[-3000:])
    st = [json.loads(x) for x in proc.stdout.splitlines() if x.startswith("{") and '"type": "step"' in x]
    timed = st[3:]
    tps = sum(e["tokens"] for e in timed[1:]) / (timed[-1]["time"] - timed[0]["time"])
    return {"tokens_per_s": tps, "peak": max(e["cpu_peak"] for e in st), "mfu": st[-1].get("mfu", 0.0)}


def planned(stage: str, model: Path) -> int:
    from coati_tui.core import modelinfo, planner, presets

    arch = modelinfo.Arch.from_config(modelinfo.read_config(model))
    preset = presets.load("lora_naive").with_overrides(overrides())
    _, host, _, _ = planner.estimate(arch, preset, stage, 8, 256, "cpu")
    return sum(host.values())  # with the runtime's RSS: the process's whole peak


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=14)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--stages", default="sft,rm")
    ap.add_argument("--only", default="", help="comma-separated candidate numbers (0 = the first) to run")
    args = ap.parse_args()
    print(f"# {__doc__.splitlines()[0]}\n# steps {args.steps}, rounds {args.rounds}, machine cores {os.cpu_count()}")
    with tempfile.TemporaryDirectory() as tmp:
        model, sft, pairs = build(Path(tmp))
        for stage in args.stages.split(","):
            data = sft if stage == "sft" else pairs
            best: dict[str, dict] = {}
            chosen = {int(x) for x in args.only.split(",")} if args.only else set(range(len(CANDIDATES)))
            for r in range(args.rounds):
                for i, (name, env) in enumerate(CANDIDATES.items()):
                    if i not in chosen:
                        continue
                    res = run(stage, model, data, args.steps, env, Path(tmp) / f"{stage}-{r}-{i}")
                    if name not in best or res["tokens_per_s"] > best[name]["tokens_per_s"]:
                        best[name] = res
            try:
                plan = f"planner predicts {planned(stage, model) / MIB:.0f} MiB"
            except Exception as exc:  # the planner's signature is the planner's; the figures stand without it
                plan = f"planner: {exc}"
            base = next(iter(best.values()))["tokens_per_s"]
            print(f"\n{stage}: {plan}")
            for name, res in best.items():
                print(
                    f"  {name:36s} {res['tokens_per_s']:7.0f} tok/s ({res['tokens_per_s'] / base:4.2f}x)  "
                    f"peak RSS {res['peak'] / MIB:6.0f} MiB  MFU {res['mfu']:.1%}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
