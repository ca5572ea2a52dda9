"""The ``coati-tui`` command. With no command it opens the app; every other command runs headless.

Keep this module light: it is imported on every start, so heavy work is imported inside commands.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(
    add_completion=False,
    no_args_is_help=False,
    rich_markup_mode="rich",
    help="coati-tui: SFT -> reward model -> PPO on one consumer GPU, from a terminal. "
    "With no command, opens the app.",
)


def _fail(message: str, code: int = 2) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


@app.callback(invoke_without_command=True)
def _root(ctx: typer.Context,
          model: Optional[str] = typer.Option(None, "--model", help="model folder, run folder or cached hub id")) -> None:
    if ctx.invoked_subcommand is not None:
        return
    from coati_tui.app import run_app

    run_app(model=model)


@app.command()
def profile(as_json: bool = typer.Option(False, "--json", help="print JSON instead of a table")) -> None:
    """GPUs, CPU RAM, cores, free disk and installed stacks (NVML + psutil; never imports torch)."""
    from coati_tui import hardware

    prof = hardware.profile()
    if as_json:
        typer.echo(json.dumps(prof.to_dict(), indent=2))
        return
    from coati_tui import render

    render.print_profile(prof)


@app.command()
def plan(
    model: str = typer.Option(..., "--model", "-m", help="model folder, run folder or cached hub id (config.json is read)"),
    stage: Optional[str] = typer.Option(None, "--stage", help="sft, rm or ppo (default: all three)"),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", min=1, help="default: each preset's"),
    seq_len: Optional[int] = typer.Option(None, "--seq-len", min=8, help="default: each preset's max_len"),
    gpu_mem: Optional[str] = typer.Option(None, "--gpu-mem", help="plan for a described GPU, e.g. 12GiB"),
    cpu_mem: Optional[str] = typer.Option(None, "--cpu-mem", help="plan for described RAM, e.g. 64GiB"),
    preset: Optional[list[str]] = typer.Option(None, "--preset", help="only these presets (repeatable)"),
    breakdown: bool = typer.Option(False, "--breakdown", help="show what each estimate is made of"),
    as_json: bool = typer.Option(False, "--json", help="print JSON"),
) -> None:
    """Peak GPU and CPU memory of every preset x stage, what fits, and the preset to use."""
    from coati_tui import hardware, modelinfo, planner, presets
    from coati_tui.units import parse_bytes

    stages = planner.STAGES
    if stage:
        if stage not in planner.STAGES:
            _fail(f"--stage must be one of {', '.join(planner.STAGES)}, not {stage!r}")
        stages = (stage,)
    try:
        arch = modelinfo.Arch.from_config(modelinfo.read_config(model))
        chosen = presets.load_all()
        if preset:
            missing = [p for p in preset if p not in chosen]
            if missing:
                _fail(f"no preset {', '.join(missing)} (have: {', '.join(chosen)})")
            chosen = {k: v for k, v in chosen.items() if k in preset}
        prof = hardware.profile()
        machine = planner.Machine.from_profile(prof)
        if gpu_mem or cpu_mem:
            machine = planner.Machine.described_as(
                parse_bytes(gpu_mem) if gpu_mem else machine.gpu_total_bytes,
                parse_bytes(cpu_mem) if cpu_mem else machine.cpu_total_bytes,
            )
    except (modelinfo.ModelError, presets.PresetError, ValueError) as exc:
        _fail(str(exc))
    result = planner.plan(arch, chosen, machine, stages, batch_size, seq_len, model=model)
    if as_json:
        typer.echo(json.dumps(result.to_dict(), indent=2))
        return
    from coati_tui import render

    render.print_plan(result, breakdown=breakdown)


@app.command(name="presets")
def list_presets(as_json: bool = typer.Option(False, "--json", help="print JSON")) -> None:
    """The presets (shipped and your own in ~/coati-tui/presets), validated."""
    from coati_tui import presets

    try:
        loaded = presets.load_all()
    except presets.PresetError as exc:
        _fail(str(exc))
    if as_json:
        typer.echo(json.dumps({n: {**p.to_dict(), "path": p.path} for n, p in loaded.items()}, indent=2))
        return
    from coati_tui import render

    render.print_presets(loaded)


@app.command()
def tiny(
    out: Path = typer.Argument(..., help="folder to write"),
    reward: bool = typer.Option(False, "--reward", help="a one-label reward model instead of a causal LM"),
    layers: int = typer.Option(2, min=1, max=8),
    hidden: int = typer.Option(64, min=16),
    seed: int = typer.Option(0),
) -> None:
    """Build a tiny Llama with a freshly trained tokenizer (for trying things out; no download)."""
    from coati_tui.tiny import build_tiny_model

    path = build_tiny_model(out, "reward" if reward else "causal", layers=layers, hidden=hidden, seed=seed)
    typer.echo(str(path))


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(main())
