"""The `coati-tui train` flags that set a preset key, both ways: one table.

The CLI declares its options from it (flag -> key: the run's overrides) and the app writes a run's
headless command from it (key -> flag). The first name is the flag; the others are the spellings
ColossalChat's scripts use (``--batch_size``, ``--experience_batch_size``), accepted as well.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


def _grpo(key: str) -> tuple[tuple[str, str], ...]:
    return (("grpo", f"grpo.{key}"),)


@dataclass(frozen=True)
class Flag:
    key: str  # the preset key it sets
    names: tuple[str, ...]  # the flag, then its other spellings
    param: str  # the `train` command's parameter that holds it
    off: str = ""  # a switch: the flag that turns it off
    min: float | None = None
    max: float | None = None
    help: str = ""
    panel: str | None = None  # the group it shows under in --help
    stages: tuple[tuple[str, str], ...] = ()  # (stage, key) where this flag sets another stage's key

    def key_for(self, stage: str) -> str:
        return dict(self.stages).get(stage, self.key)


PPO = "PPO"
PREF = "DPO / SimPO / ORPO / KTO"
GRPO = "GRPO"
# PPO's sampling flags set GRPO's own keys in a GRPO run
SAMPLING = ("max_new_tokens", "temperature", "top_k", "top_p")

FLAGS: tuple[Flag, ...] = (
    Flag("lora.rank", ("--lora-rank", "--lora_rank"), "lora_rank", min=0, help="0 = full fine-tune"),
    Flag("train.batch_size", ("--batch-size", "--batch_size", "--train_batch_size"), "batch_size", min=1),
    Flag(
        "train.accumulation_steps",
        ("--accumulation-steps", "--accumulation_steps", "--accimulation_steps"),  # ColossalChat's typo too
        "accumulation_steps",
        min=1,
    ),
    Flag("train.lr", ("--lr",), "lr"),
    Flag("train.max_epochs", ("--max-epochs", "--max_epochs"), "max_epochs", min=1),
    Flag("train.max_len", ("--max-len", "--max_len"), "max_len", min=8),
    Flag(
        "train.grad_checkpointing",
        ("--grad-checkpointing", "--grad_checkpoint"),
        "grad_checkpointing",
        off="--no-grad-checkpointing",
    ),
    Flag(
        "offload.optim_frac",
        ("--optim-offload",),
        "optim_offload",
        min=0,
        max=1,
        help="Gemini: share of optimizer states in RAM",
    ),
    Flag(
        "offload.param_frac",
        ("--param-offload",),
        "param_offload",
        min=0,
        max=1,
        help="Gemini: share of weights in RAM",
    ),
    Flag("ppo.kl_coef", ("--kl-coef", "--kl_coef"), "kl_coef", min=0, panel=PPO),
    Flag("ppo.ptx_coef", ("--ptx-coef", "--ptx_coef"), "ptx_coef", min=0, panel=PPO),
    Flag("ppo.clip_eps", ("--clip-eps",), "clip_eps", min=0, panel=PPO),
    Flag("ppo.value_clip", ("--value-clip",), "value_clip", min=0, panel=PPO),
    Flag("ppo.gamma", ("--gamma",), "gamma", min=0, max=1, panel=PPO),
    Flag("ppo.lam", ("--lambda", "--lam"), "lam", min=0, max=1, panel=PPO),
    Flag("ppo.rollout_batch", ("--rollout-batch", "--experience_batch_size"), "rollout_batch", min=1, panel=PPO),
    Flag(
        "ppo.max_new_tokens", ("--max-new-tokens",), "max_new_tokens", min=1, panel=PPO, stages=_grpo("max_new_tokens")
    ),
    Flag("ppo.temperature", ("--temperature",), "temperature", min=0.01, panel=PPO, stages=_grpo("temperature")),
    Flag("ppo.top_k", ("--top-k",), "top_k", min=0, panel=PPO, stages=_grpo("top_k")),
    Flag("ppo.top_p", ("--top-p",), "top_p", min=0.01, max=1, panel=PPO, stages=_grpo("top_p")),
    Flag("ppo.ppo_epochs", ("--ppo-epochs",), "ppo_epochs", min=1, panel=PPO),
    Flag("ppo.critic_lr", ("--critic-lr",), "critic_lr", min=0, panel=PPO),
    Flag("ppo.whiten_advantages", ("--whiten",), "whiten_advantages", off="--no-whiten", panel=PPO),
    Flag("ppo.reward_clip", ("--reward-clip",), "reward_clip", min=0, panel=PPO),
    Flag(
        "ppo.kl_target",
        ("--kl-target",),
        "kl_target",
        min=0,
        panel=PPO,
        help="adaptive KL target per answer; 0 = fixed",
    ),
    Flag(
        "ppo.stop_on_alarm",
        ("--stop-on-alarm",),
        "stop_on_alarm",
        off="--no-stop-on-alarm",
        panel=PPO,
        help="stop at the first reward-hacking alarm, keeping the checkpoint before it",
    ),
    Flag(
        "dpo.beta",
        ("--beta",),
        "beta",
        min=0,
        panel=PREF,
        stages=(("orpo", "orpo.beta"), ("kto", "kto.beta"), ("grpo", "grpo.beta")),
        help="DPO/IPO: distance from the reference; SimPO: reward scale; ORPO: odds-ratio weight; GRPO: KL weight",
    ),
    Flag(
        "dpo.label_smoothing", ("--label-smoothing", "--label_smoothing"), "label_smoothing", min=0, max=0.5, panel=PREF
    ),
    Flag("dpo.simpo_gamma", ("--simpo-gamma", "--simpo_gamma"), "simpo_gamma", min=0, panel=PREF),
    Flag(
        "dpo.precompute_ref",
        ("--precompute-ref",),
        "precompute_ref",
        off="--live-ref",
        panel=PREF,
        stages=(("kto", "kto.precompute_ref"),),
    ),
    Flag("kto.desirable_weight", ("--desirable-weight", "--desirable_weight"), "desirable_weight", min=0, panel=PREF),
    Flag(
        "kto.undesirable_weight",
        ("--undesirable-weight", "--undesirable_weight"),
        "undesirable_weight",
        min=0,
        panel=PREF,
    ),
    Flag("grpo.group_size", ("--group-size", "--num_generations"), "group_size", min=2, panel=GRPO),
    Flag("grpo.prompts_per_step", ("--prompts-per-step",), "prompts_per_step", min=1, panel=GRPO),
    Flag("grpo.clip_low", ("--clip-low",), "clip_low", min=0, panel=GRPO),
    Flag("grpo.clip_high", ("--clip-high",), "clip_high", min=0, panel=GRPO, help="DAPO's clip-higher: e.g. 0.28"),
    Flag(
        "grpo.loss_norm",
        ("--loss-norm",),
        "loss_norm",
        panel=GRPO,
        help="sequence | token (DAPO) | constant (Dr. GRPO)",
    ),
    Flag("grpo.scale_rewards", ("--scale-rewards",), "scale_rewards", off="--no-scale-rewards", panel=GRPO),
    Flag(
        "grpo.updates_per_rollout",
        ("--updates-per-rollout", "--num_iterations"),
        "updates_per_rollout",
        min=1,
        panel=GRPO,
    ),
    Flag("grpo.dynamic_sampling", ("--dynamic-sampling",), "dynamic_sampling", off="--no-dynamic-sampling", panel=GRPO),
    Flag("grpo.reward_model_weight", ("--reward-model-weight",), "reward_model_weight", min=0, panel=GRPO),
)
BY_KEY: dict[str, Flag] = {k: f for f in FLAGS for k in (f.key, *(key for _, key in f.stages))}
BY_PARAM: dict[str, Flag] = {f.param: f for f in FLAGS}


def overrides(values: Mapping[str, Any], stage: str = "") -> dict[str, Any]:
    """Flag -> key: the preset overrides in the `train` command's parameter values (``None``: not given);
    a flag shared by several stages (``--beta``) sets ``stage``'s key."""
    return {f.key_for(stage): values[f.param] for f in FLAGS if values.get(f.param) is not None}


def to_flags(overrides: Mapping[str, Any]) -> list[str]:
    """Key -> flag: ``{"train.batch_size": 16}`` -> ``["--batch-size", "16"]`` (keys without a flag are left out)."""
    out: list[str] = []
    for key, value in overrides.items():
        flag = BY_KEY.get(key)
        if flag is None:
            continue
        if flag.off:
            out.append(flag.names[0] if value else flag.off)
        else:
            out += [flag.names[0], str(value)]
    return out
