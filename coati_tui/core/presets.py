"""Presets are data: ``presets/*.toml``, read by the planner and the trainer alike.

Every field below carries its help text (shown by the UI as a tooltip and by ``coati-tui presets``).
Loading validates each file; a broken one raises ``PresetError`` naming the file and the key.
"""

from __future__ import annotations

import dataclasses
import sys
import types
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, get_type_hints

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from coati_tui.core import paths

STRATEGIES = ("naive", "gemini", "zero2", "zero2_cpu")
PRECISIONS = ("bf16", "fp16", "fp32")


class PresetError(ValueError):
    kind = "config"

    def __init__(self, file: str | Path, key: str | None, message: str):
        self.file, self.key = str(file), key
        where = f"{file}: {key}: " if key else f"{file}: "
        super().__init__(where + message)


def _f(default: Any, help: str, choices: tuple[Any, ...] | None = None, minimum: float | None = None) -> Any:
    meta = {"help": help, "choices": choices, "min": minimum}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class Lora:
    rank: int = _f(16, "LoRA rank; 0 trains every weight (full fine-tune)", minimum=0)
    alpha: float = _f(32.0, "LoRA scaling numerator (scale = alpha / rank)", minimum=0)
    dropout: float = _f(0.05, "dropout on the LoRA input", minimum=0)
    targets: str | list[str] = _f("all-linear", 'modules that get adapters: "all-linear" or a list of names')


@dataclass
class Quant:
    bits: int = _f(0, "base weights: 0 = unquantized, 4 = bitsandbytes nf4 (QLoRA), 8 = int8", choices=(0, 4, 8))
    double_quant: bool = _f(True, "quantize the 4-bit scales too (saves ~0.4 bit/param)")


@dataclass
class Offload:
    placement: str = _f("static", "Gemini placement: static (fractions below) or auto", choices=("static", "auto"))
    optim_frac: float = _f(
        0.0, "share of optimizer states kept in CPU RAM (1.0 = all: frees 12 B/param of VRAM)", minimum=0
    )
    param_frac: float = _f(
        0.0, "share of fp16 weights kept in CPU RAM (frees 2 B/param, costs PCIe traffic)", minimum=0
    )


@dataclass
class Train:
    batch_size: int = _f(4, "sequences per micro-batch", minimum=1)
    accumulation_steps: int = _f(8, "micro-batches per optimizer step", minimum=1)
    max_len: int = _f(512, "tokens per sequence; longer ones are truncated and counted", minimum=8)
    lr: float = _f(2e-4, "peak learning rate (cosine decay, linear warm-up)", minimum=0)
    max_epochs: int = _f(1, "passes over the data", minimum=1)
    grad_checkpointing: bool = _f(True, "recompute activations in backward: True reduces memory, costs ~30% speed")
    weight_decay: float = _f(0.0, "AdamW weight decay", minimum=0)
    warmup_ratio: float = _f(0.03, "share of steps spent warming the learning rate up", minimum=0)


