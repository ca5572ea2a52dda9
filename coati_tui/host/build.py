"""Choices -> a validated RunConfig: what the CLI, the app and a retry all call before a run folder exists.

Host side (no torch): the planner picks the preset when the user named none.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from coati_tui.core import presets
from coati_tui.core.run_config import RunConfig

if TYPE_CHECKING:
    from coati_tui.core import planner


def build(
    stage: str,
    model: str,
    data: str,
    preset_name: str | None = None,
    overrides: dict[str, Any] | None = None,
    eval_data: str = "",
    reward: str = "",
    ptx_data: str = "",
    allow_shorter: bool = False,
    gpu_mem: int = 0,
    cpu_mem: int = 0,
    **settings: Any,
) -> RunConfig:
    """A validated RunConfig from what a user chose. No preset: the planner's pick for this machine (or the
    memory ``gpu_mem`` / ``cpu_mem`` describe). When the preset's settings do not fit, the planner's search
    changes what costs no quality (the micro-batch, checkpointing, offload; with ``allow_shorter`` also the
    length), never a key in ``overrides``; ``RunConfig.planned`` says what it changed.
    Raises ModelError / PresetError / ValueError with a message fit to show. The model's files are checked
    here (whole, no custom code unless ``trust_remote_code``), so a bad folder leaves no run folder behind."""
    from coati_tui.core import modelinfo, plan_search, planner

    trust = bool(settings.get("trust_remote_code", False))
    folder = modelinfo.check_model(model, trust)
    overrides = overrides or {}
    arch = modelinfo.Arch.from_config(modelinfo.read_config(folder))
    machine = this_machine(gpu_mem, cpu_mem)
    if not preset_name:
        result = planner.plan(
            arch, _each_with(overrides), machine, (stage,), fixed=overrides, allow_shorter=allow_shorter
        )
        preset_name = result.recommended_by_stage.get(stage) or "lora_naive"
    preset = presets.load(preset_name).with_overrides(overrides, "overrides")
    row = planner.plan_row(arch, preset, stage, machine, overrides, allow_shorter, planner.unavailable(preset, machine))
    if row.fits and row.changes:
        preset = preset.with_overrides(row.overrides, "the planner's settings")
        settings["planned"] = plan_search.describe(row.changes)
    if reward:
        reward = str(modelinfo.check_model(reward, trust).absolute())
    if settings.get("reward_fns"):
        settings["reward_fns"] = [_abs_spec(spec) for spec in settings["reward_fns"]]
    cfg = RunConfig(
        stage=stage,
        model=str(folder.absolute()),
        data=_abs(data),
        preset=preset,
        eval_data=_abs(eval_data),
        reward=reward,
        ptx_data=_abs(ptx_data),
        **settings,
    )
    cfg.validate()
    return cfg


def this_machine(gpu_mem: int = 0, cpu_mem: int = 0) -> planner.Machine:
    """This machine as the planner sees it, its GPU and RAM replaced by ``gpu_mem`` / ``cpu_mem`` when given
    (a budget: "train as if it had 8 GiB"); its stacks stay the real ones."""
    from coati_tui.core import hardware, planner

    machine = planner.Machine.from_profile(hardware.profile())
    if gpu_mem:
        if not machine.gpu_total_bytes:
            raise ValueError("--gpu-mem: this machine has no CUDA GPU to budget")
        machine.gpu_total_bytes = gpu_mem
    if cpu_mem:
        machine.cpu_total_bytes = cpu_mem
    return machine


def _each_with(overrides: dict[str, Any]) -> dict[str, presets.Preset]:
    """Every preset with the user's settings; those that refuse them (lora.rank on a full fine-tune) as they are."""
    out = {}
    for name, preset in presets.load_all().items():
        try:
            out[name] = preset.with_overrides(overrides)
        except presets.PresetError:
            out[name] = preset
    return out


def split_rewards(text: str) -> tuple[str, list[str]]:
    """(reward model folder, reward function specs) from one text box: entries apart by commas or spaces;
    a folder is the reward model (the last one named), anything else a reward function spec."""
    model, specs = "", []
    for entry in text.replace(",", " ").split():
        if Path(entry).expanduser().is_dir():
            model = entry
        else:
            specs.append(entry)
    return model, specs


def _abs_spec(spec: str) -> str:
    """A reward function spec with its file made absolute (``my.py:fn=0.5`` -> ``/abs/my.py:fn=0.5``);
    the trainer child and a later resume may run elsewhere. Built-ins stay as they are."""
    head, sep, weight = spec.rpartition("=")
    if not sep or any(c in weight for c in ":/\\"):  # no weight: the "=" is the path's (as rewards.parse_spec)
        head, sep, weight = spec, "", ""
    path, colon, name = head.rpartition(":")
    if colon and path.endswith(".py"):
        return _abs(path) + ":" + name + sep + weight
    return spec


def _abs(path: str) -> str:
    return str(Path(path).expanduser().absolute()) if path else ""
