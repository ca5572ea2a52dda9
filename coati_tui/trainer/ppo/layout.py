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

    def generate(self, ids: Any, mask: Any, gen_config: Any, reference: bool = False) -> Any:
        """The actor's answers (B, P+T') to left-padded prompts (B, P); ``reference``: the SFT model's."""

    def logits(self, which: str | None, ids: Any, mask: Any, start: int, width: int) -> Any:
        """(B, T, V) next-token logits over the answer / temperature; ``which`` None = the reference."""

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
