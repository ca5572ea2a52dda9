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
    from coati_tui.core import hardware

    hardware.profile_early()  # overlaps the app's imports and start-up
    from coati_tui.ui.app import run_app

    run_app(model=model)


@app.command()
def profile(as_json: bool = typer.Option(False, "--json", help="print JSON instead of a table")) -> None:
    """GPUs, CPU RAM, cores, free disk and installed stacks (NVML + psutil; never imports torch)."""
    from coati_tui.core import hardware

    prof = hardware.profile()
    if as_json:
        typer.echo(json.dumps(prof.to_dict(), indent=2))
        return
    from coati_tui.host import render

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
    from coati_tui.core import hardware, modelinfo, planner, presets
    from coati_tui.core.units import parse_bytes

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
    from coati_tui.host import render

    render.print_plan(result, breakdown=breakdown)


@app.command(name="presets")
def list_presets(as_json: bool = typer.Option(False, "--json", help="print JSON")) -> None:
    """The presets (shipped and your own in ~/coati-tui/presets), validated."""
    from coati_tui.core import presets

    try:
        loaded = presets.load_all()
    except presets.PresetError as exc:
        _fail(str(exc))
    if as_json:
        typer.echo(json.dumps({n: {**p.to_dict(), "path": p.path} for n, p in loaded.items()}, indent=2))
        return
    from coati_tui.host import render

    render.print_presets(loaded)


STRATEGY_ALIASES = {"naive": "lora_naive", "colossalai_gemini": "gemini_offload", "colossalai_zero2_cpu": "zero2_cpu"}


@app.command(context_settings={"allow_interspersed_args": True})
def train(
    stage: str = typer.Argument(..., help="sft, rm or ppo"),
    model: Optional[str] = typer.Option(None, "--model", "--pretrain", "-m",
                                        help="model folder, earlier run folder, or cached hub id"),
    data: Optional[str] = typer.Option(None, "--data", "--dataset", "--prompts", "--prompt_dataset",
                                       help=".jsonl/.json/.csv/.parquet or a datasets folder (PPO: prompts)"),
    reward: Optional[str] = typer.Option(None, "--reward", "--rm_pretrain", help="PPO: reward model or RM run folder"),
    ptx: Optional[str] = typer.Option(None, "--ptx", "--pretrain_dataset", help="PPO: SFT data for the PTX loss"),
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
    eval_interval: int = typer.Option(0, "--eval-interval", min=0, help="steps between evals (0: per epoch / PPO: at the end)"),
    kl_coef: Optional[float] = typer.Option(None, "--kl-coef", "--kl_coef", min=0, rich_help_panel="PPO"),
    ptx_coef: Optional[float] = typer.Option(None, "--ptx-coef", "--ptx_coef", min=0, rich_help_panel="PPO"),
    clip_eps: Optional[float] = typer.Option(None, "--clip-eps", min=0, rich_help_panel="PPO"),
    value_clip: Optional[float] = typer.Option(None, "--value-clip", min=0, rich_help_panel="PPO"),
    gamma: Optional[float] = typer.Option(None, "--gamma", min=0, max=1, rich_help_panel="PPO"),
    lam: Optional[float] = typer.Option(None, "--lambda", "--lam", min=0, max=1, rich_help_panel="PPO"),
    rollout_batch: Optional[int] = typer.Option(None, "--rollout-batch", "--experience_batch_size", min=1, rich_help_panel="PPO"),
    max_new_tokens: Optional[int] = typer.Option(None, "--max-new-tokens", min=1, rich_help_panel="PPO"),
    temperature: Optional[float] = typer.Option(None, "--temperature", min=0.01, rich_help_panel="PPO"),
    top_k: Optional[int] = typer.Option(None, "--top-k", min=0, rich_help_panel="PPO"),
    top_p: Optional[float] = typer.Option(None, "--top-p", min=0.01, max=1, rich_help_panel="PPO"),
    ppo_epochs: Optional[int] = typer.Option(None, "--ppo-epochs", min=1, rich_help_panel="PPO"),
    critic_lr: Optional[float] = typer.Option(None, "--critic-lr", min=0, rich_help_panel="PPO"),
    whiten_advantages: Optional[bool] = typer.Option(None, "--whiten/--no-whiten", rich_help_panel="PPO"),
    reward_clip: Optional[float] = typer.Option(None, "--reward-clip", min=0, rich_help_panel="PPO"),
    task: str = typer.Option("", "--task", hidden=True),
    as_json: bool = typer.Option(False, "--json", help="print the event stream (JSON lines) instead of progress"),
) -> None:
    """Train a stage in a child process; every app run can be replayed with this command."""
    from coati_tui.host import runs
    from coati_tui.data import formats
    from coati_tui.core.run_config import RunConfig

    if stage not in ("sft", "rm", "ppo"):
        _fail(f"stage must be sft, rm or ppo, not {stage!r}")
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
        if stage == "ppo" and not reward:
            _fail("PPO needs --reward (a reward model, or an RM run folder)")
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


