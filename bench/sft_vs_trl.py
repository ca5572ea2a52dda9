"""SFT throughput, coati-tui's naive LoRA strategy vs TRL's SFTTrainer, same model, data and LoRA, on CPU.

    OMP_NUM_THREADS=1 python bench/sft_vs_trl.py            # needs `pip install trl` (the [bench] extra)

One run builds a ~45M-parameter Llama from a config (vocab 32000, hidden 512, 4 layers) with the tiny
trained tokenizer, writes 256 bilingual conversations of varied length, and trains each side in its own
child process for --steps optimizer steps: batch 8, max length 256, LoRA r16 / alpha 32 / dropout 0.05
on every linear layer, fp32. The figure is non-pad tokens per second over steps 2..N (the first step,
with its warm-up, is left out), from coati-tui's step events and from TRL's logged ``num_tokens``.

Two comparisons:
- matched: gradient checkpointing off on both, loss on assistant tokens only on both;
- defaults: each tool's own defaults for what the comparison does not fix (coati-tui's lora_naive preset
  checkpoints; TRL checkpoints and, by default, takes the loss on every token).
"""

from __future__ import annotations

import argparse
import json
import os
import random
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


def build(folder: Path) -> tuple[Path, Path]:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from coati_tui.trainer.tiny import train_tokenizer

    tok = train_tokenizer()
    cfg = LlamaConfig(
        vocab_size=32000,
        hidden_size=512,
        intermediate_size=1408,
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=4,
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

    data = folder / "sft.jsonl"
    with data.open("w", encoding="utf-8") as f:
        for _ in range(256):
            msgs = [
                {"role": "user", "content": text(rng.randint(5, 60))},
                {"role": "assistant", "content": text(rng.randint(5, 40))},
            ]
            f.write(json.dumps({"messages": msgs}, ensure_ascii=False) + "\n")
    return folder / "model", data


def run_coati(model: Path, data: Path, steps: int, gc: bool, out: Path) -> dict:
    cmd = [
        sys.executable,
        "-m",
        "coati_tui",
        "train",
        "sft",
        "--model",
        str(model),
        "--data",
        str(data),
        "--preset",
        "lora_naive",
        "--batch-size",
        "8",
        "--accumulation-steps",
        "1",
        "--max-len",
        "256",
        "--lora-rank",
        "16",
        "--max-steps",
        str(steps),
        "--save-interval",
        "0",
        "--eval-split",
        "0",
        "--grad-checkpointing" if gc else "--no-grad-checkpointing",
        "--out",
        str(out),
        "--json",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
    steps_ev = [
        e
        for e in map(json.loads, (line for line in proc.stdout.splitlines() if line.startswith("{")))
        if e["type"] == "step"
    ]
    tokens = sum(e["tokens"] for e in steps_ev[1:])
    return {"tokens_per_s": tokens / (steps_ev[-1]["time"] - steps_ev[0]["time"]), "steps": len(steps_ev)}


TRL_CHILD = r"""
import json, sys, time
from datasets import Dataset
from peft import LoraConfig
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
from trl import SFTConfig, SFTTrainer
model_dir, data, steps, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[6]
gc, assistant_only = sys.argv[4] == "1", sys.argv[5] == "1"
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
                     peft_config=LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear",
                                            task_type="CAUSAL_LM"), callbacks=[Clock()])
trainer.train()
(t0, n0), (t1, n1) = seen[0], seen[-1]
print(json.dumps({"tokens_per_s": (n1 - n0) / (t1 - t0), "steps": len(seen)}))
"""


def run_trl(model: Path, data: Path, steps: int, gc: bool, assistant_only: bool, out: Path) -> dict:
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            TRL_CHILD,
            str(model),
            str(data),
            str(steps),
            str(int(gc)),
            str(int(assistant_only)),
            str(out),
        ],
        capture_output=True,
        text=True,
    )
    if proc.returncode:
        raise RuntimeError(proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=20)
    args = ap.parse_args()
    import importlib.metadata as md

    versions = {n: md.version(n) for n in ("torch", "transformers", "peft", "trl")}
    print(
        f"# SFT tokens/s (non-pad) on CPU, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, "
        f"{args.steps} steps, batch 8 x <=256 tokens, LoRA r16 all-linear, fp32; {versions}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        model, data = build(Path(tmp))
        rows = []
        for label, gc, trl_assistant_only in (
            ("matched (GC off, assistant-only loss)", False, True),
            ("defaults (both checkpoint; TRL loss on all tokens)", True, False),
        ):
            t = time.perf_counter()
            ours = run_coati(model, data, args.steps, gc, Path(tmp) / f"coati-{gc}")
            theirs = run_trl(model, data, args.steps, gc, trl_assistant_only, Path(tmp) / f"trl-{gc}")
            ratio = ours["tokens_per_s"] / theirs["tokens_per_s"]
            rows.append((label, ours["tokens_per_s"], theirs["tokens_per_s"], ratio))
            print(
                f"{label:52s} coati-tui {ours['tokens_per_s']:7.0f}  TRL {theirs['tokens_per_s']:7.0f}  "
                f"ratio {ratio:.2f}x  ({time.perf_counter() - t:.0f} s)",
                flush=True,
            )


if __name__ == "__main__":
    main()
