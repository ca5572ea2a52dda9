"""Peak memory of one preset x stage, from ``config.json`` alone: the arithmetic the planner runs.

Pure functions, no torch. The estimate reads the same preset fields the trainer uses (strategy,
precision, LoRA rank and targets, quantization, offload fractions, gradient checkpointing, batch size,
sequence length), so planner and trainer cannot disagree about what a preset is.

How the bytes are counted (per device; ``w`` = bytes per element of the compute dtype):
- weights: ``P*w``; 4-bit NF4 linears ~0.52 B/param (with double quantization), int8 1 B/param. On a
  CPU a quantized model's linears also keep their checkpoint bytes resident (``quantized_source``: pages of
  the safetensors mapping, which the unquantized weights hold open; measured, bench/planner_accuracy.py).
- LoRA: fp32 adapter weights, gradients and two AdamW moments: 16 B per trainable parameter.
- full fine-tune, plain PyTorch: weights + gradients + AdamW moments, all in the weight dtype.
- Gemini: bf16 weights (``param_frac`` of them in CPU RAM) whose chunks are reused for gradients;
  fp32 master + moments, 12 B/param (``optim_frac`` of them in CPU RAM); two chunks of working buffer.
- ZeRO-2 without offload (one GPU holds the whole shard): bf16 weights and gradients, fp32 master weights,
  moments and gradients, 20 B/param on the card.
- ZeRO-2 + CPU offload: bf16 weights and bf16 gradients on the GPU; fp32 master, moments and fp32
  gradients (16 B/param) in CPU RAM.
- activations: what autograd saves per token per decoder layer for a Llama-style block under SDPA
  attention (RMSNorm's fp32 copies, linear inputs, SwiGLU's three intermediates, attention q/k/v/out,
  LoRA's fp32 dropout copies and masks), times layers, plus one layer's working set in backward.
  With gradient checkpointing only each layer's input is kept, and one layer is recomputed at a time.
- logits: ``tokens * vocab * (w + 8)``: the logits, the loss's log-softmax and its gradient, + 4 bytes
  under bf16/fp16 for the fp32 upcast's gradient. A reward model has a one-number head instead.
- PPO: actor, critic, reference and reward model. With LoRA (memory-lean mode) one base carries the
  actor and critic adapters, the reference is the base with adapters off, and the reward model is an
  adapter + head on the same base. Otherwise four models; under Gemini / ZeRO-2 the reference and
  reward model live in RAM and visit the GPU one at a time. Peak = max(rollout: KV cache of the
  rollout batch, or the visiting model; update: activations of one micro-batch).
"""

from __future__ import annotations

from coati_tui.core.modelinfo import Arch
from coati_tui.core.presets import Preset
from coati_tui.core.run_config import STAGES as ALL_STAGES

GIB = 1024**3
RUNTIME_RSS = {"cpu": int(0.8 * GIB), "cuda": int(2.5 * GIB)}  # Python + torch (+ CUDA libraries) resident
DTYPE_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4}
NF4_BITS = {True: 4 + 8 / 64 + 32 / (64 * 256), False: 4 + 32 / 64}  # per param, with/without double quant


def layer_activation_bytes(arch: Arch, w: int, preset: Preset, trainable_norms: bool) -> int:
    """Bytes autograd saves per token for one decoder layer (see the module docstring)."""
    H, I = arch.hidden, arch.intermediate  # noqa: E741 (H, I: hidden and MLP widths)
    Hq = arch.heads * arch.head_dim
    norm = 4 * H + (w * H if trainable_norms else 0)  # fp32 copy of x (+ normalized x, when its weight trains)
    attn = w * H + w * (Hq + 2 * Hq + Hq) + w * Hq  # linear input, SDPA q/k/v (kv repeated)/out, o_proj input
    mlp = w * H + 4 * w * I  # linear input, gate, silu(gate), up, gate*up
    total = 2 * norm + attn + mlp
    if preset.lora.rank > 0:
        per_in = (4 + 1) if preset.lora.dropout > 0 else (4 if w < 4 else 0)  # fp32 dropout output + mask
        total += sum(per_in * lin.in_features for lin in arch.lora_targets(preset.lora.targets))
    return total


def activation_bytes(arch: Arch, w: int, preset: Preset, tokens: int, gc: bool, head: str) -> int:
    layer = layer_activation_bytes(arch, w, preset, trainable_norms=preset.full_finetune) * tokens
    if gc:
        body = arch.layers * w * arch.hidden * tokens + 2 * layer  # checkpoints + one layer recomputed + its grads
    else:
        body = arch.layers * layer + layer  # every layer saved + one layer's backward working set
    # logits (w) + log-softmax output (4) + its gradient (4); under bf16/fp16 also the fp32 upcast's gradient (4)
    logits = tokens * arch.vocab * (w + 8 + (4 if w < 4 else 0)) if head == "lm" else tokens * arch.hidden * 4
    return body + logits