PPO_OPTIONS = ("kl_coef", "ptx_coef", "clip_eps", "value_clip", "gamma", "lam", "rollout_batch", "max_new_tokens",
               "temperature", "top_k", "top_p", "ppo_epochs", "critic_lr", "whiten_advantages", "reward_clip")


def _resolve_config(stage, model, data, preset_name, strategy, opts):
    from coati_tui.core import modelinfo, presets
    from coati_tui.host.build import build

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
    overrides.update({f"ppo.{k}": opts[k] for k in PPO_OPTIONS if opts.get(k) is not None})
    try:
        return build(stage, model, data, preset_name, overrides, eval_data=opts["eval_data"] or "",
                            reward=opts.get("reward") or "", ptx_data=opts.get("ptx") or "",
                            eval_interval=opts.get("eval_interval", 0), task=opts.get("task", ""),
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

    from coati_tui.core import events
    from coati_tui.host import runs
    from coati_tui.core.units import fmt_bytes

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
                head = (f"reward {ev['reward_mean']:+.3f} · KL {ev['kl']:.3f}" if "reward_mean" in ev
                        else f"loss {ev['loss']:.4f}")
                bar.update(task, completed=ev["step"],
                           info=f"{head} · {ev['tokens_per_s']:.0f} tok/s · RAM {fmt_bytes(ev['cpu_rss'])}")
            elif kind == "sample":
                bar.console.print(f"[dim]sample @{ev['step']}: {ev['prompt']!r} -> {ev['response']!r} "
                                  f"(reward {ev.get('reward', float('nan')):+.3f})[/]")
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
def demo(
    out: Optional[Path] = typer.Option(None, "--out", help="data and model folder (default: ~/coati-tui/demo)"),
    ppo_steps: int = typer.Option(0, "--ppo-steps", min=0, help="PPO steps (default: the demo's 40)"),
    seed: int = typer.Option(0, "--seed"),
    resume: bool = typer.Option(False, "--resume", help="keep finished stages, resume a cancelled one"),
    as_json: bool = typer.Option(False, "--json", help="print the event streams (JSON lines)"),
) -> None:
    """The whole loop on a CPU in minutes: a tiny model and a synthetic bilingual task, SFT -> RM -> PPO.

    The task ("list three fruits" / "请列出三种水果") has a true score a program computes, so the demo
    prints whether each stage worked: the reward model's held-out accuracy, and the PPO model's true score
    against the SFT model's, with the KL it cost. The runs land in ~/coati-tui/runs/demo-*.
    """
    import shutil

    from coati_tui.data import demo as task
    from coati_tui.core import events, paths
    from coati_tui.host import runs
    from coati_tui.trainer.tiny import CORPUS, build_tiny_model
    from coati_tui.host.build import build

    root = out or paths.home() / "demo"
    console = _console()
    model = root / "model"
    if not (resume and (model / "config.json").is_file()):
        task.write_task(root / "data", seed)
        build_tiny_model(model, corpus=task.corpus() + CORPUS, vocab_size=512, hidden=64, layers=2, seed=seed)
    files = {name: root / "data" / f"{name}.jsonl" for name in ("sft", "prefs", "prompts", "test_prompts")}
    console.print(f"[bold]coati-tui demo[/]: data in {root / 'data'}, model in {model}")
    inputs = {"sft": (str(model), files["sft"]), "rm": (None, files["prefs"]), "ppo": (None, files["prompts"])}
    results: dict[str, list[dict]] = {}
    for stage in ("sft", "rm", "ppo"):
        spec = task.STAGES[stage]
        settings = dict(spec["settings"])
        if stage == "ppo" and ppo_steps:
            settings["max_steps"] = ppo_steps
        run_dir = paths.runs_dir() / f"demo-{stage}"
        state = runs.status(run_dir)["status"] if (run_dir / "config.toml").is_file() else None
        if resume and state == "completed":
            results[stage] = events.read(run_dir / "events.jsonl")
            console.print(f"[bold]{stage}[/]: done earlier ({run_dir})")
            continue
        if not (resume and state):
            shutil.rmtree(run_dir, ignore_errors=True)
            start = inputs[stage][0] or str(paths.runs_dir() / "demo-sft")
            extra = {}
            if stage == "ppo":
                extra = {"reward": str(paths.runs_dir() / "demo-rm"), "ptx_data": str(files["sft"]),
                         "eval_data": str(files["test_prompts"])}
            cfg = build(stage, start, str(inputs[stage][1]), "lora_naive", spec["overrides"], seed=seed,
                               **extra, **settings)
            runs.prepare(cfg, run_dir)
        console.print(f"\n[bold]{stage}[/] · replay: coati-tui train {stage} --resume {run_dir}")
        code = _watch(run_dir, runs.Launch(), as_json)
        results[stage] = events.read(run_dir / "events.jsonl")
        if code or runs.status(run_dir)["status"] != "completed":  # a failure, or cancelled: stop here
            console.print(f"stopped at {stage}; continue with: coati-tui demo --resume")
            raise typer.Exit(code)
    raise typer.Exit(_demo_report(results, console))


def _console():
    from rich.console import Console

    return Console(stderr=True)


def _demo_report(results: dict[str, list[dict]], console) -> int:
    """Each stage's figure and whether it met the demo's bar; 1 when one did not."""
    def evals(stage):
        return [e for e in results[stage] if e["type"] == "eval"]

    sft_loss = evals("sft")[-1]["metrics"].get("loss") if evals("sft") else None
    rm = evals("rm")[-1]["metrics"] if evals("rm") else {}
    ppo = evals("ppo")
    before, after = (ppo[0]["metrics"], ppo[-1]["metrics"]) if ppo else ({}, {})
    ok_rm = rm.get("accuracy", 0) >= 0.9
    ok_ppo = after.get("true_score", 0) > before.get("true_score", 1)
    console.print("\n[bold]demo results[/]")
    console.print(f"  SFT  held-out loss {sft_loss:.3f}" if sft_loss is not None else "  SFT  (no eval)")
    console.print(f"  RM   held-out accuracy {rm.get('accuracy', 0):.3f} (bar: >= 0.9) "
                  + ("[green]ok[/]" if ok_rm else "[red]below[/]"))
    console.print(f"  PPO  true score {before.get('true_score', float('nan')):.3f} (SFT model) -> "
                  f"{after.get('true_score', float('nan')):.3f} (PPO model), reward "
                  f"{before.get('reward', float('nan')):+.3f} -> {after.get('reward', float('nan')):+.3f}, "
                  f"KL {after.get('kl', float('nan')):.3f} nats/answer "
                  + ("[green]ok[/]" if ok_ppo else "[red]no gain[/]"))
    print(json.dumps({"sft_eval_loss": sft_loss, "rm_accuracy": rm.get("accuracy"),
                      "true_score_sft": before.get("true_score"), "true_score_ppo": after.get("true_score"),
                      "kl": after.get("kl")}))
    return 0 if ok_rm and ok_ppo else 1


@app.command()
def chat(
    model: str = typer.Argument(..., help="model folder, run folder (its final/) or cached hub id"),
    quant: str = typer.Option("none", "--quant", help="none | 8bit | 4bit (bitsandbytes) | gptq (a `coati-tui quantize` folder; they load as such anyway)"),
) -> None:
    """Open the app on its chat screen with this model loaded (in a child process)."""
    from coati_tui.core import hardware
    from coati_tui.worker.generate import QUANTS

    if quant not in QUANTS:
        _fail(f"--quant must be one of {', '.join(QUANTS)}")
    hardware.profile_early()
    from coati_tui.ui.app import run_app

    run_app(model=model, mode="chat", quant=quant)


@app.command()
def generate(
    model: str = typer.Argument(..., help="model folder, run folder (its final/) or cached hub id"),
    prompt: str = typer.Option(..., "--prompt", help="the user's message"),
    system: str = typer.Option("", "--system", help="a system prompt"),
    quant: str = typer.Option("none", "--quant", help="none | 8bit | 4bit (bitsandbytes) | gptq (a `coati-tui quantize` folder; they load as such anyway)"),
    max_new_tokens: int = typer.Option(256, "--max-new-tokens", min=1),
    temperature: float = typer.Option(0.7, "--temperature", min=0.0, help="0 = greedy"),
    top_p: float = typer.Option(0.9, "--top-p", min=0.01, max=1.0),
    top_k: int = typer.Option(0, "--top-k", min=0),
    repetition_penalty: float = typer.Option(1.0, "--repetition-penalty", min=0.1),
    seed: Optional[int] = typer.Option(None, "--seed"),
    as_json: bool = typer.Option(False, "--json", help="print the worker's events (JSON lines)"),
) -> None:
    """Answer one prompt headless (for scripts), through the same generation worker the chat pane uses."""
    from coati_tui.core import events
    from coati_tui.worker.generate import QUANTS, spawn

    if quant not in QUANTS:
        _fail(f"--quant must be one of {', '.join(QUANTS)}")
    proc = spawn(model, quant)
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
    request = {"op": "generate", "id": "1", "messages": messages, "max_new_tokens": max_new_tokens,
               "temperature": temperature, "top_p": top_p, "top_k": top_k,
               "repetition_penalty": repetition_penalty, "seed": seed}
    code = 1
    for ev in events.follow(proc.stdout):
        if as_json:
            print(json.dumps(ev, ensure_ascii=False), flush=True)
        if ev["type"] == "loaded":
            proc.stdin.write(json.dumps(request, ensure_ascii=False) + "\n")
            proc.stdin.flush()
        elif ev["type"] == "token" and not as_json:
            print(ev["text"], end="", flush=True)
        elif ev["type"] == "answer":
            if not as_json:
                print()
            code = 0
            break
        elif ev["type"] == "error":
            if not as_json:
                typer.secho(f"error ({ev['kind']}): {ev['message']}", fg=typer.colors.RED, err=True)
            code = 2 if ev["kind"] == "config" else 1
            break
    proc.stdin.close()
    proc.wait(timeout=30)
    raise typer.Exit(code)


@app.command()
def quantize(
    model: str = typer.Argument(..., help="model folder, run folder (its final/) or cached hub id"),
    bits: int = typer.Option(4, "--bits", help="2, 3, 4 or 8"),
    group_size: int = typer.Option(128, "--group-size", help="weights per scale (-1: one per row)"),
    calib: Optional[str] = typer.Option(None, "--calib", help="calibration data (default: the run's own training data)"),
    out: Optional[Path] = typer.Option(None, "--out", help="output folder (default: MODEL-gptq-4bit-g128 beside it)"),
    samples: int = typer.Option(128, "--samples", min=1, help="calibration texts"),
    max_len: int = typer.Option(512, "--max-len", min=16, help="tokens per calibration text"),
) -> None:
    """Write a GPTQ checkpoint with gptqmodel that plain transformers, `chat` and `generate` load."""
    import time

    from rich.console import Console

    from coati_tui.worker import quantize as q

    console = Console(stderr=True)
    t0 = time.perf_counter()

    def say(message: str) -> None:
        console.print(f"[dim]{time.perf_counter() - t0:6.1f}s[/] {message}")

    try:
        out_dir = q.quantize(model, bits, group_size, calib, str(out) if out else None, samples, max_len, say)
    except q.QuantizeError as exc:
        _fail(str(exc))
    say("checking that it loads as users will load it (the generation worker's loader)")
    from coati_tui.worker.generate import WorkerError, load

    try:
        _, _, info = load(str(out_dir))
    except WorkerError as exc:
        _fail(f"{out_dir} was written but does not load: {exc}", 1)
    say(f"[green]done[/]: {out_dir} ({info['quant']}, weights {q.folder_bytes(out_dir) / 2**20:.1f} MiB on disk, "
        f"{info['memory_bytes'] / 2**20:.1f} MiB loaded on {info['device']})")
    typer.echo(str(out_dir))


@app.command()
def rank(
    model: Optional[str] = typer.Option(None, "--model", "-m", help="model A: a model or run folder"),
    model_b: Optional[str] = typer.Option(None, "--model-b", help="model B (default: two samples of model A)"),
    prompts: Optional[str] = typer.Option(None, "--prompts", help="prompt file (default: your saved chats)"),
    store: Optional[Path] = typer.Option(None, "--store", help="preference store (default: ~/coati-tui/prefs.sqlite)"),
    annotator: Optional[str] = typer.Option(None, "--annotator", help="who is labeling (default: your user name)"),
) -> None:
    """Open the app on its ranking pane: compare two answers, label, export, train the next reward model."""
    from coati_tui.core import hardware

    hardware.profile_early()
    from coati_tui.ui.app import run_app

    options = {"model": model, "model_b": model_b or "", "prompts": prompts or "", "annotator": annotator,
               "store": str(store) if store else None, "start": bool(model)}
    run_app(model=model, mode="rank", rank=options)


export_app = typer.Typer(help="Write labels out for other tools.", no_args_is_help=True)
app.add_typer(export_app, name="export")


@export_app.command("prefs")
def export_prefs(
    store: Path = typer.Argument(..., help="the preference store (.sqlite) the ranking pane writes"),
    fmt: str = typer.Option("coati", "--format", help="coati: ColossalChat's {context, chosen, rejected}; "
                                                     "trl: TRL's {prompt, chosen, rejected} (conversational)"),
    out: Optional[Path] = typer.Option(None, "--out", help="JSON lines file (default: STORE-FORMAT.jsonl beside it)"),
) -> None:
    """Export the pairs judged A or B (ties, skips and conflicting judgments are left out and counted)."""
    from coati_tui.data import prefstore

    if fmt not in ("coati", "trl"):
        _fail("--format must be coati or trl")
    out = out or store.with_name(f"{store.stem}-{fmt}.jsonl")
    try:
        n, left_out = prefstore.export(store, fmt, out)
    except prefstore.StoreError as exc:
        _fail(str(exc))
    typer.echo(f"{n} pairs -> {out} (left out: {left_out['tie']} ties, {left_out['skip']} skipped, "
               f"{left_out['conflict']} with conflicting judgments)")


@app.command()
def tiny(
    out: Path = typer.Argument(..., help="folder to write"),
    reward: bool = typer.Option(False, "--reward", help="a one-label reward model instead of a causal LM"),
    layers: int = typer.Option(2, min=1, max=8),
    hidden: int = typer.Option(64, min=16),
    seed: int = typer.Option(0),
) -> None:
    """Build a tiny Llama with a freshly trained tokenizer (for trying things out; no download)."""
    from coati_tui.trainer.tiny import build_tiny_model

    path = build_tiny_model(out, "reward" if reward else "causal", layers=layers, hidden=hidden, seed=seed)
    typer.echo(str(path))


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(main())
