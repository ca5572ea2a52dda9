"""GRPO step time and memory, coati-tui's GRPO vs TRL's GRPOTrainer, same model, prompts, reward and LoRA, on CPU.

    OMP_NUM_THREADS=1 python bench/grpo_vs_trl.py            # needs `pip install trl` (the [bench] extra)

Goal (issue 17): coati-tui at >= 2x TRL's speed (seconds per GRPO step), at no more peak memory.

One run builds a tiny Llama with ``coati_tui.trainer.tiny.build_tiny_model`` (its byte-level BPE tokenizer
and chat template, vocab ~1k, hidden --hidden (256), --layers (4), random weights; the generation config
it writes is replaced by plain sampling with top_k 0, so that neither side inherits its temperature 0.7 /
top-p 0.9, and coati-tui's unset top_k (its "0 = off") is not filled with transformers' default of 50),
writes --prompts (64) bilingual prompts (English and Chinese words; ``{"prompt": "..."}`` records, which
TRL's child turns into conversational ``{"prompt": [{"role": "user", ...}]}`` rows, so both sides render
the same chat template with the generation prompt), and one reward file with TRL's signature
``fn(prompts, completions, **columns) -> list[float]`` (deterministic: answer length near a target, plus a
bonus for a given word) that both sides import. Each side trains in its own fresh child process, for
--steps (10) GRPO steps, with the same settings: G = --group (8) answers to each of N = --prompts-per-step
(4) prompts from one batched generate with a KV cache, answers of at most T = --max-new-tokens (32),
temperature 1.0 (no top-k, no top-p), group advantages scaled by the group's std, the per-answer token-mean
loss (coati-tui's loss_norm "sequence" = TRL's loss_type "grpo"), clip 0.2, beta 0.04 (k3 KL to the base
with the adapters off: no reference copy on either side), one pass over each rollout (coati-tui's
updates_per_rollout 1 = TRL's num_iterations 1), one optimizer step per rollout over all G x N answers in one
mini-batch (coati-tui --batch-size G*N; TRL per_device_train_batch_size G*N, accumulation 1, so its
generation batch is G*N too), learning rate 2e-4 constant, LoRA rank --lora-rank (16) / alpha 2 x rank /
dropout 0.05 on every linear layer (coati-tui's shipped lora_naive preset), gradient checkpointing off,
fp32, one thread (the command's OMP_NUM_THREADS=1, which both children inherit). coati-tui runs as a user
runs it (``coati-tui train grpo ... --json``); TRL as its docs show it (``GRPOTrainer(model, reward_funcs,
args=GRPOConfig(...), train_dataset, processing_class, peft_config)``), logging to nothing, saving nothing.

Measured, the same way on both sides:
- s/step: the wall time between the ends of consecutive GRPO steps, steps 2..N (step 1, with its
  allocations and lazy set-up, is left out), averaged (the median beside it). coati-tui: the ``time`` of its
  step events; TRL: ``time.time()`` in a ``TrainerCallback.on_step_end``.
- generate: the batched ``generate`` call alone, per step, same steps. coati-tui: its step events'
  ``rollout_s`` (the clock around its ``generate``); TRL: a clock around ``GRPOTrainer._generate_single_turn``
  (its ``unwrapped_model.generate`` and the cut at the first EOS). "rest" = s/step - generate: for both, the
  log-prob passes (coati-tui: actor and reference after the rollout; TRL: reference, and the old policy only
  when num_iterations > 1), rewards, advantages, forward/backward and the optimizer step.
- peak RSS: ``ru_maxrss`` of the child, from ``os.wait4`` in this process (the kernel's high-water mark of
  the largest process of the child's tree: for coati-tui that is its trainer process, which the CLI waits
  for); and, beside it, the peak of the whole tree's summed RSS, sampled every 0.2 s (coati-tui runs two
  processes, the CLI and the trainer).
- CPU user+sys: the child tree's CPU seconds over its whole run (start-up included), from the same
  ``os.wait4``: on a shared machine they say what the wall clock cannot (a high sys figure is page faults).

``--coati-env KEY=VALUE`` runs coati-tui's child with extra environment (e.g. the malloc setting that
``coati_tui/core/procenv.py`` adds by default, changed); the default run is coati-tui as it ships.
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
import threading
import time
from pathlib import Path
from typing import Any

from dpo_vs_trl import mib  # the same memory figures as the DPO comparison
from sft_vs_trl import WORDS_EN, WORDS_ZH  # the same bilingual vocabulary

LR = 2e-4
BETA = 0.04  # coati-tui's grpo.beta default
CLIP = 0.2
LORA_DROPOUT = 0.05  # presets/lora_naive.toml [lora] dropout

REWARD_PY = '''
"""Deterministic reward with TRL's signature: answer length near TARGET characters, + a bonus for WORDS."""
TARGET = 40
WORDS = ("reward", "奖励")


