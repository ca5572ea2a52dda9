"""LoRA's forward with one output tensor where peft makes three.

peft's ``lora.Linear`` adds its update as ``result + lora_B(lora_A(dropout(x))) * scaling``: the B product,
the scaled copy and the sum are each a new activation-sized tensor, and their backward makes as many again.
Each is an allocation and a pass over memory (under glibc's fallback, core/procenv.py, also pages the
kernel zero-fills), so this path computes the same sum in one ``addmm`` (``result + scaling * (A x) B^T``)
into one tensor.
It serves the plain case only: one active adapter, not merged or disabled, plain LoRA (no DoRA or other
variant), input, adapter and output of one dtype, no per-row adapter names; anything else takes peft's own
forward, so numbers never depend on which ran (tests/test_train.py checks logits and gradients agree).
"""

from __future__ import annotations

import types
from typing import Any


def fuse(model: Any) -> int:
    """Give each plain ``peft`` LoRA Linear of ``model`` the one-tensor forward; returns how many."""
    try:
        from peft.tuners.lora.layer import Linear
    except ImportError:
        return 0
    n = 0
    for module in model.modules():
        if type(module) is Linear:  # not the bitsandbytes / GPTQ subclasses: their base layer is no matmul
            module.forward = types.MethodType(_forward, module)
            n += 1
    return n


def _forward(self: Any, x: Any, *args: Any, **kwargs: Any) -> Any:
    import torch

    names = self.active_adapters
    name = names[0] if len(names) == 1 else None
    if (
        args
        or kwargs
        or self.disable_adapters
        or self.merged
        or name not in self.lora_A
        or name in getattr(self, "lora_variant", {})
        or getattr(self, "use_dora", {}).get(name, False)
    ):
        return type(self).forward(self, x, *args, **kwargs)
    a, b = self.lora_A[name].weight, self.lora_B[name].weight
    if not (x.dtype == a.dtype == b.dtype == getattr(self.base_layer, "weight", a).dtype):
        return type(self).forward(self, x)  # a bf16 base under fp32 adapters: peft's casts
    result = self.base_layer(x)
    low = torch.nn.functional.linear(self.lora_dropout[name](x), a)
    out = torch.addmm(
        result.reshape(-1, result.shape[-1]), low.reshape(-1, low.shape[-1]), b.t(), alpha=self.scaling[name]
    )
    return out.view(result.shape)