@dataclass
class PPO:
    rollout_batch: int = _f(16, "prompts answered per PPO step (one rollout)", minimum=1)
    ppo_epochs: int = _f(2, "passes over each rollout; train.batch_size sets the mini-batch", minimum=1)
    max_new_tokens: int = _f(128, "longest answer generated in a rollout", minimum=1)
    max_prompt_len: int = _f(256, "prompt tokens kept (the end of longer prompts)", minimum=8)
    temperature: float = _f(1.0, "sampling temperature of rollouts", minimum=0.01)
    top_k: int = _f(0, "sample among the k likeliest tokens; 0 = off", minimum=0)
    top_p: float = _f(1.0, "nucleus sampling mass; 1 = off", minimum=0.01)
    kl_coef: float = _f(0.05, "weight of the per-token KL penalty against the reference (SFT) model", minimum=0)
    ptx_coef: float = _f(0.1, "weight of the pretraining (SFT data) LM loss mixed into the actor loss", minimum=0)
    clip_eps: float = _f(0.2, "PPO ratio clip: the policy moves at most this much per update", minimum=0)
    value_clip: float = _f(0.2, "clip of the value update around the rollout's values", minimum=0)
    gamma: float = _f(1.0, "GAE discount", minimum=0)
    lam: float = _f(0.95, "GAE lambda: 1 = Monte-Carlo returns, 0 = one-step TD", minimum=0)
    critic_lr: float = _f(1e-4, "critic (value model) learning rate", minimum=0)
    whiten_advantages: bool = _f(True, "normalise advantages to mean 0, std 1 within a rollout")
    reward_clip: float = _f(0.0, "clip reward-model scores to [-c, c]; 0 = off", minimum=0)
    entropy_coef: float = _f(0.0, "entropy bonus weight (entropy is reported either way)", minimum=0)
    ratio_limit: float = _f(10.0, "skip a mini-batch update whose largest ratio exceeds this", minimum=1)
    sample_every: int = _f(5, "emit a sample (prompt, answer, reward) every N steps; 0 = never", minimum=0)
    memory_lean: bool = _f(True, "one base model carries actor and critic adapters; reference = adapters off")
    # against reward hacking (README "PPO": what each alarm means); GRPO scoring with a reward model uses
    # the reward and alarm keys below too
    kl_target: float = _f(
        2.0, "adaptive KL: the KL per answer (nats) kl_coef is steered to (Ziegler et al. 2019); 0 = fixed", minimum=0
    )
    kl_horizon: int = _f(256, "adaptive KL: answers over which kl_coef may change by up to 20%", minimum=1)
    reward_normalize: bool = _f(True, "score = (RM score - mean) / std of the RM's own scores on its eval pairs")
    reward_clip_seen: bool = _f(False, "clip scores to the range the RM gave its eval pairs")
    length_penalty: float = _f(0.0, "subtracted from the score per answer token (negative: a bonus per token)")
    alarm_kl: float = _f(0.0, "KL per answer that raises an alarm; 0 = 2 x kl_target (4 nats when fixed)", minimum=0)
    alarm_length_drop: float = _f(
        0.5, "alarm when answers shrink by this share of the first steps' length; 0 = off", minimum=0
    )
    alarm_gap: float = _f(
        1.5, "alarm when the policy outscores the SFT model's answers by this many RM eval margins; 0 = off", minimum=0
    )
    gap_every: int = _f(
        5, "steps between scoring the SFT model's answers to the rollout's prompts; 0 = never", minimum=0
    )
    alarm_patience: int = _f(3, "steps a sign must last before its alarm fires", minimum=1)
    stop_on_alarm: bool = _f(False, "stop at the first alarm; resume starts from the checkpoint before it")


DPO_LOSSES = ("sigmoid", "ipo", "simpo")


@dataclass
class DPO:
    loss: str = _f(
        "sigmoid",
        "sigmoid = DPO; ipo = IPO (squared, per-token log-ratios); simpo = SimPO (length-"
        "normalised log-probs, a target margin, no reference model)",
        choices=DPO_LOSSES,
    )
    beta: float = _f(
        0.1, "how far the policy may move from the reference: lower = further (SimPO: the reward scale)", minimum=0
    )
    label_smoothing: float = _f(
        0.0, "share of pairs assumed mislabelled (conservative DPO); 0 = trust every label", minimum=0
    )
    simpo_gamma: float = _f(0.5, "SimPO's target reward margin gamma between chosen and rejected", minimum=0)
    precompute_ref: bool = _f(
        False,
        "compute the reference's log-probs once before training and cache them in the "
        "run folder: each step then runs one model (full fine-tunes always do)",
    )


@dataclass
class ORPO:
    beta: float = _f(0.1, "weight of the odds-ratio term beside the SFT loss on the chosen answer", minimum=0)


@dataclass
class KTO:
    beta: float = _f(0.1, "how far the policy may move from the reference", minimum=0)
    desirable_weight: float = _f(1.0, "loss weight of desirable (good) examples", minimum=0)
    undesirable_weight: float = _f(1.0, "loss weight of undesirable (bad) examples", minimum=0)
    precompute_ref: bool = _f(
        False, "compute the reference's log-probs once before training (full fine-tunes always do)"
    )


GRPO_NORMS = ("sequence", "token", "constant")


