"""A run's resolved configuration: what the CLI (or the app) decided, written to ``config.toml``.

The child trainer reads only this file, so a run folder alone says how to reproduce or resume it.
No torch here.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_origin, get_type_hints

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

import tomli_w

from coati_tui.core import presets
from coati_tui.core.errors import ConfigError
from coati_tui.core.presets import Preset

STAGES = ("sft", "rm", "ppo", "dpo", "orpo", "kto", "grpo")
# the preference methods: trained on pairs (KTO: answers labelled good or bad) without a reward model
PREFERENCE_STAGES = ("dpo", "orpo", "kto")
RM_LOSSES = ("log_sig", "log_exp")


@dataclass
class RunConfig:
    stage: str
    model: str  # resolved model folder (PPO: the actor's start, an SFT output)
    data: str  # SFT conversations, preference pairs, or PPO prompts
    preset: Preset = field(default_factory=Preset)
    eval_data: str = ""  # a separate held-out file; else eval_split of data
    eval_split: float = 0.05  # share of data held out for eval events
    max_datasets_size: int = 0  # 0: every record
    max_steps: int = 0  # 0: max_epochs decides
    seed: int = 42
    save_interval: int = 100  # optimizer steps between checkpoints (a cancel always checkpoints)
    keep_checkpoints: int = 2
    eval_interval: int = 0  # optimizer steps between evals; 0: once per epoch and at the end
    template: str = ""  # named fallback chat template; "" = the tokenizer's own
    loss: str = "log_sig"  # reward model loss
    tensorboard: bool = False
    reward: str = ""  # PPO: the reward model (an RM run's output); GRPO: one, optionally
    reward_fns: list[str] = field(default_factory=list)  # GRPO: reward functions (trainer.rewards specs)
    ptx_data: str = ""  # PPO: SFT data for the PTX loss; "" = no PTX loss
    task: str = ""  # PPO: a built-in task whose true score eval reports ("demo")
    trust_remote_code: bool = False  # the model folder may run its own code (auto_map): --trust-remote-code
    planned: str = ""  # what the planner changed from the preset to fit the machine ("batch 4 -> 1, ...")

    def validate(self) -> None:
        if self.stage not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}, not {self.stage!r}")
        if self.loss not in RM_LOSSES:
            raise ValueError(f"--loss must be one of {RM_LOSSES}, not {self.loss!r}")
        if self.stage == "ppo" and not self.reward:
            raise ValueError("PPO needs --reward (a reward model or an RM run folder)")
        if self.stage == "grpo" and not (self.reward or self.reward_fns):
            raise ValueError("GRPO needs a reward: --reward-fn FILE.py:NAME (or a built-in) and/or --reward RM_RUN")
        p = self.preset
        if self.stage == "ppo" and p.strategy == "gemini" and p.offload.placement == "auto":
            raise ValueError(
                f'preset {p.name}: PPO under Gemini needs offload.placement = "static"; "auto" '
                "must see a training step before anything is generated, and PPO generates first"
            )
        if not 0 <= self.eval_split < 1:
            raise ValueError(f"--eval-split must be in [0, 1), not {self.eval_split}")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["preset"] = self.preset.to_dict()
        return d

    def write(self, run_dir: Path) -> Path:
        path = Path(run_dir) / "config.toml"
        header = (
            f"# coati-tui run: {self.stage} with preset {self.preset.name}. Resume or replay with\n"
            f"#   coati-tui train {self.stage} --resume {run_dir}\n"
        )
        path.write_text(header + tomli_w.dumps(self.to_dict()), encoding="utf-8")
        return path

    @classmethod
    def read(cls, run_dir: Path) -> RunConfig:
        path = Path(run_dir) / "config.toml"
        if not path.is_file():
            raise ConfigError(f"{run_dir}: no config.toml (not a coati-tui run folder)")
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"{path}: unreadable as TOML ({exc})") from exc
        if not isinstance(data.get("preset"), dict):
            raise ConfigError(f"{path}: preset: missing, or not a table")
        try:
            preset = presets.from_dict(data.pop("preset"), path, "preset")
        except presets.PresetError as exc:  # its keys are the [preset] table's: say so
            where = f"{path}: {exc.key}: " if exc.key else f"{path}: "
            raise ConfigError(f"{path}: preset.{exc.key or ''}: {str(exc).removeprefix(where)}") from exc
        _check_types(data, path)
        cfg = cls(preset=preset, **data)
        try:
            cfg.validate()
        except ValueError as exc:
            raise ConfigError(f"{path}: {exc}") from exc
        return cfg


def _check_types(data: dict[str, Any], path: Path) -> None:
    """Each key of a config.toml is a RunConfig field of its type: else a ConfigError naming key and file."""
    hints = get_type_hints(RunConfig)
    required = {f.name for f in dataclasses.fields(RunConfig) if f.default is dataclasses.MISSING}
    required.discard("preset")
    for key, value in data.items():
        typ = hints.get(key)
        if typ is None or key == "preset":
            raise ConfigError(f"{path}: {key}: unknown key (known: {', '.join(sorted(hints))})")
        if get_origin(typ) is list:  # list[str]
            ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
            if not ok:
                raise ConfigError(f"{path}: {key}: expected a list of strings, got {value!r}")
            continue
        ok = isinstance(value, typ) and not (typ is int and isinstance(value, bool))
        if typ is float and isinstance(value, int) and not isinstance(value, bool):
            data[key], ok = float(value), True
        if not ok:
            raise ConfigError(f"{path}: {key}: expected {typ.__name__}, got {type(value).__name__} {value!r}")
    missing = sorted(required - set(data))
    if missing:
        raise ConfigError(f"{path}: missing {', '.join(missing)}")
