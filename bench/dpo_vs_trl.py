"""DPO throughput and memory, coati-tui's naive LoRA strategy vs TRL's DPOTrainer, same model, data and LoRA, on CPU.

    OMP_NUM_THREADS=1 python bench/dpo_vs_trl.py            # needs `pip install trl` (the [bench] extra)

Goal: coati-tui at >= 1.5x TRL's tokens/s, at no more peak memory.

One run builds a ~19M-parameter Llama from a config (vocab 32000, hidden 256, 4 layers, random weights,
``save_pretrained``) with the tiny trained tokenizer of bench/sft_vs_trl.py, writes --pairs (256) bilingual
preference pairs in TRL's conversational format (``{"prompt": [user], "chosen": [assistant],
"rejected": [assistant]}``, one .jsonl that both sides read), and trains each side in its own fresh child
process with the environment it ships with (coati-tui's trainer child adds its own malloc setting,
``coati_tui/core/procenv.py``; TRL runs in the plain environment), for --steps (12) optimizer steps:
sigmoid DPO, beta 0.1, --batch (8) pairs = 16 sequences per step, accumulation 1, max length 256 (no
pair is truncated: the longest is below it), learning rate 2e-4, LoRA r16 / alpha 32 / dropout 0 on
every linear layer, the reference = the base with the adapters switched off (no precomputed log-probs)
on both sides, gradient checkpointing off on both, fp32, one thread (the command's OMP_NUM_THREADS=1,
which both children inherit). coati-tui runs as a user runs it (``coati-tui train dpo ... --json``) with
the shipped lora_naive preset copied with ``dropout = 0.0`` (the one LoRA setting without a flag); TRL
as its docs show it (``DPOTrainer(model, args=DPOConfig(...), train_dataset, processing_class,
peft_config)``).

Measured, the same way on both sides:
- tokens/s: non-pad tokens (prompt + answer, of the chosen and the rejected sequence of every pair:
  the attention mask's sum) of optimizer steps W+1..N divided by the wall time from the end of step W
  to the end of step N (W = --warmup, 2 by default: the first steps, with their allocations and lazy
  set-up, are left out). coati-tui: its step events (``tokens``, ``time``, wall clock); TRL: its logged cumulative
  ``num_tokens`` (the same attention-mask sum), clocked (wall clock) in an ``on_log`` callback, logging_steps=1.
- peak RSS: ``ru_maxrss`` of the child, from ``os.wait4`` in this process (the kernel's high-water
  mark of the largest process in the child's tree: for coati-tui that is its trainer process, which the
  CLI waits for); and, beside it, the peak of the whole tree's summed RSS, sampled every 0.2 s (coati-tui
  runs two processes, the CLI and the trainer).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from sft_vs_trl import WORDS_EN, WORDS_ZH  # the same bilingual vocabulary as the SFT comparison

MAX_LEN = 256
LR = 2e-4
BETA = 0.1


def build(folder: Path, n_pairs: int) -> tuple[Path, Path]:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    from transformers.utils import logging as hf_logging

    from coati_tui.trainer.tiny import train_tokenizer

    tok = train_tokenizer()
    cfg = LlamaConfig(
        vocab_size=32000,
        hidden_size=256,
        intermediate_size=704,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        bos_token_id=tok.bos_token_id,
    )
    torch.manual_seed(0)
    hf_logging.disable_progress_bar()
    LlamaForCausalLM(cfg).save_pretrained(folder / "model")
    tok.save_pretrained(folder / "model")
    rng = random.Random(0)

    def text(n: int) -> str:
        return " ".join(
            rng.choice(WORDS_EN) if rng.random() < 0.6 else "".join(rng.choices(WORDS_ZH, k=3)) for _ in range(n)
        )

    data = folder / "prefs.jsonl"
    longest = 0
    with data.open("w", encoding="utf-8") as f:
        for _ in range(n_pairs):
            prompt = [{"role": "user", "content": text(rng.randint(4, 30))}]
            chosen = [{"role": "assistant", "content": text(rng.randint(4, 24))}]
            rejected = [{"role": "assistant", "content": text(rng.randint(4, 24))}]
            for side in (chosen, rejected):
                rendered = tok.apply_chat_template(prompt + side, tokenize=False)
                longest = max(longest, len(tok(rendered, add_special_tokens=False)["input_ids"]))
            f.write(json.dumps({"prompt": prompt, "chosen": chosen, "rejected": rejected}, ensure_ascii=False) + "\n")
    if longest >= MAX_LEN:
        raise SystemExit(f"a pair has {longest} tokens, over max length {MAX_LEN}: the sides truncate differently")
    return folder / "model", data


def lora_naive_dropout0(folder: Path) -> Path:
    """The shipped lora_naive preset with ``dropout = 0.0``: same name, same everything else."""
    from coati_tui.core.presets import preset_files

    text = preset_files()["lora_naive"].read_text(encoding="utf-8")
    assert "dropout = 0.05" in text
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "lora_naive.toml"
    path.write_text(text.replace("dropout = 0.05", "dropout = 0.0", 1), encoding="utf-8")
    return path


def run_measured(cmd: list[str], log: Path) -> tuple[int, str, int, int]:
    """(exit status, stdout, ru_maxrss bytes of the child's tree, sampled peak of its summed RSS)."""
    import psutil

    with open(log, "wb") as err, tempfile.TemporaryFile() as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err)
        peak, done = [0], threading.Event()

        def sample() -> None:
            try:
                root = psutil.Process(proc.pid)
            except psutil.Error:
                return
            while not done.wait(0.2):
                total = 0
                try:
                    for p in [root, *root.children(recursive=True)]:
                        try:
                            total += p.memory_info().rss
                        except psutil.Error:
                            pass
                except psutil.Error:
                    return
                peak[0] = max(peak[0], total)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        done.set()
        sampler.join()
        out.seek(0)
        return proc.returncode, out.read().decode("utf-8"), usage.ru_maxrss * 1024, peak[0]


