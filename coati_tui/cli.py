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


STRATEGY_ALIASES = {"naive": "lora_naive", "colossalai_gemini": "gemini_offload", "colossalai_zero2_cpu": "zero2_cpu"}


@app.command(context_settings={"allow_interspersed_args": True})
def train(
    stage: str = typer.Argument(..., help="sft or rm"),
    model: Optional[str] = typer.Option(None, "--model", "--pretrain", "-m",
                                        help="model folder, earlier run folder, or cached hub id"),
    data: Optional[str] = typer.Option(None, "--data", "--dataset", help=".jsonl/.json/.csv/.parquet or a datasets folder"),
    preset_name: Optional[str] = typer.Option(None, "--preset", help="preset name or .toml file (default: the planner's pick)"),
    strategy: Optional[str] = typer.Option(None, "--strategy", help="ColossalChat spelling: naive | colossalai_gemini | colossalai_zero2_cpu"),
    out: Optional[Path] = typer.Option(None, "--out", "--save_path", "--save-path", help="run folder (default: ~/coati-tui/runs/...)"),
    resume: Optional[Path] = typer.Option(None, "--resume", help="continue this run folder from its last checkpoint"),
    eval_data: Optional[str] = typer.Option(None, "--eval-data", help="held-out file (default: --eval-split of --data)"),
    lora_rank: Optional[int] = typer.Option(None, "--lora-rank", "--lora_rank", min=0, help="0 = full fine-tune"),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", "--batch_size", min=1),
    accumulation_steps: Optional[int] = typer.Option(None, "--accumulation-steps", "--accumulation_steps", min=1),
    lr: Optional[float] = typer.Option(None, "--lr"),
    max_epochs: Optional[int] = typer.Option(None, "--max-epochs", "--max_epochs", min=1),
    max_len: Optional[int] = typer.Option(None, "--max-len", "--max_len", min=8),
    grad_checkpointing: Optional[bool] = typer.Option(None, "--grad-checkpointing/--no-grad-checkpointing"),
    grad_checkpoint: bool = typer.Option(False, "--grad_checkpoint", hidden=True),
    max_datasets_size: int = typer.Option(0, "--max-datasets-size", "--max_datasets_size", min=0, help="0 = all"),
    max_steps: int = typer.Option(0, "--max-steps", min=0, help="stop after N optimizer steps (0 = epochs decide)"),
    seed: int = typer.Option(42, "--seed"),
    save_interval: int = typer.Option(100, "--save-interval", min=0, help="optimizer steps between checkpoints"),
    eval_split: float = typer.Option(0.05, "--eval-split", min=0.0, max=0.9),
    template: str = typer.Option("", "--template", help="fallback chat template for tokenizers without one: coati"),
    loss: str = typer.Option("log_sig", "--loss", help="reward model loss: log_sig | log_exp"),
    tensorboard: bool = typer.Option(False, "--tensorboard", help="also write TensorBoard scalars"),
    nproc_per_node: int = typer.Option(1, "--nproc-per-node", "--nproc_per_node", min=1, help="processes (GPUs) on this node: runs under torchrun"),
    nnodes: int = typer.Option(1, "--nnodes", min=1),
    node_rank: int = typer.Option(0, "--node-rank", min=0),
    master_addr: str = typer.Option("127.0.0.1", "--master-addr"),
    master_port: int = typer.Option(0, "--master-port", help="default: a free port (one node), 29500 (several)"),
    as_json: bool = typer.Option(False, "--json", help="print the event stream (JSON lines) instead of progress"),
) -> None:
    """Train a stage in a child process; every app run can be replayed with this command."""
    from coati_tui import runs
    from coati_tui.data import formats
    from coati_tui.train.config import RunConfig

    if stage not in ("sft", "rm"):
        _fail(f"stage must be sft or rm, not {stage!r} (PPO arrives with `coati-tui train ppo`)")
    if resume:
        try:
            cfg = RunConfig.read(resume)
        except ValueError as exc:
            _fail(str(exc))
        if cfg.stage != stage:
            _fail(f"{resume} is a {cfg.stage} run, not {stage}")
        run_dir = resume
    else:
        if not model or not data:
            _fail("--model and --data are required (or --resume RUN_DIR)")
        cfg = _resolve_config(stage, model, data, preset_name, strategy, locals())
        try:
            run_dir = runs.prepare(cfg, out)  # the data's format is checked before anything heavy starts
        except formats.DataError as exc:
            _fail(str(exc))
    why = runs.blocked(cfg.preset)
    if why:
        _fail(why)
    launch = runs.Launch(nproc_per_node, nnodes, node_rank, master_addr, master_port)
    raise typer.Exit(_watch(run_dir, launch, as_json))


