"""SFT throughput, coati-tui's naive LoRA strategy vs TRL's SFTTrainer, same model, data and LoRA, on CPU.

    OMP_NUM_THREADS=1 python bench/sft_vs_trl.py            # needs `pip install trl` (the [bench] extra)
    OMP_NUM_THREADS=1 python bench/sft_vs_trl.py --steps 16 --setups small --rounds 3   # issue 15's figure

One run builds a ~45M-parameter Llama from a config (vocab 32000, hidden 512, 4 layers) with the tiny
trained tokenizer, writes 256 bilingual conversations of varied length, and trains each side in its own
child process for --steps optimizer steps: batch 8, max length 256, LoRA r16 / alpha 32 / dropout 0.05
on every linear layer, fp32. The figure is non-pad tokens per second over steps 2..N (the first step,
with its warm-up, is left out), from coati-tui's step events and from TRL's logged ``num_tokens``.

Two setups (--setups): "large" as above; "small", issue 15's (a ~12M Llama, vocabulary 2000, 512
conversations, LoRA r16 / alpha 32 / dropout 0 on q/k/v/o), where the transformer itself, not the LM
head, decides. Each side runs in the environment it ships with: coati-tui's child gets procenv.child_env()
(mimalloc preloaded where installed, else its glibc setting; each row names it), TRL this shell's. Peak
RSS is each child's ru_maxrss. ``--rounds N`` runs each comparison N times in turn and prints the median
ratio: on a shared 2-core machine one pair of runs moves by +-5%.

Comparisons: matched (gradient checkpointing off on both, loss on assistant tokens only on both); with
--defaults also each tool's own defaults for what the comparison does not fix (coati-tui's lora_naive
preset checkpoints; TRL checkpoints and, by default, takes the loss on every token).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WORDS_EN = [
    "the",
    "reward",
    "model",
    "scores",
    "answers",
    "and",
    "the",
    "policy",
    "learns",
    "to",
    "write",
    "better",
    "ones",
    "please",
    "answer",
]
WORDS_ZH = list("监督微调让模型学会遵循指令奖励模型给回答打分策略学习写出更好的回答")


QKVO = ["q_proj", "k_proj", "v_proj", "o_proj"]
SETUPS = {
    # the ~45M Llama of the first comparison: a large vocabulary, where taking the LM head at labelled
    # positions only pays most; LoRA r16 on every linear, dropout 0.05, 256 conversations
    "large": dict(
        vocab=32000, hidden=512, inter=1408, layers=4, heads=8, kv=4, n=256, targets="all-linear", dropout=0.05
    ),
    # issue 15's: the setup TRL's own SFT example would use here (a ~12M Llama, vocabulary 2000,
    # LoRA r16 / alpha 32 / dropout 0 on q/k/v/o, 512 conversations): the transformer itself
    "small": dict(vocab=2000, hidden=384, inter=1024, layers=6, heads=6, kv=6, n=512, targets=QKVO, dropout=0.0),
}


def build(folder: Path, setup: str = "large", pairs: bool = False) -> tuple[Path, Path]:
    """The setup's model (from a config, with the tiny trained tokenizer) and its SFT data (or, with
    ``pairs``, the same conversations as preference pairs) in ``folder``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from coati_tui.trainer.tiny import train_tokenizer

    c = SETUPS[setup]
    tok = train_tokenizer() if c["vocab"] == 32000 else train_tokenizer(vocab_size=c["vocab"])
    cfg = LlamaConfig(
        vocab_size=c["vocab"] if c["vocab"] == 32000 else len(tok),
        hidden_size=c["hidden"],
        intermediate_size=c["inter"],
        num_hidden_layers=c["layers"],
        num_attention_heads=c["heads"],
        num_key_value_heads=c["kv"],
        max_position_embeddings=1024,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        bos_token_id=tok.bos_token_id,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(folder / "model")
    tok.save_pretrained(folder / "model")
    rng = random.Random(0)

    def text(n):
        return " ".join(
            rng.choice(WORDS_EN) if rng.random() < 0.6 else "".join(rng.choices(WORDS_ZH, k=3)) for _ in range(n)
        )

    data = folder / ("pairs.jsonl" if pairs else "sft.jsonl")
    with data.open("w", encoding="utf-8") as f:
        for _ in range(c["n"]):
            user = {"role": "user", "content": text(rng.randint(5, 60))}
            answer = {"role": "assistant", "content": text(rng.randint(5, 40))}
            if pairs:
                other = {"role": "assistant", "content": text(rng.randint(5, 40))}
                rec = {"context": [user], "chosen": [answer], "rejected": [other]}
            else:
                rec = {"messages": [user, answer]}
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    return folder / "model", data


def run_coati(model: Path, data: Path, steps: int, gc: bool, setup: str, out: Path, stage: str = "sft") -> dict:
    """`coati-tui train`'s child (`python -m coati_tui.train RUN`) on a run config with the setup's LoRA,
    in the environment the CLI gives it (procenv.child_env), the caller's own settings winning."""
    from coati_tui.core import presets
    from coati_tui.core.procenv import child_env
    from coati_tui.core.run_config import RunConfig

    c = SETUPS[setup]
    preset = presets.load("lora_naive").with_overrides(
        {
            "train.batch_size": 8,
            "train.accumulation_steps": 1,
            "train.max_len": 256,
            "train.grad_checkpointing": gc,
            "lora.rank": 16,
            "lora.alpha": 32.0,
            "lora.dropout": c["dropout"],
            "lora.targets": c["targets"],
        }
    )
    cfg = RunConfig(stage=stage, model=str(model), data=str(data), preset=preset, max_steps=steps)
    cfg.save_interval, cfg.eval_split = 0, 0.0
    out.mkdir(parents=True)
    cfg.write(out)
    proc = subprocess.run(
        [sys.executable, "-m", "coati_tui.train", str(out)], capture_output=True, text=True, env=child_env()
    )
    if proc.returncode:
        raise RuntimeError(proc.stderr[-3000:])
    evs = [json.loads(x) for x in proc.stdout.splitlines() if x.startswith("{")]
    st = [e for e in evs if e["type"] == "step"]
    timed = st[1:]  # the first step, with its warm-up, is left out
    tokens = sum(e["tokens"] for e in timed[1:])
    return {
        "tokens_per_s": tokens / (timed[-1]["time"] - timed[0]["time"]),
        "steps": len(st),
        "peak": max(e.get("cpu_peak", e["cpu_rss"]) for e in st),
        "mfu": st[-1].get("mfu", 0.0),
        "allocator": next(e.get("allocator", "?") for e in evs if e["type"] == "start"),
    }


TRL_CHILD = r"""
import json, resource, sys, time
from datasets import Dataset
from peft import LoraConfig
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
from trl import SFTConfig, SFTTrainer
model_dir, data, steps, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[6]
gc, assistant_only = sys.argv[4] == "1", sys.argv[5] == "1"
lora = json.loads(sys.argv[7])
rows = [json.loads(l) for l in open(data, encoding="utf-8")]
seen = []
class Clock(TrainerCallback):
    def on_log(self, args, state, control, logs=None, **kw):
        if logs and "num_tokens" in logs:
            seen.append((time.perf_counter(), logs["num_tokens"]))
args = SFTConfig(output_dir=out, per_device_train_batch_size=8, gradient_accumulation_steps=1, max_length=256,
                 max_steps=steps, logging_steps=1, report_to=[], use_cpu=True, bf16=False, save_strategy="no",
                 gradient_checkpointing=gc, assistant_only_loss=assistant_only, learning_rate=2e-4,
                 dataloader_num_workers=0, disable_tqdm=True)
trainer = SFTTrainer(model=AutoModelForCausalLM.from_pretrained(model_dir), args=args,
                     train_dataset=Dataset.from_list(rows), processing_class=AutoTokenizer.from_pretrained(model_dir),
                     peft_config=LoraConfig(r=16, lora_alpha=32, lora_dropout=lora["dropout"],
                                            target_modules=lora["targets"], task_type="CAUSAL_LM"),
                     callbacks=[Clock()])
trainer.train()
(t0, n0), (t1, n1) = seen[1], seen[-1]
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"tokens_per_s": (n1 - n0) / (t1 - t0), "steps": len(seen), "peak": peak}))
"""


def run_trl(model: Path, data: Path, steps: int, gc: bool, assistant_only: bool, setup: str, out: Path) -> dict:
    """TRL's SFTTrainer in its own child, with the environment TRL users have (this shell's)."""
    c = SETUPS[setup]
    lora = json.dumps({"targets": c["targets"], "dropout": c["dropout"]})
    argv = [str(model), str(data), str(steps), str(int(gc)), str(int(assistant_only)), str(out), lora]
    proc = subprocess.run([sys.executable, "-c", TRL_CHILD, *argv], capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--setups", default="small,large", help="comma-separated: small (issue 15's), large (32000 words)")
    ap.add_argument("--defaults", action="store_true", help="also each tool's defaults (both checkpoint)")
    ap.add_argument("--rounds", type=int, default=1, help="pairs of runs per comparison; the median ratio is printed")
    args = ap.parse_args()
    import importlib.metadata as md

    versions = {n: md.version(n) for n in ("torch", "transformers", "peft", "trl")}
    print(
        f"# SFT tokens/s (non-pad) on CPU, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, "
        f"{args.steps} steps (the first two left out), batch 8 x <=256 tokens, LoRA r16, fp32; "
        f"{versions}"
    )
    comparisons = [("matched (GC off, assistant-only loss)", False, True)]
    if args.defaults:
        comparisons.append(("defaults (both checkpoint; TRL loss on all tokens)", True, False))
    for setup in args.setups.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            model, data = build(Path(tmp), setup)
            for label, gc, trl_assistant_only in comparisons:
                ratios = []
                for r in range(args.rounds):
                    t = time.perf_counter()
                    ours = run_coati(model, data, args.steps, gc, setup, Path(tmp) / f"coati-{gc}-{r}")
                    theirs = run_trl(
                        model, data, args.steps, gc, trl_assistant_only, setup, Path(tmp) / f"trl-{gc}-{r}"
                    )
                    ratios.append(ours["tokens_per_s"] / theirs["tokens_per_s"])
                    print(
                        f"{setup:5s} {label:40s} coati-tui {ours['tokens_per_s']:6.0f} tok/s "
                        f"(peak RSS {ours['peak'] / 2**20:5.0f} MiB, MFU {ours['mfu']:.0%})  "
                        f"TRL {theirs['tokens_per_s']:6.0f} tok/s (peak RSS {theirs['peak'] / 2**20:5.0f} MiB)  "
                        f"ratio {ratios[-1]:.2f}x  ({time.perf_counter() - t:.0f} s; allocator {ours['allocator']})",
                        flush=True,
                    )
                if args.rounds > 1:
                    low, mid, high = min(ratios), statistics.median(ratios), max(ratios)
                    spread = f"{mid:.2f}x over {args.rounds} rounds, {low:.2f}-{high:.2f}x"
                    print(f"{setup:5s} {label:40s} median ratio {spread}")


if __name__ == "__main__":
    main()
