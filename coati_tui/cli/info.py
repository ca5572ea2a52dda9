"""`profile`, `plan` and `presets`: what this machine has, what fits on it, the presets to choose from."""

from __future__ import annotations

import json

import typer

from coati_tui.cli.common import fail


def profile(as_json: bool = typer.Option(False, "--json", help="print JSON instead of a table")) -> None:
    """GPUs, CPU RAM, cores, free disk and installed stacks (NVML + psutil; never imports torch)."""
    from coati_tui.core import hardware

    prof = hardware.profile()
    if as_json:
        typer.echo(json.dumps(prof.to_dict(), indent=2))
        return
    from coati_tui.host import render

    render.print_profile(prof)


def plan(
    model: str = typer.Option(
        ..., "--model", "-m", help="model folder, run folder or cached hub id (config.json is read)"
    ),
    stage: str | None = typer.Option(None, "--stage", help="sft, rm or ppo (default: all three)"),
    batch_size: int | None = typer.Option(None, "--batch-size", min=1, help="default: each preset's"),
    seq_len: int | None = typer.Option(None, "--seq-len", min=8, help="default: each preset's max_len"),
    gpu_mem: str | None = typer.Option(None, "--gpu-mem", help="plan for a described GPU, e.g. 12GiB"),
    cpu_mem: str | None = typer.Option(None, "--cpu-mem", help="plan for described RAM, e.g. 64GiB"),
    preset: list[str] | None = typer.Option(None, "--preset", help="only these presets (repeatable)"),
    breakdown: bool = typer.Option(False, "--breakdown", help="show what each estimate is made of"),
    allow_shorter: bool = typer.Option(
        False, "--allow-shorter", help="the search may shorten max length and rollouts to fit (it says what)"
    ),
    as_json: bool = typer.Option(False, "--json", help="print JSON"),
) -> None:
    """Peak GPU and CPU memory of every preset x stage, what fits, and the preset to use. When a preset's
    settings do not fit, the micro-batch, checkpointing and offload that do (flags you give stay fixed)."""
    from coati_tui.core import hardware, modelinfo, planner, presets
    from coati_tui.core.run_config import STAGES
    from coati_tui.core.units import parse_bytes

    stages = planner.STAGES  # the table's columns; any stage by name
    if stage:
        if stage not in STAGES:
            fail(f"--stage must be one of {', '.join(STAGES)}, not {stage!r}")
        stages = (stage,)
    try:
        arch = modelinfo.Arch.from_config(modelinfo.read_config(model))
        chosen = presets.load_all()
        if preset:
            missing = [p for p in preset if p not in chosen]
            if missing:
                fail(f"no preset {', '.join(missing)} (have: {', '.join(chosen)})")
            chosen = {k: v for k, v in chosen.items() if k in preset}
        prof = hardware.profile()
        machine = planner.Machine.from_profile(prof)
        if gpu_mem or cpu_mem:
            machine = planner.Machine.described_as(
                parse_bytes(gpu_mem) if gpu_mem else machine.gpu_total_bytes,
                parse_bytes(cpu_mem) if cpu_mem else machine.cpu_total_bytes,
            )
    except (modelinfo.ModelError, presets.PresetError, ValueError) as exc:
        fail(str(exc))
    result = planner.plan(arch, chosen, machine, stages, batch_size, seq_len, model=model, allow_shorter=allow_shorter)
    if as_json:
        typer.echo(json.dumps(result.to_dict(), indent=2))
        return
    from coati_tui.host import render

    render.print_plan(result, breakdown=breakdown)


def list_presets(as_json: bool = typer.Option(False, "--json", help="print JSON")) -> None:
    """The presets (shipped and your own in ~/coati-tui/presets), validated."""
    from coati_tui.core import presets

    try:
        loaded = presets.load_all()
    except presets.PresetError as exc:
        fail(str(exc))
    if as_json:
        typer.echo(json.dumps({n: {**p.to_dict(), "path": p.path} for n, p in loaded.items()}, indent=2))
        return
    from coati_tui.host import render

    render.print_presets(loaded)