def _text(c):
    return c if isinstance(c, str) else c[-1]["content"]  # coati-tui: a string; TRL (conversational): messages


def length_and_word(prompts, completions, **columns):
    out = []
    for c in completions:
        t = _text(c)
        out.append(1.0 - min(1.0, abs(len(t) - TARGET) / TARGET) + (0.5 if any(w in t for w in WORDS) else 0.0))
    return out
'''


def build(folder: Path, n_prompts: int, hidden: int, layers: int, max_new: int) -> tuple[Path, Path, Path]:
    from transformers import GenerationConfig
    from transformers.utils import logging as hf_logging

    from coati_tui.trainer.tiny import build_tiny_model

    hf_logging.disable_progress_bar()
    model = build_tiny_model(folder / "model", layers=layers, hidden=hidden, heads=4, kv_heads=2)
    old = GenerationConfig.from_pretrained(model)
    GenerationConfig(  # plain sampling: each side sets its own temperature / top-k / top-p
        eos_token_id=old.eos_token_id,
        pad_token_id=old.pad_token_id,
        bos_token_id=old.bos_token_id,
        do_sample=True,
        top_k=0,  # else transformers 5 fills a sampler's unset top_k with its global default, 50
        max_new_tokens=max_new,
    ).save_pretrained(model)
    rng = random.Random(0)

    def text(n: int) -> str:
        return " ".join(
            rng.choice(WORDS_EN) if rng.random() < 0.6 else "".join(rng.choices(WORDS_ZH, k=3)) for _ in range(n)
        )

    prompts = folder / "prompts.jsonl"
    with prompts.open("w", encoding="utf-8") as f:
        for _ in range(n_prompts):
            f.write(json.dumps({"prompt": text(rng.randint(4, 24))}, ensure_ascii=False) + "\n")
    reward = folder / "reward.py"
    reward.write_text(REWARD_PY, encoding="utf-8")
    return model, prompts, reward


def run_measured(cmd: list[str], log: Path, env: dict[str, str] | None = None) -> tuple[int, str, dict[str, float]]:
    """(exit status, stdout, figures): bench/dpo_vs_trl.py's runner, also keeping the child tree's CPU seconds
    (user, sys: ``os.wait4``'s rusage of the child and its waited-for descendants)."""
    import psutil

    with open(log, "wb") as err, tempfile.TemporaryFile() as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env)
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
        figures = {
            "maxrss": usage.ru_maxrss * 1024,
            "tree_peak": peak[0],
            "user_s": usage.ru_utime,
            "sys_s": usage.ru_stime,
        }
        return proc.returncode, out.read().decode("utf-8"), figures


def timing(ends: list[float], gen: list[float]) -> dict[str, Any]:
    """ends: wall clock at the end of steps 1..N; gen: generate seconds of steps 1..N. Steps 2..N count."""
    per = [b - a for a, b in zip(ends, ends[1:])]
    g = gen[1:]
    return {
        "s_per_step": statistics.fmean(per),
        "s_median": statistics.median(per),
        "gen_s": statistics.fmean(g),
        "rest_s": statistics.fmean(per) - statistics.fmean(g),
        "timed": len(per),
    }


def run_coati(a: argparse.Namespace, model: Path, prompts: Path, reward: Path, out: Path) -> dict[str, Any]:
    cmd = [
        sys.executable,
        "-m",
        "coati_tui",
        "train",
        "grpo",
        "--model",
        str(model),
        "--prompts",
        str(prompts),
        "--reward-fn",
        f"{reward}:length_and_word",
        "--group-size",
        str(a.group),
        "--prompts-per-step",
        str(a.prompts_per_step),
        "--max-new-tokens",
        str(a.max_new_tokens),
        "--batch-size",
        str(a.group * a.prompts_per_step),
        "--lora-rank",
        str(a.lora_rank),
        "--preset",
        "lora_naive",
        "--no-grad-checkpointing",
        "--temperature",
        "1.0",
        "--lr",
        str(LR),
        "--max-steps",
        str(a.steps),
        "--eval-split",
        "0",
        "--save-interval",
        "0",
        "--out",
        str(out),
        "--json",
    ]
    env = dict(os.environ, **dict(kv.split("=", 1) for kv in a.coati_env)) if a.coati_env else None
    code, stdout, fig = run_measured(cmd, out.parent / f"{out.name}.stderr", env)
    evs = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
    if code:
        errs = [e for e in evs if e["type"] == "error"]
        raise RuntimeError(f"coati-tui exited {code}: {errs[-1] if errs else stdout[-3000:]}")
    start = next(e for e in evs if e["type"] == "start")
    steps = [e for e in evs if e["type"] == "step"]

    def metric(e: dict[str, Any], k: str) -> float:
        return float(e.get(k, e.get("metrics", {}).get(k, e.get("scalars", {}).get(k, float("nan")))))

    return {
        **timing([e["time"] for e in steps], [metric(e, "rollout_s") for e in steps]),
        "steps": len(steps),
        **fig,
        "answer_len": statistics.fmean(metric(e, "response_len") for e in steps),
        "reward_first": metric(steps[0], "reward_mean"),
        "reward_last": metric(steps[-1], "reward_mean"),
        "trainable": start.get("trainable_params"),
    }


TRL_CHILD = r"""
import importlib.util, json, sys, time
from datasets import Dataset
from peft import LoraConfig
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
from trl import GRPOConfig, GRPOTrainer
model_dir, prompts, reward, G, N, T, rank, steps, lr, beta, clip, dropout, out = sys.argv[1:14]
G, N, T, rank, steps = int(G), int(N), int(T), int(rank), int(steps)
spec = importlib.util.spec_from_file_location("bench_reward", reward)
mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
rows = [{"prompt": [{"role": "user", "content": json.loads(l)["prompt"]}]} for l in open(prompts, encoding="utf-8")]
ends, begins, gen, logs = [], [], [], []
class Clock(TrainerCallback):
    def on_step_begin(self, args, state, control, **kw):
        begins.append(time.time())
    def on_step_end(self, args, state, control, **kw):
        ends.append(time.time()); gen.append(0.0)
    def on_log(self, args, state, control, logs=None, **kw):
        if logs:
            logs_ = {k: v for k, v in logs.items() if isinstance(v, (int, float))}
            globals()["logs"].append(logs_)
args = GRPOConfig(output_dir=out, num_generations=G, per_device_train_batch_size=G * N, gradient_accumulation_steps=1,
                  max_completion_length=T, temperature=1.0, top_p=1.0, top_k=0, beta=float(beta), loss_type="grpo",
                  epsilon=float(clip), num_iterations=1, scale_rewards="group", learning_rate=float(lr),
                  lr_scheduler_type="constant", max_steps=steps, gradient_checkpointing=False, use_cpu=True,
                  bf16=False, fp16=False, report_to=[], logging_steps=1, save_strategy="no", disable_tqdm=True,
                  dataloader_num_workers=0, log_completions=False)
trainer = GRPOTrainer(model=AutoModelForCausalLM.from_pretrained(model_dir), reward_funcs=mod.length_and_word,
                      args=args, train_dataset=Dataset.from_list(rows),
                      processing_class=AutoTokenizer.from_pretrained(model_dir),
                      peft_config=LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=float(dropout),
                                             target_modules="all-linear", task_type="CAUSAL_LM"),
                      callbacks=[Clock()])
inner = trainer._generate_single_turn
def timed(*a, **k):
    t = time.perf_counter()
    try:
        return inner(*a, **k)
    finally:
        pending.append(time.perf_counter() - t)
pending = []
trainer._generate_single_turn = timed
class GenClock(TrainerCallback):
    def on_step_end(self, args, state, control, **kw):
        gen[-1] = sum(pending); pending.clear()
trainer.add_callback(GenClock())
trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
trainer.train()
print(json.dumps({"ends": ends, "begins": begins, "gen": gen, "logs": logs, "trainable": trainable}))
"""


def run_trl(a: argparse.Namespace, model: Path, prompts: Path, reward: Path, out: Path) -> dict[str, Any]:
    cmd = [
        sys.executable,
        "-c",
        TRL_CHILD,
        str(model),
        str(prompts),
        str(reward),
        str(a.group),
        str(a.prompts_per_step),
        str(a.max_new_tokens),
        str(a.lora_rank),
        str(a.steps),
        str(LR),
        str(BETA),
        str(CLIP),
        str(LORA_DROPOUT),
        str(out),
    ]
    log = out.parent / f"{out.name}.stderr"
    code, stdout, fig = run_measured(cmd, log)
    if code:
        raise RuntimeError(f"TRL exited {code}: {log.read_text(errors='replace')[-3000:]}")
    res = json.loads(stdout.strip().splitlines()[-1])
    logs = [x for x in res["logs"] if "reward" in x]
    return {
        **timing(res["ends"], res["gen"]),
        "steps": len(res["ends"]),
        **fig,
        "answer_len": statistics.fmean(x.get("completions/mean_length", float("nan")) for x in logs),
        "reward_first": logs[0]["reward"] if logs else float("nan"),
        "reward_last": logs[-1]["reward"] if logs else float("nan"),
        "trainable": res["trainable"],
        "in_step_s": statistics.fmean(e - b for b, e in zip(res["begins"][1:], res["ends"][1:])),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=10, help="GRPO steps per side (the first is left out)")
    ap.add_argument("--group", type=int, default=8, help="G: answers per prompt")
    ap.add_argument("--prompts-per-step", type=int, default=4, help="N: prompts per step")
    ap.add_argument("--max-new-tokens", type=int, default=32, help="T: longest answer")
    ap.add_argument("--lora-rank", type=int, default=16, help="LoRA rank (alpha = 2 x rank, as lora_naive's 32/16)")
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument(
        "--coati-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra environment for coati-tui's child only (e.g. MALLOC_MMAP_THRESHOLD_=33554432; the user's wins "
        "over coati_tui/core/procenv.py's); default: none, coati-tui as it ships",
    )
    ap.add_argument("--skip-trl", action="store_true", help="coati-tui's figures only")
    a = ap.parse_args()
    if a.steps < 3:
        ap.error("need --steps >= 3")
    import importlib.metadata as md

    versions = {n: md.version(n) for n in ("torch", "transformers", "peft", "trl")}
    print(
        f"# GRPO on CPU, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, {a.steps} steps, "
        f"G={a.group} x N={a.prompts_per_step} prompts = {a.group * a.prompts_per_step} answers of <= "
        f"{a.max_new_tokens} tokens per step, one mini-batch / optimizer step per rollout, beta {BETA}, "
        f"loss per-answer token mean, LoRA r{a.lora_rank}/a{2 * a.lora_rank}/d{LORA_DROPOUT} all-linear, "
        f"reference = adapters off, tiny Llama hidden {a.hidden} x {a.layers} layers, GC off, fp32; {versions}",
        flush=True,
    )
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        model, prompts, reward = build(tmp, a.prompts, a.hidden, a.layers, a.max_new_tokens)
        t = time.perf_counter()
        ours = run_coati(a, model, prompts, reward, tmp / "coati")
        walls = {"coati-tui": time.perf_counter() - t}
        theirs, trl_error = None, None
        if not a.skip_trl:
            t = time.perf_counter()
            try:
                theirs = run_trl(a, model, prompts, reward, tmp / "trl")
            except Exception as e:  # report and still print coati-tui's figures
                trl_error = f"{type(e).__name__}: {e}"
            walls["TRL"] = time.perf_counter() - t
    rows = [("coati-tui", ours)] + ([("TRL", theirs)] if theirs else [])
    print(
        f"{'':9s}  {'s/step':>7s} {'(median)':>8s}  {'generate':>8s}  {'rest':>6s}  {'peak RSS':>10s}  "
        f"{'tree sum':>10s}  {'CPU user+sys':>14s}  answer len  trainable  reward first -> last"
    )
    for name, r in rows:
        print(
            f"{name:9s}  {r['s_per_step']:7.3f} {r['s_median']:8.3f}  {r['gen_s']:8.3f}  {r['rest_s']:6.3f}  "
            f"{mib(r['maxrss'])}  {mib(r['tree_peak'])}  {r['user_s']:6.0f}+{r['sys_s']:<4.0f} s  "
            f"{r['answer_len']:10.1f}  {r['trainable']:9,}  "
            f"{r['reward_first']:.3f} -> {r['reward_last']:.3f}   ({r['steps']} steps, "
            f"{walls[name]:.0f} s with start-up)"
        )
    if trl_error:
        print(f"TRL's GRPOTrainer did not run here: {trl_error[-1500:]}")
        print("ratio: not measured (no TRL figure); coati-tui's figures above stand alone")
    elif theirs:
        speed = theirs["s_per_step"] / ours["s_per_step"]
        mem = ours["maxrss"] / theirs["maxrss"]
        tree = ours["tree_peak"] / theirs["tree_peak"]
        print(
            f"ratio: speed (TRL s/step / coati-tui s/step) {speed:.2f}x (goal >= 2x: "
            f"{'met' if speed >= 2 else 'NOT met'}); generate {theirs['gen_s'] / ours['gen_s']:.2f}x, rest "
            f"{theirs['rest_s'] / ours['rest_s']:.2f}x; peak RSS {mem:.2f}x, tree sum {tree:.2f}x (goal <= 1.0x: "
            f"{'met' if mem <= 1.0 and tree <= 1.0 else 'NOT met'})"
        )
    in_step = f", whose on_step_begin..on_step_end alone is {theirs['in_step_s']:.3f} s" if theirs else ""
    print(
        f"measured: s/step = mean wall time between the ends of consecutive steps, steps 2..{a.steps} (coati-tui: "
        f"step events' time; TRL: on_step_end{in_step}); "
        f"generate = the batched generate call per step (coati-tui: step events' rollout_s; TRL: a clock around "
        f"GRPOTrainer._generate_single_turn); rest = s/step - generate; peak RSS = ru_maxrss of each child via "
        f"os.wait4 (largest process of its tree); tree sum sampled every 0.2 s; CPU user+sys = the child tree's whole "
        f"run, start-up included (os.wait4)"
        + (f"; coati-tui's child ran with {' '.join(a.coati_env)}" if a.coati_env else "")
    )


if __name__ == "__main__":
    main()
