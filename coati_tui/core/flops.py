"""Model FLOPs per trained token and the device's peak: MFU, counted as nanoGPT and PaLM count it.

Pure arithmetic, no torch. A matmul of an (m x k) by a (k x n) is 2mkn FLOPs. Per token of a decoder:

- forward: 2 FLOPs per weight of every Linear it passes (the decoder layers' and the head's), plus
  attention's two matmuls (scores Q.K and the weighted sum A.V): 2 x 2 x layers x heads x head_dim x T,
  with T the sequence's length (the full square, as nanoGPT counts it, not the causal half);
- backward: the gradient of each matmul's input costs as much as its forward (2 per weight, and twice
  the attention term); the gradient of a weight costs as much again, but only for weights that train.
  A full fine-tune is then 6 per weight (nanoGPT's 6N) and 12 x layers x d x T for attention; LoRA with
  frozen weights is 4 per frozen weight plus 6 per adapter weight (what the adapters add: 2 x rank x
  (in + out) per targeted Linear, negligible but counted).

Model FLOPs, not hardware FLOPs: the recomputation of gradient checkpointing is not counted (it is work
the model does not need), nor the embedding lookup, norms and activations (no matmul). The LM head is
counted over every token, as in the conventions above, even where a recipe takes it at labelled
positions only: MFU then tells what a step achieves against the model's own cost.
"""

from __future__ import annotations

from coati_tui.core.modelinfo import Arch


def head_weights(arch: Arch, head: str) -> int:
    """Weights of the output matmul: the LM head (vocab x hidden) or a score head (hidden)."""
    return arch.vocab * arch.hidden if head == "lm" else arch.hidden if head == "score" else 0


def train_flops_per_token(
    arch: Arch, seq_len: float, head: str = "lm", lora_rank: int = 0, lora_targets: str | list[str] = "all-linear"
) -> float:
    """Forward + backward model FLOPs for one token of a ``seq_len``-token sequence (see the module doc).
    ``lora_rank`` 0: a full fine-tune (every weight trains)."""
    weights = arch.linear_params_total + head_weights(arch, head)
    attention = 2 * 2 * arch.layers * arch.heads * arch.head_dim * seq_len  # forward: Q.K and A.V
    if lora_rank <= 0:
        return 6.0 * weights + 3 * attention
    adapters = arch.lora_params(lora_rank, lora_targets)
    return 4.0 * weights + 6.0 * adapters + 3 * attention


# Dense peak TFLOPS (no sparsity) as the vendors' data sheets give them: (16-bit tensor cores with fp32
# accumulation, fp32 without tensor cores). Matched by a substring of torch.cuda.get_device_name(); the
# first match wins, so longer names come first. A card not listed reports no MFU.
GPU_PEAK_TFLOPS: tuple[tuple[str, float, float], ...] = (
    ("H200", 989.0, 67.0),
    ("H100 PCIe", 756.0, 51.0),
    ("H100", 989.0, 67.0),
    ("A100", 312.0, 19.5),
    ("A10G", 70.0, 31.2),
    ("A10", 125.0, 31.2),
    ("L40S", 362.0, 91.6),
    ("L4", 121.0, 30.3),
    ("T4", 65.0, 8.1),
    ("V100", 125.0, 15.7),
    ("RTX 6000 Ada", 364.0, 91.1),
    ("RTX A6000", 155.0, 38.7),
    ("RTX 4090", 165.0, 82.6),
    ("RTX 4080", 97.5, 48.7),
    ("RTX 4070 Ti", 80.2, 40.1),
    ("RTX 4070", 58.3, 29.1),
    ("RTX 4060 Ti", 44.1, 22.1),
    ("RTX 4060", 30.2, 15.1),
    ("RTX 3090", 71.0, 35.6),
    ("RTX 3080 Ti", 68.0, 34.1),
    ("RTX 3080", 59.5, 29.8),
    ("RTX 3070", 40.6, 20.3),
    ("RTX 3060 Ti", 32.4, 16.2),
    ("RTX 3060", 25.5, 12.7),
)


def gpu_peak_flops(name: str, precision: str) -> float | None:
    """The card's peak FLOP/s for ``precision`` (bf16 / fp16 / fp32), or None for a card not listed."""
    for key, half, single in GPU_PEAK_TFLOPS:
        if key.lower() in name.lower():
            return (single if precision == "fp32" else half) * 1e12
    return None


def mfu(flops: float, seconds: float, peak: float | None) -> float | None:
    """Model FLOPs utilization of a step: its model FLOPs over what the peak would do in its time."""
    if not peak or seconds <= 0 or flops <= 0:
        return None
    return flops / seconds / peak