def run_coati(model: Path, data: Path, preset: Path, steps: int, batch: int, warmup: int, out: Path) -> dict[str, Any]:
    cmd = [
        sys.executable,
        "-m",
        "coati_tui",
        "train",
        "dpo",
        "--model",
        str(model),
        "--data",
        str(data),
        "--loss",
        "sigmoid",
        "--beta",
        str(BETA),
        "--live-ref",
        "--preset",
        str(preset),
        "--lora-rank",
        "16",
        "--batch-size",
        str(batch),
        "--accumulation-steps",
        "1",
        "--max-len",
        str(MAX_LEN),
        "--lr",
        str(LR),
        "--max-steps",
        str(steps),
        "--no-grad-checkpointing",
        "--eval-split",
        "0",
        "--save-interval",
        "0",
        "--out",
        str(out),
        "--json",
    ]
    code, stdout, maxrss, tree_peak = run_measured(cmd, out.parent / f"{out.name}.stderr")
    evs = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
    if code:
        errs = [e for e in evs if e["type"] == "error"]
        raise RuntimeError(f"coati-tui exited {code}: {errs[-1] if errs else stdout[-3000:]}")
    start = next(e for e in evs if e["type"] == "start")
    steps_ev = [e for e in evs if e["type"] == "step"]
    timed = steps_ev[warmup:]
    return {
        "tokens_per_s": sum(e["tokens"] for e in timed) / (steps_ev[-1]["time"] - steps_ev[warmup - 1]["time"]),
        "steps": len(steps_ev),
        "tokens": sum(e["tokens"] for e in steps_ev),
        "maxrss": maxrss,
        "tree_peak": tree_peak,
        "cpu_rss_max": max(e["cpu_rss"] for e in steps_ev),
        "loss_first": steps_ev[0]["loss"],
        "loss_last": steps_ev[-1]["loss"],
        "truncated": start.get("data", {}).get("truncated"),
        "reference": start.get("reference"),
        "trainable": start.get("trainable_params"),
    }


TRL_CHILD = r"""
import json, sys, time
from datasets import Dataset
from peft import LoraConfig
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
from trl import DPOConfig, DPOTrainer
model_dir, data, steps, batch, max_len, lr, beta, out = sys.argv[1:9]
rows = [json.loads(l) for l in open(data, encoding="utf-8")]
seen = []
class Clock(TrainerCallback):
    def on_log(self, args, state, control, logs=None, **kw):
        if logs and "num_tokens" in logs:
            seen.append((time.time(), logs["num_tokens"], logs.get("loss")))
args = DPOConfig(output_dir=out, per_device_train_batch_size=int(batch), gradient_accumulation_steps=1,
                 max_length=int(max_len), learning_rate=float(lr), max_steps=int(steps), beta=float(beta),
                 loss_type=["sigmoid"], precompute_ref_log_probs=False, gradient_checkpointing=False,
                 logging_steps=1, report_to=[], use_cpu=True, bf16=False, fp16=False, save_strategy="no",
                 dataloader_num_workers=0, disable_tqdm=True)
trainer = DPOTrainer(model=AutoModelForCausalLM.from_pretrained(model_dir), args=args,
                     train_dataset=Dataset.from_list(rows), processing_class=AutoTokenizer.from_pretrained(model_dir),
                     peft_config=LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear",
                                            task_type="CAUSAL_LM"), callbacks=[Clock()])
trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
trainer.train()
print(json.dumps({"log": seen, "trainable": trainable}))
"""


