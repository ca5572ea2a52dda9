"""PPO rollout speed: coati-tui's rollout generation vs a plain token-by-token loop without a KV cache.

    OMP_NUM_THREADS=1 python bench/ppo_rollout.py [--batch 16] [--new 64] [--hidden 512 --layers 4]

Same model object (a ~45M Llama built from a config: vocab 32000, hidden 512, 4 layers, random weights,
with the PPO actor's LoRA adapter active), same left-padded bilingual prompts (16 x 12-40 tokens), same
sampling (temperature 1, every answer forced to --new tokens so both sides generate the same count).
- coati-tui: ``ppo.Lean.generate`` = batched ``generate`` with a KV cache (what a PPO rollout runs);
- naive: each new token re-runs the whole sequence through the decoder (no cache), as a hand-written
  rollout loop does; to isolate the cache, it takes the LM head at the last position only.
The figure is generated tokens per second (batch x new tokens / wall time), best of --repeat runs.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--new", type=int, default=64)
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from coati_tui.core import presets
    from coati_tui.data.tokenize import render
    from coati_tui.trainer.ppo import lean, rollout
    from coati_tui.trainer.tiny import train_tokenizer

    torch.manual_seed(0)
    tok = train_tokenizer()
    cfg = LlamaConfig(
        vocab_size=32000,
        hidden_size=args.hidden,
        intermediate_size=args.hidden * 11 // 4,
        num_hidden_layers=args.layers,
        num_attention_heads=8,
        num_key_value_heads=4,
        max_position_embeddings=1024,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
    )
    with tempfile.TemporaryDirectory() as tmp:
        LlamaForCausalLM(cfg).save_pretrained(tmp)
        tok.save_pretrained(tmp)
        from coati_tui.trainer.models import load_model

        preset = presets.load("lora_naive").with_overrides({"train.grad_checkpointing": False})
        base = load_model(tmp, preset, "sft", "cpu", adapters=False).model
    n_params = sum(p.numel() for p in base.parameters())

    # a stand-in reward model is not timed here; Lean needs one, so give it the base's own folder path
    models = lean.Lean.__new__(lean.Lean)
    from peft import LoraConfig, get_peft_model

    from coati_tui.trainer.strategy import linear_targets

    models.model = get_peft_model(
        base,
        LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules=linear_targets(base, "all-linear")),
        adapter_name="actor",
    )
    models.inner = models.model.get_base_model()
    models.model.eval()

    rng = random.Random(0)
    words = [
        "the",
        "reward",
        "model",
        "scores",
        "answers",
        "奖励模型给回答打分",
        "策略学习写出更好的回答",
        "please",
        "answer",
    ]
    prompts = [
        tok(
            render(tok, [{"role": "user", "content": " ".join(rng.choices(words, k=rng.randint(3, 12)))}], True),
            add_special_tokens=False,
        )["input_ids"]
        for _ in range(args.batch)
    ]
    width = max(map(len, prompts))
    ids = torch.tensor([[tok.pad_token_id] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    pp = preset.ppo
    pp.max_new_tokens, pp.temperature = args.new, 1.0
    gen = rollout.generation_config(pp, [], tok.pad_token_id)
    gen.eos_token_id = None
    gen.min_new_tokens = args.new  # every answer runs the full length on both sides

    def cached():
        with torch.no_grad():
            out = models.generate(ids, mask, gen)
        assert out.shape[1] == width + args.new

    def naive():
        seq, m = ids.clone(), mask.clone()
        with torch.no_grad():
            for _ in range(args.new):
                pos = (m.cumsum(-1) - 1).clamp(min=0)
                hidden = models.inner.get_decoder()(input_ids=seq, attention_mask=m, position_ids=pos).last_hidden_state
                logits = models.inner.get_output_embeddings()(hidden[:, -1]).float()  # last position only
                nxt = torch.multinomial(torch.softmax(logits, -1), 1)
                seq = torch.cat([seq, nxt], 1)
                m = torch.cat([m, torch.ones_like(nxt)], 1)
        assert seq.shape[1] == width + args.new

    def best(fn):
        times = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return min(times)

    tokens = args.batch * args.new
    t_cached, t_naive = best(cached), best(naive)
    print(
        f"model: Llama {n_params / 1e6:.0f}M params (hidden {args.hidden}, {args.layers} layers), fp32, CPU, "
        f"torch threads {torch.get_num_threads()}; batch {args.batch}, prompts {min(map(len, prompts))}-{width} "
        f"tokens, {args.new} new tokens each, best of {args.repeat}"
    )
    print(f"coati-tui rollout (generate, KV cache): {tokens / t_cached:8.1f} tokens/s  ({t_cached:.2f} s)")
    print(f"naive loop (no KV cache)             : {tokens / t_naive:8.1f} tokens/s  ({t_naive:.2f} s)")
    print(f"speed-up: {t_naive / t_cached:.2f}x (goal >= 3x)")


if __name__ == "__main__":
    main()
