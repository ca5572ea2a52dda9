"""Generation footprint and decode speed per precision, through the generation worker's own loader.

    OMP_NUM_THREADS=1 python bench/quant_footprint.py [--hidden 768 --layers 12 --new 64]

Builds a ~110M-parameter Llama from a config (vocab 32000, random weights; widths multiples of 64, which
bitsandbytes' CPU kernels need) with the tiny trained tokenizer, then for each of fp32, bf16, int8
(bitsandbytes LLM.int8) and nf4 (bitsandbytes, double quant) in a fresh process: `generate.worker.load`,
the model's parameter + buffer bytes, the process's peak RSS, and decode tokens/s for one prompt, greedy,
--new tokens forced (best of 2). Where gptqmodel is installed (`pip install 'coati-tui[gptq]'`), a GPTQ
row too: `coati-tui quantize --bits 4 --group-size 128` on 32 bilingual calibration conversations (its
time is printed), then the same measurement of the checkpoint it wrote. On a GPU the same command
measures CUDA.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODES = (("fp32", "none", "fp32"), ("bf16", "none", "bf16"), ("int8", "8bit", "auto"), ("nf4", "4bit", "auto"))


def measure(model: str, quant: str, dtype: str, new: int) -> dict:
    import torch
    from transformers import GenerationConfig

    from coati_tui.data.tokenize import render
    from coati_tui.worker.generate import load

    m, tok, info = load(model, quant, dtype)
    text = render(tok, [{"role": "user", "content": "请列出三种水果。 List three fruits, please."}], True)
    enc = tok(text, return_tensors="pt", add_special_tokens=False).to(info["device"])
    gen = GenerationConfig(max_new_tokens=new, min_new_tokens=new, do_sample=False, pad_token_id=tok.pad_token_id)
    best = float("inf")
    for _ in range(2):
        t0 = time.perf_counter()
        with torch.no_grad():
            out = m.generate(**enc, generation_config=gen)
        best = min(best, time.perf_counter() - t0)
    assert out.shape[1] - enc["input_ids"].shape[1] == new
    return {
        "memory_bytes": info["memory_bytes"],
        "dtype": info["dtype"],
        "device": info["device"],
        "tokens_per_s": new / best,
        "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hidden", type=int, default=768)
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--new", type=int, default=64)
    ap.add_argument("--measure", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.measure:
        print(json.dumps(measure(*args.measure[:3], args.new)))
        return
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from coati_tui.core.procenv import child_env
    from coati_tui.trainer.tiny import train_tokenizer

    with tempfile.TemporaryDirectory() as tmp:
        tok = train_tokenizer()
        cfg = LlamaConfig(
            vocab_size=32000,
            hidden_size=args.hidden,
            intermediate_size=args.hidden * 8 // 3 // 64 * 64,
            num_hidden_layers=args.layers,
            num_attention_heads=12,
            num_key_value_heads=4,
            max_position_embeddings=1024,
            pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id,
        )
        torch.manual_seed(0)
        model = LlamaForCausalLM(cfg)
        n = sum(p.numel() for p in model.parameters())
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        del model
        print(
            f"model: Llama {n / 1e6:.0f}M params (hidden {args.hidden}, {args.layers} layers, vocab 32000); "
            f"one prompt, {args.new} new tokens greedy, best of 2; torch threads {torch.get_num_threads()}"
        )
        modes = list(MODES)
        import importlib.util

        if importlib.util.find_spec("gptqmodel"):
            calib = Path(tmp) / "calib.jsonl"
            rows = [
                {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
                for q, a in (
                    ("List three fruits.", "Apple, pear and fig."),
                    ("请列出三种水果。", "苹果、香蕉、橙子。"),
                    ("What is 2 + 3?", "2 + 3 = 5."),
                    ("北京是哪个国家的首都？", "北京是中国的首都。"),
                )
            ] * 8
            calib.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
            t0 = time.perf_counter()
            q = subprocess.run(
                [sys.executable, "-m", "coati_tui", "quantize", tmp, "--calib", str(calib), "--out", tmp + "/gptq"],
                capture_output=True,
                text=True,
                env=child_env(),
            )
            if q.returncode:
                print(f"gptq : quantize failed: {q.stderr.strip().splitlines()[-1][:160]}")
            else:
                print(
                    f"gptq : `coati-tui quantize --bits 4 --group-size 128` took {time.perf_counter() - t0:.0f} s "
                    f"(32 calibration conversations, {torch.get_num_threads()} torch threads)"
                )
                modes.append(("gptq", "none", "auto"))
        for name, quant, dtype in modes:
            folder = tmp + "/gptq" if name == "gptq" else tmp
            proc = subprocess.run(
                [sys.executable, __file__, "--new", str(args.new), "--measure", folder, quant, dtype],
                capture_output=True,
                text=True,
                env=child_env(),
            )
            if proc.returncode:
                print(f"{name:5s}: failed: {proc.stderr.strip().splitlines()[-1][:160]}")
                continue
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            print(
                f"{name:5s}: weights {r['memory_bytes'] / 2**20:7.1f} MiB  peak RSS {r['peak_rss'] / 2**20:7.0f} MiB  "
                f"decode {r['tokens_per_s']:6.1f} tok/s  ({r['device']}, compute {r['dtype']})"
            )


if __name__ == "__main__":
    main()