def run_trl(model: Path, data: Path, steps: int, batch: int, warmup: int, out: Path) -> dict[str, Any]:
    cmd = [
        sys.executable,
        "-c",
        TRL_CHILD,
        str(model),
        str(data),
        str(steps),
        str(batch),
        str(MAX_LEN),
        str(LR),
        str(BETA),
        str(out),
    ]
    log = out.parent / f"{out.name}.stderr"
    code, stdout, maxrss, tree_peak = run_measured(cmd, log)
    if code:
        raise RuntimeError(f"TRL exited {code}: {log.read_text(errors='replace')[-3000:]}")
    res = json.loads(stdout.strip().splitlines()[-1])
    seen = res["log"]
    (t0, n0, _), (t1, n1, _) = seen[warmup - 1], seen[-1]
    return {
        "tokens_per_s": (n1 - n0) / (t1 - t0),
        "steps": len(seen),
        "tokens": n1,
        "maxrss": maxrss,
        "tree_peak": tree_peak,
        "loss_first": seen[0][2],
        "loss_last": seen[-1][2],
        "trainable": res["trainable"],
    }


def mib(n: float) -> str:
    return f"{n / 2**20:6.0f} MiB"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--batch", type=int, default=8, help="pairs per step (2x sequences)")
    ap.add_argument("--pairs", type=int, default=256)
    ap.add_argument("--warmup", type=int, default=2, help="first optimizer steps left out of tokens/s")
    args = ap.parse_args()
    if not 1 <= args.warmup < args.steps:
        ap.error("need 1 <= --warmup < --steps")
    import importlib.metadata as md

    versions = {n: md.version(n) for n in ("torch", "transformers", "peft", "trl")}
    print(
        f"# DPO (sigmoid, beta {BETA}) on CPU, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, "
        f"{args.steps} steps, batch {args.batch} pairs x <={MAX_LEN} tokens, LoRA r16/a32/d0 all-linear, "
        f"reference = adapters off, GC off, fp32; {versions}",
        flush=True,
    )
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        model, data = build(tmp, args.pairs)
        preset = lora_naive_dropout0(tmp / "preset")
        t = time.perf_counter()
        ours = run_coati(model, data, preset, args.steps, args.batch, args.warmup, tmp / "coati")
        t_ours = time.perf_counter() - t
        t = time.perf_counter()
        theirs = run_trl(model, data, args.steps, args.batch, args.warmup, tmp / "trl")
        t_theirs = time.perf_counter() - t
    for name, r, wall in (("coati-tui", ours, t_ours), ("TRL", theirs, t_theirs)):
        print(
            f"{name:9s}  tokens/s {r['tokens_per_s']:7.0f}  peak RSS {mib(r['maxrss'])} "
            f"(tree sum {mib(r['tree_peak'])})  {r['steps']} steps, {int(r['tokens'])} tokens, "
            f"trainable {r['trainable']:,}, loss {r['loss_first']:.4f} -> {r['loss_last']:.4f}  "
            f"({wall:.0f} s with start-up)"
        )
    ratio = ours["tokens_per_s"] / theirs["tokens_per_s"]
    mem = ours["maxrss"] / theirs["maxrss"]
    tree = ours["tree_peak"] / theirs["tree_peak"]
    print(
        f"ratio: tokens/s {ratio:.2f}x (goal >= 1.5x: {'met' if ratio >= 1.5 else 'NOT met'}); peak RSS "
        f"{mem:.2f}x, tree sum {tree:.2f}x (goal <= 1.0x: {'met' if mem <= 1.0 and tree <= 1.0 else 'NOT met'})"
    )
    print(
        f"measured: tokens/s = non-pad tokens (attention-mask sum, chosen + rejected rows) of steps "
        f"{args.warmup + 1}..{args.steps} / wall time from the end of step {args.warmup} to the end of step "
        f"{args.steps} (coati-tui step events; TRL num_tokens in on_log, logging_steps=1); peak RSS = ru_maxrss "
        f"of each child via os.wait4 (largest process of its tree; coati-tui's step events give "
        f"{mib(ours['cpu_rss_max']).strip()} for its trainer); tree sum sampled every 0.2 s; coati-tui reference: "
        f"{ours['reference']}, truncated pairs: {ours['truncated']}"
    )


if __name__ == "__main__":
    main()