@dataclass
class GRPO:
    group_size: int = _f(8, "answers sampled per prompt (G); advantages are taken within each group", minimum=2)
    prompts_per_step: int = _f(4, "prompts per GRPO step: G x this answers come from one batched generate", minimum=1)
    max_new_tokens: int = _f(128, "longest answer sampled", minimum=1)
    max_prompt_len: int = _f(256, "prompt tokens kept (the end of longer prompts)", minimum=8)
    temperature: float = _f(1.0, "sampling temperature: a group needs different answers to learn", minimum=0.01)
    top_k: int = _f(0, "sample among the k likeliest tokens; 0 = off", minimum=0)
    top_p: float = _f(1.0, "nucleus sampling mass; 1 = off", minimum=0.01)
    beta: float = _f(
        0.04, "KL weight against the reference (adapters off), k3 estimator; 0 = no KL and no reference pass", minimum=0
    )
    clip_low: float = _f(0.2, "ratio clip below 1 (1 - clip_low)", minimum=0)
    clip_high: float = _f(0.2, "ratio clip above 1 (1 + clip_high); DAPO's clip-higher raises it, e.g. 0.28", minimum=0)
    loss_norm: str = _f(
        "sequence",
        "sequence = each answer's token mean, then the mean over answers (GRPO); token = over every token of "
        "the batch (DAPO); constant = sum / (answers x max_new_tokens) (Dr. GRPO)",
        choices=GRPO_NORMS,
    )
    scale_rewards: bool = _f(True, "divide advantages by the group's reward std; false = Dr. GRPO's mean-only")
    updates_per_rollout: int = _f(
        1, "optimizer passes over each rollout (TRL's num_iterations); train.batch_size answers a mini-batch", minimum=1
    )
    dynamic_sampling: bool = _f(False, "sample again the prompts whose answers all tie (no signal), as DAPO does")
    max_resample: int = _f(2, "rounds of sampling again per step under dynamic_sampling", minimum=0)
    reward_model_weight: float = _f(1.0, "weight of the reward model's score beside the reward functions", minimum=0)
    format_regex: str = _f(r"(?s).*\S.*", "the built-in format reward: 1 when an answer fully matches this")
    length_target: int = _f(200, "the built-in length reward: characters allowed before it penalises", minimum=1)
    sample_every: int = _f(5, "emit a sample (prompt, answer, rewards) every N steps; 0 = never", minimum=0)


@dataclass
class Needs:
    cuda: bool = _f(False, "needs an NVIDIA GPU with CUDA")
    colossalai: bool = _f(False, "needs the [colossalai] extra")
    bitsandbytes: bool = _f(False, "needs bitsandbytes with a usable backend")
    min_vram_gib: float = _f(0.0, "smallest card this preset is meant for", minimum=0)


@dataclass
class Preset:
    name: str = _f("", "file stem; how --preset names it")
    description: str = _f("", "one line for the plan table")
    strategy: str = _f("naive", "naive (plain PyTorch), gemini, zero2 or zero2_cpu (ColossalAI)", choices=STRATEGIES)
    precision: str = _f("bf16", "weights/compute dtype on a GPU (runs on CPU use fp32)", choices=PRECISIONS)
    speed: float = _f(1.0, "relative throughput, used to rank presets that fit (see bench/RESULTS.md)", minimum=0)
    lora: Lora = field(default_factory=Lora)
    quant: Quant = field(default_factory=Quant)
    offload: Offload = field(default_factory=Offload)
    train: Train = field(default_factory=Train)
    ppo: PPO = field(default_factory=PPO)
    dpo: DPO = field(default_factory=DPO)
    orpo: ORPO = field(default_factory=ORPO)
    kto: KTO = field(default_factory=KTO)
    grpo: GRPO = field(default_factory=GRPO)
    needs: Needs = field(default_factory=Needs)
    path: str = field(default="", metadata={"help": "where it was read from", "internal": True})

    @property
    def full_finetune(self) -> bool:
        return self.lora.rank == 0

    @property
    def ppo_lean(self) -> bool:
        """PPO's layout, decided here once for the planner and the trainer: True is the memory-lean one
        (one base carries actor and critic adapters; reference = adapters off), False four models."""
        return self.strategy == "naive" and not self.full_finetune and self.ppo.memory_lean

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d.pop("path")
        return d

    def with_overrides(self, overrides: dict[str, Any], source: str = "overrides") -> Preset:
        """A copy with dotted keys replaced (``{"train.batch_size": 8, "lora.rank": 0}``), validated."""
        data = self.to_dict()
        for dotted, value in overrides.items():
            section, _, key = dotted.rpartition(".")
            target = data.get(section) if section else data
            if not isinstance(target, dict) or key not in target:
                raise PresetError(source, dotted, "no such setting")
            target[key] = value
        return from_dict(data, source, self.name)


def _check(value: Any, typ: Any, meta: Mapping[str, Any], file: str, key: str) -> Any:
    ok = {
        int: lambda v: isinstance(v, int) and not isinstance(v, bool),
        float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
        bool: lambda v: isinstance(v, bool),
        str: lambda v: isinstance(v, str),
    }
    if typ == "str | list":
        if not (isinstance(value, str) or (isinstance(value, list) and all(isinstance(x, str) for x in value))):
            raise PresetError(file, key, f"expected a string or a list of strings, got {value!r}")
    elif typ in ok:
        if not ok[typ](value):
            raise PresetError(file, key, f"expected {typ.__name__}, got {type(value).__name__} {value!r}")
        if typ is float:
            value = float(value)
    if meta.get("choices") and value not in meta["choices"]:
        raise PresetError(file, key, f"{value!r} is not one of {', '.join(map(repr, meta['choices']))}")
    if meta.get("min") is not None and value < meta["min"]:
        raise PresetError(file, key, f"{value!r} is below the minimum {meta['min']}")
    return value


