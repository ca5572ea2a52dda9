"""PPO peak memory: coati-tui's memory-lean layout vs four separate models (ColossalChat's layout), on CPU.

    OMP_NUM_THREADS=1 python bench/ppo_memory.py [--hidden 1024 --layers 12]

Builds a ~200M-parameter Llama from a config (vocab 32000, random weights) and a reward model trained
"from it" (a LoRA SEQ_CLS adapter + merged weights, as `coati-tui train rm` writes). Each side runs in a
fresh process (with the trainer children's malloc settings, so RSS tracks live tensors) and does the same
work: one rollout of 8 prompts x 32 new tokens, then one PPO update of actor and critic on it, fp32.
- lean: `coati-tui train ppo` itself (python -m coati_tui.train on a run folder), one PPO step;
- four models: actor (base + LoRA), critic (base + LoRA + value head), reference (a full copy) and
  reward model (full), each its own weights, generate + score + one update each.
The figure is the peak RSS (ru_maxrss) minus the RSS after importing torch/transformers/peft: what the
models and the step cost. fp32 weights loaded from safetensors on CPU stay file-backed (mapped), so the
anonymous part (sampled every 2 ms from /proc/self/status) is printed too: it is the step's own memory
(activations, logits, adapters, optimizer states), similar on both sides. Goal: lean <= 0.4x four models.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

ROLLOUT, NEW = 8, 32


def build(folder: Path, hidden: int, layers: int) -> tuple[Path, Path, Path]:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

    from coati_tui.trainer.tiny import train_tokenizer

    tok = train_tokenizer()
    cfg = LlamaConfig(
        vocab_size=32000,
        hidden_size=hidden,
        intermediate_size=hidden * 11 // 4,
        num_hidden_layers=layers,
        num_attention_heads=16,
        num_key_value_heads=8,
        max_position_embeddings=1024,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
    )
    torch.manual_seed(0)
    base = folder / "base"
    LlamaForCausalLM(cfg).save_pretrained(base)
    tok.save_pretrained(base)
    rm = LlamaForSequenceClassification.from_pretrained(base, num_labels=1)
    rm = get_peft_model(rm, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="SEQ_CLS"))
    reward = folder / "reward"
    rm.save_pretrained(reward / "adapter")
    rm.merge_and_unload().save_pretrained(reward)
    tok.save_pretrained(reward)
    (reward / "coati.json").write_text(json.dumps({"stage": "rm", "base": str(base)}))
    prompts = folder / "prompts.jsonl"
    qs = ["Please answer briefly.", "请用中文回答下面的问题。", "What is the capital of France?", "你好，世界！"]
    prompts.write_text("".join(json.dumps({"prompt": q}, ensure_ascii=False) + "\n" for q in qs * 4), encoding="utf-8")
    return base, reward, prompts


def _rss() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def _anon() -> int:
    """Anonymous resident memory (tensors, Python objects); file-backed pages, e.g. a safetensors file
    mapped while loading, are page cache the kernel can drop, so they are left out."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no RssAnon in /proc/self/status (Linux only)")


class PeakSampler:
    """The largest RssAnon seen, sampled every 2 ms from a thread (torch releases the GIL in its ops)."""

    def __init__(self):
        import threading

        self.peak, self.stop = _anon(), False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        import time

        while not self.stop:
            self.peak = max(self.peak, _anon())
            time.sleep(0.002)

    def done(self) -> int:
        self.stop = True
        self.thread.join()
        return max(self.peak, _anon())


def lean(base: str, reward: str, prompts: str, run_dir: str) -> dict:
    import peft  # noqa: F401  (imports counted in the baseline on both sides)
    import torch  # noqa: F401
    import transformers  # noqa: F401

    from coati_tui.host.build import build

    baseline, baseline_rss = _anon(), _rss()
    sampler = PeakSampler()
    cfg = build(
        "ppo",
        base,
        prompts,
        "lora_naive",
        {
            "train.grad_checkpointing": False,
            "train.batch_size": ROLLOUT,
            "ppo.rollout_batch": ROLLOUT,
            "ppo.ppo_epochs": 1,
            "ppo.max_new_tokens": NEW,
            "ppo.ptx_coef": 0.0,
            "ppo.sample_every": 0,
        },
        reward=reward,
        max_steps=1,
        eval_split=0.0,
        save_interval=0,
    )
    Path(run_dir).mkdir(parents=True)
    cfg.write(Path(run_dir))
    from coati_tui.trainer.ppo import recipe as ppo

    with open(os.devnull, "w") as sink:
        stdout, sys.stdout = sys.stdout, sink
        try:
            ppo.main(run_dir)
        finally:
            sys.stdout = stdout
    shared = '"shared_reward": true' in (Path(run_dir) / "events.jsonl").read_text()
    return {
        "baseline": baseline,
        "peak": sampler.done(),
        "maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "baseline_rss": baseline_rss,
        "shared_reward": shared,
    }