def weight_bytes(arch: Arch, preset: Preset, w: int, head: str) -> int:
    params = arch.param_count(head)
    if preset.quant.bits == 4:
        quantized = arch.linear_params_total
        return int(quantized * NF4_BITS[preset.quant.double_quant] / 8) + (params - quantized) * w
    if preset.quant.bits == 8:
        quantized = arch.linear_params_total
        return quantized + arch.layers * sum(4 * lin.out_features for lin in arch.linears) + (params - quantized) * w
    return params * w


def train_state(
    arch: Arch, preset: Preset, w: int, head: str, accumulate: bool | None = None
) -> tuple[dict[str, int], dict[str, int]]:
    """(device bytes, host bytes) of one trained model's weights, gradients and optimizer states.
    ``accumulate``: whether gradients are accumulated over micro-batches (default: the preset's
    accumulation_steps > 1; PPO steps once per backward)."""
    if accumulate is None:
        accumulate = preset.train.accumulation_steps > 1
    params = arch.param_count(head)
    if preset.strategy == "naive":
        weights = weight_bytes(arch, preset, w, head)
        if preset.full_finetune:
            return {"weights": weights, "gradients": params * w, "optimizer": 2 * params * w}, {}
        trainable = arch.lora_params(preset.lora.rank, preset.lora.targets)
        if head == "score":
            trainable += arch.hidden  # the score head trains with the adapters
        return {"weights": weights, "lora": 4 * trainable, "gradients": 4 * trainable, "optimizer": 8 * trainable}, {}
    if preset.strategy == "gemini":
        on_cpu, optim_cpu = preset.offload.param_frac, preset.offload.optim_frac
        if preset.offload.placement == "auto":  # Gemini moves what does not fit; plan for the optimizer in RAM
            on_cpu, optim_cpu = 0.0, 1.0
        chunk = min(2 * params, 64 * 1024**2 * 2)
        device = {
            "weights": int(2 * params * (1 - on_cpu)),
            "chunk_buffers": 2 * chunk if on_cpu > 0 else chunk,
            "optimizer": int(12 * params * (1 - optim_cpu)),
        }
        host = {"weights_offloaded": int(2 * params * on_cpu), "optimizer_offloaded": int(12 * params * optim_cpu)}
        if accumulate:  # gradients get chunks of their own, kept where the optimizer states are
            for where, frac in ((device, 1 - optim_cpu), (host, optim_cpu)):
                if frac > 0:
                    where["gradients_accumulated"] = int(2 * params * frac)
        return device, host
    if preset.strategy == "zero2":  # one GPU holds a whole shard: everything on the card
        return {
            "weights": 2 * params,
            "gradients": 2 * params,
            "master_weights": 4 * params,
            "optimizer": 8 * params,
            "gradients_fp32": 4 * params,
        }, {}
    if preset.strategy == "zero2_cpu":
        return (
            {"weights": 2 * params, "gradients": 2 * params},
            {"master_weights": 4 * params, "optimizer_offloaded": 8 * params, "gradients_fp32": 4 * params},
        )
    raise ValueError(f"unknown strategy {preset.strategy!r}")


def _add(into: dict[str, int], more: dict[str, int], prefix: str = "") -> None:
    for k, v in more.items():
        into[prefix + k] = into.get(prefix + k, 0) + int(v)


