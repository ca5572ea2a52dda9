"""Planner accuracy: predicted vs measured peak memory of the plain-PyTorch presets.

    OMP_NUM_THREADS=1 python bench/planner_accuracy.py            # CPU: ~60M Llama, a few steps
    python bench/planner_accuracy.py --device cuda --arch qwen2.5-0.5b   # on a GPU

Each case runs in a fresh child process with the trainer's environment (coati_tui.procenv): build a Llama
from a config (random weights, saved once),
load it through ``coati_tui.trainer.models.load_model`` exactly as the trainer does, run a few
optimizer steps at the preset's settings, and measure the peak:
- on CPU: peak RSS (``ru_maxrss``) minus the RSS after imports and before the model is loaded,
  compared with the planner's RAM estimate minus its ``runtime`` line (the imports);
- on CUDA: ``torch.cuda.max_memory_allocated``, compared with the planner's GPU estimate.
Prints one row per preset x stage with the error, and the median absolute error.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from coati_tui.core.procenv import child_env

ARCHES = {
    # ~60M parameters: small enough for 2 CPU cores, big enough that the model, not Python, dominates
    "llama-60m": dict(
        model_type="llama",
        vocab_size=32000,
        hidden_size=512,
        intermediate_size=1408,
        num_hidden_layers=8,
        num_attention_heads=8,
        num_key_value_heads=4,
        max_position_embeddings=2048,
        tie_word_embeddings=False,
    ),
    "qwen2.5-0.5b": dict(
        model_type="qwen2",
        vocab_size=151936,
        hidden_size=896,
        intermediate_size=4864,
        num_hidden_layers=24,
        num_attention_heads=14,
        num_key_value_heads=2,
        max_position_embeddings=32768,
        tie_word_embeddings=True,
    ),
}


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def build(arch: str, out: Path) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from coati_tui.trainer.tiny import train_tokenizer

    cfg = dict(ARCHES[arch])
    model_type = cfg.pop("model_type")
    config = AutoConfig.for_model(model_type, **cfg)
    tok = train_tokenizer()
    config.pad_token_id = tok.pad_token_id  # the reward model finds the last non-pad token with it
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(out)
    tok.save_pretrained(out)


def child(model_dir: str, preset_name: str, stage: str, batch: int, seq: int, steps: int, device: str) -> dict:
    import peft  # noqa: F401  everything the trainer imports, before the baseline is taken
    import torch
    import transformers  # noqa: F401
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification  # noqa: F401

    from coati_tui.core import presets
    from coati_tui.trainer.malloc import PHASES, describe
    from coati_tui.trainer.models import load_model

    torch.manual_seed(0)
    preset = presets.load(preset_name).with_overrides({"train.batch_size": batch, "train.max_len": seq})
    base_rss = rss_bytes()
    prepared = load_model(model_dir, preset, stage, device)
    model = prepared.model
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    vocab = model.config.vocab_size
    rows = 2 * batch if stage == "rm" else batch
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(steps):
        ids = torch.randint(8, vocab, (rows, seq), device=device)
        mask = torch.ones_like(ids)
        if stage == "rm":
            scores = model(input_ids=ids, attention_mask=mask).logits.squeeze(-1)
            loss = -torch.nn.functional.logsigmoid(scores[:batch] - scores[batch:]).mean()
        else:
            loss = model(input_ids=ids, attention_mask=mask, labels=ids).loss
        with PHASES.backward():  # as the trainer's strategies do (a no-op but under glibc's fallback)
            loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    step_s = (time.perf_counter() - t0) / steps
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base_rss
    if device == "cuda":
        peak = torch.cuda.max_memory_allocated()
    return {"measured": peak, "step_s": step_s, "precision": prepared.dtype_name, "allocator": describe()}


def predicted(model_dir: str, preset_name: str, stage: str, batch: int, seq: int, device: str) -> int:
    from coati_tui.core import modelinfo, planner, presets

    arch = modelinfo.Arch.from_config(modelinfo.read_config(model_dir))
    dev, host, _, _ = planner.estimate(arch, presets.load(preset_name), stage, batch, seq, device)
    if device == "cuda":
        return sum(dev.values())
    return sum(host.values()) - host["runtime"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="llama-60m", choices=sorted(ARCHES))
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--presets", default="lora_naive,qlora_naive")
    ap.add_argument("--stages", default="sft,rm")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--gc", default="on,off", help="grad checkpointing settings to measure")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.child:
        spec = json.loads(args.child)
        if spec.pop("gc") is False:
            # a preset copy with checkpointing off, written where presets.load can read it
            from coati_tui.core import presets

            p = presets.load(spec["preset_name"])
            path = Path(spec["tmp"]) / f"{p.name}_nogc.toml"
            text = Path(p.path).read_text().replace("grad_checkpointing = true", "grad_checkpointing = false")
            path.write_text(text)
            spec["preset_name"] = str(path)
        spec.pop("tmp")
        print(json.dumps(child(**spec)))
        return

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / args.arch
        build(args.arch, model_dir)
        from coati_tui.core.modelinfo import Arch, read_config
        from coati_tui.core.units import fmt_bytes, fmt_count

        params = Arch.from_config(read_config(model_dir)).param_count()
        print(
            f"# planner accuracy: {args.arch} ({fmt_count(params)} params), device {args.device}, "
            f"batch {args.batch} x {args.seq} tokens, {args.steps} AdamW steps, random token ids"
        )
        print(
            "# measured: "
            + (
                "torch.cuda.max_memory_allocated"
                if args.device == "cuda"
                else "peak RSS minus RSS after imports (fresh process per row)"
            )
        )
        print(
            f"{'preset':14s} {'stage':5s} {'gc':3s} {'predicted':>11s} {'measured':>11s} {'error':>7s} {'s/step':>7s}"
            "  allocator"
        )
        errors = []
        for preset_name in args.presets.split(","):
            for stage in args.stages.split(","):
                for gc in args.gc.split(","):
                    spec = dict(
                        model_dir=str(model_dir),
                        preset_name=preset_name,
                        stage=stage,
                        batch=args.batch,
                        seq=args.seq,
                        steps=args.steps,
                        device=args.device,
                        gc=gc == "on",
                        tmp=tmp,
                    )
                    proc = subprocess.run(
                        [sys.executable, __file__, "--child", json.dumps(spec)],
                        capture_output=True,
                        text=True,
                        env=child_env(),
                    )
                    if proc.returncode != 0:
                        print(f"{preset_name:14s} {stage:5s} {gc:3s} failed: {proc.stderr.strip().splitlines()[-1]}")
                        continue
                    got = json.loads(proc.stdout.strip().splitlines()[-1])
                    pname = preset_name
                    if gc == "off":
                        from coati_tui.core import presets

                        p = presets.load(preset_name)
                        nogc = Path(tmp) / f"{p.name}_nogc.toml"
                        pname = str(nogc)
                    pred = predicted(str(model_dir), pname, stage, args.batch, args.seq, args.device)
                    err = (pred - got["measured"]) / got["measured"]
                    errors.append(abs(err))
                    print(
                        f"{preset_name:14s} {stage:5s} {gc:3s} {fmt_bytes(pred):>11s} "
                        f"{fmt_bytes(got['measured']):>11s} "
                        f"{err:+7.1%} {got['step_s']:7.2f}  {got['allocator']}"
                    )
        if errors:
            print(f"median |error| {statistics.median(errors):.1%}, max {max(errors):.1%} over {len(errors)} rows")


if __name__ == "__main__":
    main()