def four(base: str, reward: str, prompts: str) -> dict:
    import torch
    import transformers  # noqa: F401
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModel, AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    baseline, baseline_rss = _anon(), _rss()
    sampler = PeakSampler()
    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(base)
    lora = dict(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear")
    actor = get_peft_model(AutoModelForCausalLM.from_pretrained(base), LoraConfig(**lora, task_type="CAUSAL_LM"))
    critic = get_peft_model(AutoModel.from_pretrained(base), LoraConfig(**lora))
    value_head = torch.nn.Linear(critic.config.hidden_size, 1)
    ref = AutoModelForCausalLM.from_pretrained(base).requires_grad_(False).eval()
    rm = AutoModelForSequenceClassification.from_pretrained(reward).requires_grad_(False).eval()
    qs = [json.loads(line)["prompt"] for line in Path(prompts).read_text(encoding="utf-8").splitlines()][:ROLLOUT]
    tok.padding_side = "left"
    enc = tok(
        [
            tok.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
            for q in qs
        ],
        return_tensors="pt",
        padding=True,
        add_special_tokens=False,
    )
    P = enc["input_ids"].shape[1]
    actor.eval()
    with torch.no_grad():
        out = actor.generate(
            **enc, do_sample=True, max_new_tokens=NEW, min_new_tokens=NEW, pad_token_id=tok.pad_token_id
        )
        mask = torch.cat([enc["attention_mask"], torch.ones_like(out[:, P:])], 1)
        old = torch.log_softmax(actor(input_ids=out, attention_mask=mask).logits[:, P - 1 : -1], -1)
        ref_lp = torch.log_softmax(ref(input_ids=out, attention_mask=mask).logits[:, P - 1 : -1], -1)
        score = rm(input_ids=out, attention_mask=mask).logits.squeeze(-1)
        values = value_head(critic(input_ids=out, attention_mask=mask).last_hidden_state[:, P - 1 : -1]).squeeze(-1)
        del old, ref_lp
    actor.train()
    resp = out[:, P:]
    logp = torch.log_softmax(actor(input_ids=out, attention_mask=mask).logits[:, P - 1 : -1], -1)
    logp = logp.gather(-1, resp.unsqueeze(-1)).squeeze(-1)
    (-(logp * score.unsqueeze(-1)).mean()).backward()
    torch.optim.AdamW([p for p in actor.parameters() if p.requires_grad]).step()
    v = value_head(critic(input_ids=out, attention_mask=mask).last_hidden_state[:, P - 1 : -1]).squeeze(-1)
    ((v - values - score.unsqueeze(-1)) ** 2).mean().backward()
    torch.optim.AdamW([p for p in critic.parameters() if p.requires_grad] + list(value_head.parameters())).step()
    return {
        "baseline": baseline,
        "peak": sampler.done(),
        "maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "baseline_rss": baseline_rss,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--measure", choices=("lean", "four"), help=argparse.SUPPRESS)
    ap.add_argument("--paths", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.measure:
        base, reward, prompts, run_dir = args.paths
        result = lean(base, reward, prompts, run_dir) if args.measure == "lean" else four(base, reward, prompts)
        print(json.dumps(result))
        return

    from coati_tui.core.procenv import child_env

    with tempfile.TemporaryDirectory() as tmp:
        base, reward, prompts = build(Path(tmp), args.hidden, args.layers)
        cfg = json.loads((base / "config.json").read_text())
        res = {}
        for side in ("lean", "four"):
            proc = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--measure",
                    side,
                    "--paths",
                    str(base),
                    str(reward),
                    str(prompts),
                    str(Path(tmp) / f"run-{side}"),
                ],
                capture_output=True,
                text=True,
                env=child_env(),
            )
            if proc.returncode:
                sys.exit(f"{side} failed:\n{proc.stderr[-3000:]}")
            res[side] = json.loads(proc.stdout.strip().splitlines()[-1])
        from coati_tui.core.modelinfo import Arch

        n_params = Arch.from_config(cfg).param_count("lm")
    mib = 1024**2
    print(
        f"model: Llama {n_params / 1e6:.0f}M params (hidden {args.hidden}, {args.layers} layers, vocab 32000), "
        f"fp32 on CPU = {n_params * 4 / mib:.0f} MiB of weights per copy; rollout {ROLLOUT} x {NEW} new tokens, "
        "one update"
    )
    for side, label in (("lean", "coati-tui lean (train ppo)"), ("four", "four separate models")):
        r = res[side]
        print(
            f"{label:28s}: peak RSS {r['maxrss'] / mib:6.0f} MiB (after imports {r['baseline_rss'] / mib:4.0f}), "
            f"models + step {(r['maxrss'] - r['baseline_rss']) / mib:6.0f} MiB; of it anonymous (not weights "
            f"mapped from files) {(r['peak'] - r['baseline']) / mib:5.0f} MiB"
        )
    lean_, four_ = res["lean"], res["four"]
    ratio = (lean_["maxrss"] - lean_["baseline_rss"]) / (four_["maxrss"] - four_["baseline_rss"])
    print(f"reward model shared on the actor's base: {lean_['shared_reward']}")
    print(
        f"lean / four, models + step: {ratio:.2f}x (goal <= 0.4x); whole peak RSS: "
        f"{lean_['maxrss'] / four_['maxrss']:.2f}x"
    )


if __name__ == "__main__":
    main()
