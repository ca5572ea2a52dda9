"""PPO's two model layouts share one typed contract (``Layout``): the recipe and ``update`` call only this.

``lean.Lean``: one base carries the actor and critic adapters (reference = adapters off).
``separate.Separate``: ColossalChat's four models, actor and critic boosted by the strategy.
``core.presets.Preset.ppo_lean`` picks between them, for the planner and the trainer alike.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Protocol

ADAPTERS = ("actor", "critic")


class Layout(Protocol):
    """Actor, critic, reference and reward model, however they are held. Tensors: ``ids`` / ``mask``
    (B, P+T) left-padded prompts + answers; ``start`` = P, the column where answers begin; ``width`` = T."""

    n_params: int
    trainable_count: int
    own: dict[str, list[Any]]  # "actor" / "critic" -> the parameters each optimizer steps
    separate_rm: Any  # the reward model when it is not an adapter on the actor's base, else None

    def setup(self, strategy: Any, preset: Any, pp: Any) -> None:
        """Optimizers (and the strategy's wrappers) for actor and critic."""

    def generate(self, ids: Any, mask: Any, gen_config: Any, reference: bool = False, group: int = 1) -> Any:
        """The actor's answers (B, P+T') to left-padded prompts (B, P); ``reference``: the SFT model's;
        ``group``: rows in runs of that many copies of one prompt, prefilled once (``prefilled``)."""

    def logits(self, which: str | None, ids: Any, mask: Any, start: int, width: int, group: int = 1) -> Any:
        """(B, T, V) next-token logits over the answer / temperature; ``which`` None = the reference.
        ``group`` > 1: rows come in runs of ``group`` that share one prompt (GRPO), run once (``answer_hidden``)."""

    def actor_forward(self, ids: Any, mask: Any, start: int, width: int, ptx: Any) -> tuple[Any, Any]:
        """The actor's (B, T, V) logits and, in the same forward, the PTX loss on batch ``ptx`` (or None)."""

    def values(self, ids: Any, mask: Any, start: int, width: int) -> Any:
        """The critic's (B, T) values."""

    def scores(self, ids: Any, mask: Any, last: Any) -> Any:
        """The reward model's (B,) score at column ``last`` (B,) of each row."""

    def train(self, on: bool) -> None: ...

    def update(self, which: str, loss: Any) -> None:
        """Backward, gradient sync, clip and optimizer step for "actor" or "critic"."""

    def discard(self, which: str, loss: Any) -> None:
        """A skipped update (every process skips together)."""

    def save(self, folder: Path, main: bool) -> None: ...

    def load(self, folder: Path) -> None: ...

    def save_final(self, tokenizer: Any, final: Path, end_id: int, cfg: Any, main: bool) -> None: ...


def positions(mask):
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


def _cache_arg(decoder: Any) -> str:
    """The decoder's name for a KV cache passed in: ``cache`` from transformers 5.2x, else ``past_key_values``."""
    import inspect

    return "cache" if "cache" in inspect.signature(decoder.forward).parameters else "past_key_values"


def _prompt_cache(decoder: Any, ids: Any, mask: Any, pos: Any, group: int) -> tuple[Any, Any]:
    """The decoder over every ``group``-th row (one per run of copies of a prompt): (its output, its KV cache
    repeated ``group`` times). The repeat is differentiable: each copy's gradient flows back to the prompt."""
    out = decoder(input_ids=ids[::group], attention_mask=mask[::group], position_ids=pos[::group], use_cache=True)
    cache = out.cache if "cache" in out else out.past_key_values  # the name before transformers 5.2x
    cache.batch_repeat_interleave(group)
    return out, cache


def answer_hidden(decoder: Any, ids: Any, mask: Any, start: int, width: int, group: int = 1) -> Any:
    """(B, width, H): the decoder's last hidden states at columns start-1 .. start+width-2, the ones that
    predict the answer's tokens. ``group`` > 1: rows come in runs of ``group`` with the same prompt (GRPO's G
    answers to a prompt), so the prompt columns go through the decoder once per run and their KV cache is
    repeated for the run's answers: the same numbers (causal attention: a prompt token never sees an answer),
    and the gradient reaches the prompt's LoRA weights from all G answers as before. With G = 8 and prompts
    longer than answers this skips most of a forward. Dropout, if any, then draws one mask per prompt, not
    one per copy. Under gradient checkpointing in training transformers turns the cache off, so that case
    (and ``group`` 1) runs the rows whole."""
    import torch

    pos = positions(mask)
    if group <= 1 or (decoder.training and getattr(decoder, "gradient_checkpointing", False)):
        h = decoder(input_ids=ids, attention_mask=mask, position_ids=pos).last_hidden_state
        return h[:, start - 1 : start - 1 + width]
    if ids.shape[0] % group:
        raise ValueError(f"{ids.shape[0]} rows do not come in groups of {group}")
    prompt, cache = _prompt_cache(decoder, ids[:, :start], mask[:, :start], pos[:, :start], group)
    last = prompt.last_hidden_state[:, -1:].repeat_interleave(group, 0)
    if width == 1:
        return last
    end = start + width - 1
    rest = decoder(
        input_ids=ids[:, start:end],
        attention_mask=mask[:, :end],
        position_ids=pos[:, start:end],
        use_cache=True,
        **{_cache_arg(decoder): cache},
    ).last_hidden_state
    return torch.cat([last, rest], 1)


def prefilled(decoder: Any, ids: Any, mask: Any, group: int) -> dict[str, Any]:
    """``generate``'s keyword for a KV cache of the prompts' first P-1 columns, each prompt run once for its
    run of ``group`` copies and the cache repeated: generate then feeds only the last prompt column and
    goes on decoding as before (transformers restarts from a cache whose length the mask and ids exceed).
    Empty (generate prefills every row itself) for ``group`` 1."""
    if group <= 1 or ids.shape[1] < 2 or ids.shape[0] % group:
        return {}
    import torch

    with torch.no_grad():
        _, cache = _prompt_cache(decoder, ids[:, :-1], mask[:, :-1], positions(mask[:, :-1]), group)
    return {_cache_arg(decoder): cache}


def same_path(a: str | Path, b: str | Path) -> bool:
    try:
        return Path(a).resolve() == Path(b).resolve()
    except OSError:
        return False


def shared_reward_adapter(reward_dir: str | Path, actor_model: str | Path) -> Path | None:
    """The reward model's LoRA adapter when it was trained on ``actor_model`` itself (so it can ride on
    the actor's base), else None."""
    reward_dir = Path(reward_dir)
    adapter = reward_dir if (reward_dir / "adapter_config.json").is_file() else reward_dir / "adapter"
    if not (adapter / "adapter_config.json").is_file():
        return None
    info = reward_dir / "coati.json"
    base = json.loads(info.read_text()).get("base") if info.is_file() else None
    base = base or json.loads((adapter / "adapter_config.json").read_text()).get("base_model_name_or_path")
    return adapter if base and same_path(base, actor_model) else None


def sync_grads(params, strategy) -> None:
    """Average gradients across torchrun processes (each made its own rollout)."""
    if strategy.world > 1:
        import torch.distributed as dist

        for p in params:
            if p.grad is not None:
                dist.all_reduce(p.grad)
                p.grad /= strategy.world