def estimate(
    arch: Arch, preset: Preset, stage: str, batch: int, seq_len: int, device: str, bf16: bool = True
) -> tuple[dict[str, int], dict[str, int], dict[str, int], str]:
    """Peak (device breakdown, host breakdown, alternatives, precision) for one preset x stage."""
    precision = "fp32" if device == "cpu" else preset.precision
    if precision == "bf16" and device == "cuda" and not bf16:
        precision = "fp16"
    w = DTYPE_BYTES[precision]
    gc = preset.train.grad_checkpointing
    dev: dict[str, int] = {}
    host: dict[str, int] = {"runtime": RUNTIME_RSS[device]}
    alt: dict[str, int] = {}

    if stage in ("sft", "rm", "dpo", "orpo", "kto"):
        head = "score" if stage == "rm" else "lm"
        # RM and the preference methods: chosen and rejected (KTO: answers and mismatched ones) in one batch.
        # Their reference costs no weights: adapters off under LoRA, log-probs computed once (precompute_ref)
        # for a full fine-tune; its no-grad forward needs less than the training forward counted here.
        tokens = batch * seq_len * (1 if stage == "sft" else 2)
        d, h = train_state(arch, preset, w, head)
        _add(dev, d)
        _add(host, h)
        dev["activations"] = activation_bytes(arch, w, preset, tokens, gc, head)
        alt["activations_with_gc" if not gc else "activations_without_gc"] = activation_bytes(
            arch, w, preset, tokens, not gc, head
        )
        if preset.quant.bits:
            dev["dequant_buffer"] = max(lin.in_features * lin.out_features for lin in arch.linears) * w
    elif stage == "ppo":
        tokens = batch * seq_len
        kv = 2 * arch.layers * arch.kv_heads * arch.head_dim * w * tokens
        acts = activation_bytes(arch, w, preset, tokens, gc, "lm")
        if preset.ppo_lean:
            # memory-lean: one base; actor + critic adapters train; reference = adapters off; RM = adapter + head
            base = weight_bytes(arch, preset, w, "lm")
            lora = arch.lora_params(preset.lora.rank, preset.lora.targets)
            dev["weights"] = base + arch.hidden * 4 * 2  # + value and reward heads
            dev["actor_lora_state"] = 16 * lora
            dev["critic_lora_state"] = 16 * (lora + arch.hidden)
            dev["reward_adapter"] = 4 * lora
            if preset.quant.bits:
                dev["dequant_buffer"] = max(lin.in_features * lin.out_features for lin in arch.linears) * w
            alt["four_separate_models"] = (
                2 * base + 2 * weight_bytes(arch, preset, w, "score") + 32 * lora + dev["reward_adapter"]
            )
        else:
            for name, head in (("actor", "lm"), ("critic", "score")):
                d, h = train_state(arch, preset, w, head, accumulate=False)
                _add(dev, d, name + "_")
                _add(host, h, name + "_")
            ref, rm = arch.param_count("lm") * w, arch.param_count("score") * w
            if preset.strategy == "naive":
                dev["reference"], dev["reward_model"] = ref, rm
            else:  # kept in RAM; each visits the GPU alone to score a finished rollout
                host["reference"], host["reward_model"] = ref, rm
                kv = max(kv, ref, rm)
        # rollout (KV cache + sampling logits) and update (activations) do not overlap
        rollout = kv + batch * arch.vocab * 4
        dev["rollout_or_update"] = max(rollout, acts)
        alt["rollout_peak"], alt["update_peak"] = rollout, acts
    elif stage == "grpo":
        _grpo(arch, preset, w, batch, seq_len, gc, dev, alt)
    else:
        raise ValueError(f"unknown stage {stage!r} (use {', '.join(ALL_STAGES)})")

    if device == "cpu":  # the model trains in RAM: everything lands in the host's column
        _add(host, dev)  # children run with coati_tui.procenv's allocator settings, so RSS tracks live tensors
        dev = {}
        if preset.quant.bits:
            # the linears' checkpoint bytes, read once to quantize, stay resident: they are pages of the
            # file mapping that the unquantized weights (embeddings, norms, head) keep open as views
            host["quantized_source"] = arch.linear_params_total * arch.stored_bytes
    else:
        params_on_disk = arch.param_count("lm") * arch.stored_bytes
        host["load_staging"] = min(params_on_disk, 5 * 1024**3)  # one safetensors shard in flight
    return dev, host, alt, precision


def _grpo(
    arch: Arch, preset: Preset, w: int, batch: int, seq_len: int, gc: bool, dev: dict[str, int], alt: dict[str, int]
) -> None:
    """GRPO: base + actor adapter (no critic, reference free); max(rollout of G x prompts, update)."""
    g = preset.grpo
    answers, seq = g.group_size * g.prompts_per_step, g.max_prompt_len + g.max_new_tokens
    dev["weights"] = weight_bytes(arch, preset, w, "lm")
    dev["actor_lora_state"] = 16 * arch.lora_params(preset.lora.rank, preset.lora.targets)
    if preset.quant.bits:
        dev["dequant_buffer"] = max(lin.in_features * lin.out_features for lin in arch.linears) * w
    rollout = 2 * arch.layers * arch.kv_heads * arch.head_dim * w * answers * seq + answers * arch.vocab * 4
    acts = activation_bytes(arch, w, preset, batch * min(seq, max(seq_len, g.max_new_tokens)), gc, "lm")
    dev["rollout_or_update"] = max(rollout, acts)
    alt["rollout_peak"], alt["update_peak"] = rollout, acts
