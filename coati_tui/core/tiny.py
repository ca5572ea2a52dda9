"""The tiny Llama's shape as plain data: the app plans the built-in demo model from it without torch;
``coati_tui.trainer.tiny`` builds the real folder from the same numbers."""

from __future__ import annotations

from typing import Any


def config_dict(
    vocab_size: int = 1024,
    layers: int = 2,
    hidden: int = 64,
    heads: int = 4,
    kv_heads: int = 2,
    intermediate: int | None = None,
    max_positions: int = 1024,
) -> dict[str, Any]:
    """The tiny Llama's config as plain data: the app plans the demo model from it without torch."""
    return {
        "model_type": "llama",
        "vocab_size": vocab_size,
        "hidden_size": hidden,
        # ~2.75x hidden, rounded up to a multiple of 64: the 4-bit CPU kernels (bitsandbytes NF4, GPTQ's
        # int4 matmul) need whole groups of 64 per row, so the demo quantizes and chats in 4-bit on a CPU
        "intermediate_size": intermediate or -(-hidden * 11 // 4 // 64) * 64,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "max_position_embeddings": max_positions,
        "tie_word_embeddings": False,
    }