def _build(cls: Any, data: dict[str, Any], file: str, prefix: str) -> Any:
    hints = get_type_hints(cls)
    names = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
    kwargs = {}
    for key, value in data.items():
        dotted = prefix + key
        if key not in names:
            raise PresetError(file, dotted, f"unknown key (known: {', '.join(names)})")
        typ = hints[key]
        if dataclasses.is_dataclass(typ):
            if not isinstance(value, dict):
                raise PresetError(file, dotted, "expected a table")
            kwargs[key] = _build(typ, value, file, dotted + ".")
        else:
            if isinstance(typ, types.UnionType):  # the one union field: lora.targets
                typ = "str | list"
            kwargs[key] = _check(value, typ, names[key].metadata, file, dotted)
    return cls(**kwargs)


def from_dict(data: dict[str, Any], file: str | Path, name: str) -> Preset:
    preset: Preset = _build(Preset, {**data, "name": data.get("name") or name}, str(file), "")
    preset.path = str(file)
    _check_rules(preset, str(file))
    return preset


def _check_rules(p: Preset, file: str) -> None:
    """Combinations that the strategies themselves refuse, caught before anything loads."""
    if p.strategy == "gemini" and not p.full_finetune:
        raise PresetError(file, "lora.rank", "ColossalAI's GeminiPlugin does not support LoRA; set 0 (full fine-tune)")
    if p.strategy == "gemini" and p.offload.placement == "auto" and p.train.accumulation_steps > 1:
        raise PresetError(file, "train.accumulation_steps", "Gemini's auto placement refuses gradient accumulation > 1")
    if p.strategy != "naive" and p.quant.bits:
        raise PresetError(file, "quant.bits", f"quantized bases are for the naive strategy, not {p.strategy}")
    if p.quant.bits and p.full_finetune:
        raise PresetError(file, "quant.bits", "a quantized base cannot be fully fine-tuned; give lora.rank > 0")
    if p.strategy != "naive" and p.precision == "fp32":
        raise PresetError(file, "precision", f"{p.strategy} trains in fp16/bf16 mixed precision")
    for key in ("optim_frac", "param_frac"):
        if getattr(p.offload, key) > 1:
            raise PresetError(file, f"offload.{key}", "a fraction between 0 and 1")
    for key in ("top_p", "lam", "gamma"):
        if getattr(p.ppo, key) > 1:
            raise PresetError(file, f"ppo.{key}", "at most 1")
    if p.strategy == "naive" and (p.offload.optim_frac or p.offload.param_frac):
        raise PresetError(file, "offload", "offload fractions need the gemini strategy")


def load_file(path: str | Path) -> Preset:
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise PresetError(path, None, f"not valid TOML ({exc})") from exc
    except OSError as exc:
        raise PresetError(path, None, f"cannot read ({exc.strerror})") from exc
    return from_dict(data, path, path.stem)


def _shipped_files() -> list[Path]:
    folder = resources.files("coati_tui.builtin_presets")
    return sorted(Path(str(p)) for p in folder.iterdir() if p.name.endswith(".toml"))


def preset_files(extra_dir: Path | None = None) -> dict[str, Path]:
    """name -> file; a user's preset of the same name replaces the shipped one."""
    files = {p.stem: p for p in _shipped_files()}
    user = extra_dir or paths.user_presets_dir()
    if user.is_dir():
        files.update({p.stem: p for p in sorted(user.glob("*.toml"))})
    return files


def load_all(extra_dir: Path | None = None) -> dict[str, Preset]:
    return {name: load_file(path) for name, path in preset_files(extra_dir).items()}


def load(name_or_path: str, extra_dir: Path | None = None) -> Preset:
    """A preset by name (``lora_naive``) or by file path."""
    if name_or_path.endswith(".toml") or "/" in name_or_path:
        return load_file(name_or_path)
    files = preset_files(extra_dir)
    if name_or_path not in files:
        raise PresetError(name_or_path, None, f"no such preset (have: {', '.join(files)})")
    return load_file(files[name_or_path])


def field_help() -> dict[str, str]:
    """``{"train.batch_size": "sequences per micro-batch", ...}`` for tooltips and docs."""
    out = {}

    def walk(cls: type, prefix: str) -> None:
        hints = get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if f.metadata.get("internal"):
                continue
            if dataclasses.is_dataclass(hints[f.name]):
                walk(hints[f.name], prefix + f.name + ".")
            else:
                out[prefix + f.name] = f.metadata.get("help", "")

    walk(Preset, "")
    return out