def _resolve_config(stage, model, data, preset_name, strategy, opts):
    from coati_tui import modelinfo, presets
    from coati_tui.train import config

    if strategy:
        if strategy not in STRATEGY_ALIASES:
            _fail(f"--strategy must be one of {', '.join(STRATEGY_ALIASES)}")
        preset_name = preset_name or STRATEGY_ALIASES[strategy]
    overrides = {f"train.{k}": opts[k] for k in ("batch_size", "accumulation_steps", "lr", "max_epochs", "max_len")
                 if opts[k] is not None}
    if opts["lora_rank"] is not None:
        overrides["lora.rank"] = opts["lora_rank"]
    if opts["grad_checkpointing"] is not None or opts["grad_checkpoint"]:
        overrides["train.grad_checkpointing"] = bool(opts["grad_checkpointing"] or opts["grad_checkpoint"])
    try:
        return config.build(stage, model, data, preset_name, overrides, eval_data=opts["eval_data"] or "",
                            eval_split=opts["eval_split"], max_datasets_size=opts["max_datasets_size"],
                            max_steps=opts["max_steps"], seed=opts["seed"], save_interval=opts["save_interval"],
                            template=opts["template"], loss=opts["loss"], tensorboard=opts["tensorboard"])
    except (modelinfo.ModelError, presets.PresetError, ValueError) as exc:
        _fail(str(exc))


def _watch(run_dir: Path, launch, as_json: bool) -> int:
    """Run the child, show its events, forward nothing: Ctrl-C reaches the child too (same process group),
    which finishes its step, checkpoints and exits 0."""
    import signal

    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from coati_tui import events, runs
    from coati_tui.units import fmt_bytes

    console = Console(stderr=True)
    proc = runs.launch(run_dir, launch)
    signal.signal(signal.SIGINT, lambda *_: console.print("[yellow]stopping: the trainer checkpoints first…[/]"))
    last_error = None
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TimeRemainingColumn(), TextColumn("{task.fields[info]}"), console=console,
                  disable=as_json) as bar:
        task = bar.add_task("starting", total=None, info="")
        for ev in events.follow(proc.stdout):
            if as_json:
                print(events.json.dumps(ev, ensure_ascii=False), flush=True)
            kind = ev["type"]
            if kind == "start":
                bar.update(task, description=f"{ev['stage']} · {ev['strategy']} · {ev['device']}",
                           total=ev["total_steps"], completed=ev.get("resumed_from", 0))
            elif kind == "step":
                bar.update(task, completed=ev["step"],
                           info=f"loss {ev['loss']:.4f} · {ev['tokens_per_s']:.0f} tok/s · RAM {fmt_bytes(ev['cpu_rss'])}")
            elif kind in ("log", "checkpoint", "eval"):
                msg = ev.get("message") or (f"checkpoint {ev['path']}" if kind == "checkpoint" else
                                            "eval " + ", ".join(f"{k} {v:.4g}" for k, v in ev["metrics"].items()))
                bar.console.print(f"[dim]{msg}[/]")
            elif kind == "error":
                last_error = ev
            elif kind == "done":
                where = ev.get("final") or ev.get("resume")
                bar.console.print(f"[green]{ev['status']}[/] at step {ev['step']}: {where}")
    code = proc.wait()
    if last_error and not as_json:
        console.print(f"[red]{last_error['kind']}[/]: {last_error['message']}")
        for line in last_error["log_tail"][-8:]:
            console.print(f"[dim]  {line}[/]")
    if code and not last_error and not as_json:
        console.print(f"[red]trainer exited with {code}[/]; see {run_dir}/child.log")
    console.print(f"run folder: {run_dir}")
    return code


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
