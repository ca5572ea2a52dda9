"""ColossalChat's train_sft.py / train_reward_model.py / train_prompts.py flags, and what each means here.

One table: the `train` command declares these spellings, the README lists them, and tests/test_colossalchat.py
checks a row each. Spellings that only rename one of our preset keys (``--batch_size``, ``--lora_rank``, ...)
live in coati_tui.core.flags; this table holds the rest.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Spelling:
    flag: str  # ColossalChat's spelling
    ours: str  # the coati-tui flag it is, or "" where it means nothing here
    note: str  # what it does here (for an ignored flag: the one line printed)


TABLE: tuple[Spelling, ...] = (
    Spelling("--pretrain", "--model", "the model folder, an earlier run folder, or a cached hub id"),
    Spelling("--model", "", "beside --pretrain: the model family, checked against config.json's model_type"),
    Spelling("--dataset", "--data", "the training data"),
    Spelling("--prompt_dataset", "--data", "PPO: the prompts (also the first positional argument after ppo)"),
    Spelling("--pretrain_dataset", "--ptx", "PPO: SFT data for the PTX loss"),
    Spelling("--rm_path", "--reward", "PPO: the reward model (an RM run folder, e.g. out/stage_2/rmstatic.pt)"),
    Spelling("--rm_pretrain", "--reward", "PPO: the reward model when no --rm_path is given"),
    Spelling("--rm_model", "", "PPO: the reward model's family, checked against its config.json"),
    Spelling("--save_path", "--out", "the run folder, even when its name ends in .pt"),
    Spelling("--accimulation_steps", "--accumulation-steps", "ColossalChat's own typo, accepted as written"),
    Spelling("--accumulation_steps", "--accumulation-steps", "gradient accumulation"),
    Spelling("--train_batch_size", "--batch-size", "PPO: the training micro-batch"),
    Spelling("--max_datasets_size", "--max-datasets-size", "use the first N records"),
    Spelling("--loss_fn", "--loss", "RM: log_sig | log_exp"),
    Spelling("--strategy", "--preset", "naive, colossalai_gemini, colossalai_zero2 or colossalai_zero2_cpu: a preset"),
    Spelling("--nproc_per_node", "--nproc-per-node", "processes on this node: the run goes under torchrun"),
    Spelling("--log_interval", "", "means nothing here: every optimizer step is logged"),
    Spelling("--test", "", "means nothing here: the run trains on all of --dataset (use --max_datasets_size)"),
    Spelling("--use_wandb", "", "means nothing here: events.jsonl (and --tensorboard) hold the curves"),
)
BY_FLAG: dict[str, Spelling] = {s.flag: s for s in TABLE}

# --strategy: ColossalChat's names -> our presets
STRATEGIES = {
    "naive": "lora_naive",
    "colossalai_gemini": "gemini_offload",
    "colossalai_zero2": "zero2",
    "colossalai_zero2_cpu": "zero2_cpu",
}
# the preset a CPU-only machine runs instead
RUNS_WITHOUT_CUDA = "lora_naive"


def ignored(flag: str) -> str:
    """The one line printed when a flag that means nothing here is given."""
    return f"{flag}: {BY_FLAG[flag].note.removeprefix('means nothing here: ')} (ColossalChat flag, ignored)"


def _norm(name: str) -> str:
    return name.lower().replace("-", "").replace("_", "")


def family_mismatch(flag: str, family: str, config: dict[str, object], where: str) -> str | None:
    """Why ``family`` (``--model bloom``) is not the model at ``where``, or None when it is."""
    model_type = str(config.get("model_type", ""))
    if not model_type or _norm(family) == _norm(model_type) or _norm(model_type).startswith(_norm(family)):
        return None
    return f"{flag} {family!r} does not match {where}: its config.json says model_type {model_type!r}"
