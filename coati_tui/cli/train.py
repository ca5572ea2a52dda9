"""`train`: one stage in a child process, watched from here (the app's runs replay with it)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from coati_tui.cli.common import fail
from coati_tui.core import colossalchat_flags as cc
from coati_tui.core import flags

if TYPE_CHECKING:
    from coati_tui.core.run_config import RunConfig
    from coati_tui.host.runs import Launch

# ColossalChat's --strategy spellings -> the preset that plays its part
STRATEGY_ALIASES = cc.STRATEGIES


def _flag(param: str) -> Any:
    """The option of a preset key, declared from the one table (coati_tui.core.flags)."""
    f = flags.BY_PARAM[param]
    decls = (f"{f.names[0]}/{f.off}", *f.names[1:]) if f.off else f.names
    return typer.Option(None, *decls, min=f.min, max=f.max, help=f.help or None, rich_help_panel=f.panel)


def train(
    stage: str = typer.Argument(..., help="sft, rm, ppo, dpo, orpo, kto or grpo"),
    prompt_file: str | None = typer.Argument(None, help="PPO/GRPO: the prompts (as train_prompts.py takes them)"),
    model: str | None = typer.Option(
        None,
        "--model",
        "-m",
        help="model folder, earlier run folder, or cached hub id; beside --pretrain: the family (bloom, llama...)",
    ),
    pretrain: str | None = typer.Option(None, "--pretrain", help="ColossalChat's name for the model folder"),
    data: str | None = typer.Option(
        None,
        "--data",
        "--dataset",
        "--prompts",
        "--prompt_dataset",
        help=".jsonl/.json/.csv/.parquet or a datasets folder (PPO: prompts)",
    ),
    reward: str | None = typer.Option(
        None, "--reward", "--rm_path", help="PPO: reward model or RM run folder (GRPO: optional)"
    ),
    rm_pretrain: str | None = typer.Option(None, "--rm_pretrain", help="PPO: the reward model without --rm_path"),
    rm_model: str | None = typer.Option(None, "--rm_model", help="the reward model's family, checked"),
    log_interval: str | None = typer.Option(None, "--log_interval", hidden=True),
    test: str | None = typer.Option(None, "--test", hidden=True),
    use_wandb: bool = typer.Option(False, "--use_wandb", hidden=True),
    reward_fn: list[str] | None = typer.Option(
        None,
        "--reward-fn",
        "--reward_functions",
        help="GRPO: FILE.py:NAME or a built-in (exact_answer, format, length, demo), =W for a weight; repeatable",
        rich_help_panel=flags.GRPO,
    ),
    ptx: str | None = typer.Option(None, "--ptx", "--pretrain_dataset", help="PPO: SFT data for the PTX loss"),
    preset_name: str | None = typer.Option(
        None, "--preset", help="preset name or .toml file (default: the planner's pick)"
    ),
    strategy: str | None = typer.Option(None, "--strategy", help=f"ColossalChat spelling: {' | '.join(cc.STRATEGIES)}"),
    out: Path | None = typer.Option(
        None, "--out", "--save_path", "--save-path", help="run folder (default: ~/coati-tui/runs/...)"
    ),
    resume: Path | None = typer.Option(None, "--resume", help="continue this run folder from its last checkpoint"),
    eval_data: str | None = typer.Option(None, "--eval-data", help="held-out file (default: --eval-split of --data)"),
    lora_rank: int | None = _flag("lora_rank"),
    batch_size: int | None = _flag("batch_size"),
    accumulation_steps: int | None = _flag("accumulation_steps"),
    lr: float | None = _flag("lr"),
    max_epochs: int | None = _flag("max_epochs"),
    max_len: int | None = _flag("max_len"),
    grad_checkpointing: bool | None = _flag("grad_checkpointing"),
    optim_offload: float | None = _flag("optim_offload"),
    param_offload: float | None = _flag("param_offload"),
    allow_shorter: bool = typer.Option(
        False, "--allow-shorter", help="the planner may shorten max length and rollouts to fit (it says what)"
    ),
    gpu_mem: str | None = typer.Option(None, "--gpu-mem", help="plan for this much GPU memory (default: the card's)"),
    cpu_mem: str | None = typer.Option(None, "--cpu-mem", help="plan for this much RAM (default: the machine's)"),
    max_datasets_size: int = typer.Option(0, "--max-datasets-size", "--max_datasets_size", min=0, help="0 = all"),
    max_steps: int = typer.Option(0, "--max-steps", min=0, help="stop after N optimizer steps (0 = epochs decide)"),
    seed: int = typer.Option(42, "--seed"),
    save_interval: int = typer.Option(100, "--save-interval", min=0, help="optimizer steps between checkpoints"),
    eval_split: float = typer.Option(0.05, "--eval-split", min=0.0, max=0.9),
    template: str = typer.Option("", "--template", help="fallback chat template for tokenizers without one: coati"),
    loss: str = typer.Option(
        "",
        "--loss",
        "--loss_fn",
        "--loss_type",
        help="rm: log_sig | log_exp (default log_sig); dpo: sigmoid | ipo | simpo (default: the preset's)",
    ),
    tensorboard: bool = typer.Option(False, "--tensorboard", help="also write TensorBoard scalars"),
    nproc_per_node: int = typer.Option(
        1, "--nproc-per-node", "--nproc_per_node", min=1, help="processes (GPUs) on this node: runs under torchrun"
    ),
    nnodes: int = typer.Option(1, "--nnodes", min=1),
    node_rank: int = typer.Option(0, "--node-rank", min=0),
    master_addr: str = typer.Option("127.0.0.1", "--master-addr"),
    master_port: int = typer.Option(0, "--master-port", help="default: a free port (one node), 29500 (several)"),
    eval_interval: int = typer.Option(
        0, "--eval-interval", min=0, help="steps between evals (0: per epoch / PPO: at the end)"
    ),
    kl_coef: float | None = _flag("kl_coef"),
    ptx_coef: float | None = _flag("ptx_coef"),
    clip_eps: float | None = _flag("clip_eps"),
    value_clip: float | None = _flag("value_clip"),
    gamma: float | None = _flag("gamma"),
    lam: float | None = _flag("lam"),
    rollout_batch: int | None = _flag("rollout_batch"),
    max_new_tokens: int | None = _flag("max_new_tokens"),
    temperature: float | None = _flag("temperature"),
    top_k: int | None = _flag("top_k"),
    top_p: float | None = _flag("top_p"),
    ppo_epochs: int | None = _flag("ppo_epochs"),
    critic_lr: float | None = _flag("critic_lr"),
    whiten_advantages: bool | None = _flag("whiten_advantages"),
    reward_clip: float | None = _flag("reward_clip"),
    kl_target: float | None = _flag("kl_target"),
    stop_on_alarm: bool | None = _flag("stop_on_alarm"),
    beta: float | None = _flag("beta"),
    label_smoothing: float | None = _flag("label_smoothing"),
    simpo_gamma: float | None = _flag("simpo_gamma"),
    precompute_ref: bool | None = _flag("precompute_ref"),
    desirable_weight: float | None = _flag("desirable_weight"),
    undesirable_weight: float | None = _flag("undesirable_weight"),
    group_size: int | None = _flag("group_size"),
    prompts_per_step: int | None = _flag("prompts_per_step"),
    clip_low: float | None = _flag("clip_low"),
    clip_high: float | None = _flag("clip_high"),
    loss_norm: str | None = _flag("loss_norm"),
    scale_rewards: bool | None = _flag("scale_rewards"),
    updates_per_rollout: int | None = _flag("updates_per_rollout"),
    dynamic_sampling: bool | None = _flag("dynamic_sampling"),
    reward_model_weight: float | None = _flag("reward_model_weight"),
    task: str = typer.Option("", "--task", hidden=True),
    trust_remote_code: bool = typer.Option(
        False, "--trust-remote-code", help="let the model folder run its own Python code (auto_map): read it first"
    ),
    as_json: bool = typer.Option(False, "--json", help="print the event stream (JSON lines) instead of progress"),
) -> None:
    """Train a stage in a child process; every app run can be replayed with this command."""
    from coati_tui.core import runlock
    from coati_tui.core.run_config import STAGES, RunConfig
    from coati_tui.data import formats
    from coati_tui.host import runs

    if stage not in STAGES:
        fail(f"stage must be one of {', '.join(STAGES)}, not {stage!r}")
    for flag, given in (("--log_interval", log_interval), ("--test", test), ("--use_wandb", use_wandb or None)):
        if given is not None:
            typer.echo(cc.ignored(flag), err=True)
    if prompt_file:
        if data and data != prompt_file:
            fail(f"prompts given twice: {prompt_file} and --data {data}")
        data = prompt_file
    model, reward = _colossalchat_models(model, pretrain, reward or rm_pretrain, rm_model)
    target = resume or out
    try:  # the trainer refuses a second writer too; this says so before a file is touched
        if target:
            runlock.check_free(target)
    except runlock.RunLocked as exc:
        fail(str(exc))
    if resume:
        try:
            cfg = RunConfig.read(resume)
        except ValueError as exc:
            fail(str(exc))
        if cfg.stage != stage:
            fail(f"{resume} is a {cfg.stage} run, not {stage}")
        run_dir = resume
    else:
        if not model or not data:
            if model and stage == "rm":  # train_reward_model.py downloaded Dahoas/rm-static by default
                fail("--dataset is required: ColossalChat's default (Dahoas/rm-static) is a hub download; give a file")
            fail("--model and --data are required (or --resume RUN_DIR)")
        if stage == "ppo" and not reward:
            fail("PPO needs --reward (a reward model, or an RM run folder)")
        if stage == "grpo" and not (reward or reward_fn):
            fail(
                "GRPO needs a reward: --reward-fn FILE.py:NAME (or a built-in: exact_answer, format, length) "
                "and/or --reward RM_RUN"
            )
        cfg = _resolve_config(stage, model, data, preset_name, strategy, locals())
        if cfg.planned:
            typer.echo(f"planner: {cfg.preset.name} {cfg.stage} fits this machine with {cfg.planned}", err=True)
        try:
            run_dir = runs.prepare(cfg, out)  # the data's format is checked before anything heavy starts
        except formats.DataError as exc:
            fail(str(exc))
    why = runs.blocked(cfg.preset)
    if why:
        fail(why)
    launch = runs.Launch(nproc_per_node, nnodes, node_rank, master_addr, master_port)
    raise typer.Exit(watch(run_dir, launch, as_json))


def _colossalchat_models(
    model: str | None, pretrain: str | None, reward: str | None, rm_model: str | None
) -> tuple[str | None, str | None]:
    """ColossalChat's --pretrain PATH --model FAMILY (and --rm_pretrain/--rm_path with --rm_model): the path
    is the model, the family is checked against its config.json. --model alone is the model, as ever."""
    from coati_tui.core import modelinfo

    checks = [("--rm_model", rm_model, reward)]
    if pretrain:
        checks.append(("--model", model, pretrain))
        model = pretrain
    for flag, family, path in checks:
        if not family:
            continue
        if not path:
            fail(f"{flag} {family!r} names a family; give the model itself too (--pretrain / --rm_path)")
        try:
            why = cc.family_mismatch(flag, family, modelinfo.read_config(path), path)
        except modelinfo.ModelError as exc:
            fail(str(exc))
        if why:
            fail(why)
    return model, reward


def _resolve_config(
    stage: str, model: str, data: str, preset_name: str | None, strategy: str | None, opts: dict[str, Any]
) -> RunConfig:
    from coati_tui.core import modelinfo, presets
    from coati_tui.core.units import parse_bytes
    from coati_tui.host.build import build

    if strategy:
        if strategy not in STRATEGY_ALIASES:
            fail(f"--strategy must be one of {', '.join(STRATEGY_ALIASES)}")
        preset_name = preset_name or STRATEGY_ALIASES[strategy]
        _needs_cuda(strategy, preset_name)
    overrides, loss = flags.overrides(opts, stage), opts["loss"]
    if stage == "dpo" and loss:  # --loss names DPO's loss; for the reward model it is the run's `loss`
        overrides["dpo.loss"], loss = loss, ""
    try:
        return build(
            stage,
            model,
            data,
            preset_name,
            overrides,
            eval_data=opts["eval_data"] or "",
            reward=opts.get("reward") or "",
            reward_fns=list(opts.get("reward_fn") or []),
            ptx_data=opts.get("ptx") or "",
            eval_interval=opts.get("eval_interval", 0),
            task=opts.get("task", ""),
            eval_split=opts["eval_split"],
            max_datasets_size=opts["max_datasets_size"],
            max_steps=opts["max_steps"],
            seed=opts["seed"],
            save_interval=opts["save_interval"],
            template=opts["template"],
            loss=loss or "log_sig",
            tensorboard=opts["tensorboard"],
            allow_shorter=opts["allow_shorter"],
            gpu_mem=parse_bytes(opts["gpu_mem"]) if opts["gpu_mem"] else 0,
            cpu_mem=parse_bytes(opts["cpu_mem"]) if opts["cpu_mem"] else 0,
            trust_remote_code=opts.get("trust_remote_code", False),
        )
    except (modelinfo.ModelError, presets.PresetError, ValueError) as exc:
        fail(str(exc))


def _needs_cuda(strategy: str, preset_name: str) -> None:
    """A CUDA-only strategy on a machine without CUDA: say so, and name the preset that runs here."""
    from coati_tui.core import hardware, presets

    try:
        preset = presets.load(preset_name)
    except presets.PresetError as exc:
        fail(str(exc))
    if preset.needs.cuda and not hardware.gpus()[0]:
        fail(
            f"--strategy {strategy} (preset {preset_name}) needs CUDA, and this machine has none; "
            f"--strategy naive (preset {cc.RUNS_WITHOUT_CUDA}) runs here"
        )


def watch(run_dir: Path, launch: Launch, as_json: bool) -> int:
    """Run the child, show its events, forward nothing: Ctrl-C reaches the child too (same process group),
    which finishes its step, checkpoints and exits 0."""
    import json
    import signal

    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
    from rich.text import Text

    from coati_tui.cli.common import console as make_console
    from coati_tui.core import events
    from coati_tui.host import runs

    console = make_console()
    proc = runs.launch(run_dir, launch)
    signal.signal(signal.SIGINT, lambda *_: console.print("[yellow]stopping: the trainer checkpoints first…[/]"))
    last_error = None
    stage = None
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
        console=console,
        disable=as_json,
    ) as bar:
        task = bar.add_task("starting", total=None, info="")
        assert proc.stdout is not None
        for ev in events.follow(proc.stdout):
            if as_json:
                print(json.dumps(ev, ensure_ascii=False), flush=True)
            kind = ev["type"]
            if kind == "start":
                stage = ev["stage"]
                bar.update(
                    task, description=events.describe(ev), total=ev["total_steps"], completed=ev.get("resumed_from", 0)
                )
            elif kind == "step":
                bar.update(task, completed=ev["step"], info=events.describe(ev, stage))
            elif kind in ("sample", "log", "checkpoint", "eval"):
                bar.console.print(Text(events.describe(ev), style="dim"))
            elif kind == "alarm":
                bar.console.print(Text(events.describe(ev), style="bold red"))
            elif kind == "error":
                last_error = ev
            elif kind == "done":
                bar.console.print(Text(events.describe(ev), style="green" if ev["status"] == "completed" else "yellow"))
    code = proc.wait()
    if last_error and not as_json:
        console.print(Text.assemble((last_error["kind"], "red"), f": {last_error['message']}"))
        for line in last_error["log_tail"][-8:]:
            console.print(Text(f"  {line}", style="dim"))
    if code and not last_error and not as_json:
        console.print(f"[red]trainer exited with {_exit(code)}[/]; see {run_dir}/child.log")
        note = runs.status(run_dir)["note"]  # killed without a word: where a resume starts
        if note:
            console.print(f"{note}: coati-tui train {stage or ''} --resume {run_dir}".replace("  ", " "))
    console.print(f"run folder: {run_dir}")
    return code


def _exit(code: int) -> str:
    import signal

    return f"{code} ({signal.Signals(-code).name})" if -code in signal.valid_signals() else str(code)
