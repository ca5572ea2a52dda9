"""`demo`: the whole loop on a CPU in minutes, with a verdict per stage."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from coati_tui.cli.common import console as make_console

if TYPE_CHECKING:
    from rich.console import Console


def demo(
    out: Path | None = typer.Option(None, "--out", help="data and model folder (default: ~/coati-tui/demo)"),
    method: str = typer.Option(
        "ppo",
        "--method",
        help="ppo: SFT -> RM -> PPO; dpo: SFT -> DPO on the same pairs; grpo: SFT -> GRPO on the true score",
    ),
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

    from coati_tui.cli.train import watch
    from coati_tui.core import events, paths
    from coati_tui.data import demo as task
    from coati_tui.host import runs
    from coati_tui.host.build import build
    from coati_tui.trainer.tiny import CORPUS, build_tiny_model

    if method not in task.METHODS:
        raise typer.BadParameter(f"--method must be one of {', '.join(task.METHODS)}")
    root = out or paths.home() / "demo"
    console = make_console()
    model = root / "model"
    if not (resume and (model / "config.json").is_file()):
        task.write_task(root / "data", seed)
        build_tiny_model(model, corpus=task.corpus() + CORPUS, vocab_size=512, hidden=64, layers=2, seed=seed)
    files = {name: root / "data" / f"{name}.jsonl" for name in ("sft", "prefs", "prompts", "test_prompts")}
    console.print(f"[bold]coati-tui demo[/]: data in {root / 'data'}, model in {model}")
    inputs = {
        "sft": (str(model), files["sft"]),
        "rm": (None, files["prefs"]),
        "ppo": (None, files["prompts"]),
        "dpo": (None, files["prefs"]),
        "grpo": (None, files["prompts"]),
    }
    results: dict[str, list[dict[str, Any]]] = {}
    for stage in task.METHODS[method]:
        spec = task.STAGES[stage]
        settings = dict(spec["settings"])
        if stage in ("ppo", "grpo") and ppo_steps:
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
                extra = {
                    "reward": str(paths.runs_dir() / "demo-rm"),
                    "ptx_data": str(files["sft"]),
                    "eval_data": str(files["test_prompts"]),
                }
            elif stage == "grpo":
                extra = {"eval_data": str(files["test_prompts"])}
            cfg = build(
                stage, start, str(inputs[stage][1]), "lora_naive", spec["overrides"], seed=seed, **extra, **settings
            )
            runs.prepare(cfg, run_dir)
        console.print(f"\n[bold]{stage}[/] · replay: coati-tui train {stage} --resume {run_dir}")
        code = watch(run_dir, runs.Launch(), as_json)
        results[stage] = events.read(run_dir / "events.jsonl")
        if code or runs.status(run_dir)["status"] != "completed":  # a failure, or cancelled: stop here
            console.print(f"stopped at {stage}; continue with: coati-tui demo --resume")
            raise typer.Exit(code)
    raise typer.Exit(_report(results, console) if method == "ppo" else _report_method(results, console, method))


def _report(results: dict[str, list[dict[str, Any]]], console: Console) -> int:
    """Each stage's figure and whether it met the demo's bar; 1 when one did not."""

    def evals(stage: str) -> list[dict[str, Any]]:
        return [e for e in results[stage] if e["type"] == "eval"]

    sft_loss = evals("sft")[-1]["metrics"].get("loss") if evals("sft") else None
    rm = evals("rm")[-1]["metrics"] if evals("rm") else {}
    ppo = evals("ppo")
    before, after = (ppo[0]["metrics"], ppo[-1]["metrics"]) if ppo else ({}, {})
    ok_rm = rm.get("accuracy", 0) >= 0.9
    ok_ppo = after.get("true_score", 0) > before.get("true_score", 1)
    console.print("\n[bold]demo results[/]")
    console.print(f"  SFT  held-out loss {sft_loss:.3f}" if sft_loss is not None else "  SFT  (no eval)")
    console.print(
        f"  RM   held-out accuracy {rm.get('accuracy', 0):.3f} (bar: >= 0.9) "
        + ("[green]ok[/]" if ok_rm else "[red]below[/]")
    )
    console.print(
        f"  PPO  true score {before.get('true_score', float('nan')):.3f} (SFT model) -> "
        f"{after.get('true_score', float('nan')):.3f} (PPO model), reward "
        f"{before.get('reward', float('nan')):+.3f} -> {after.get('reward', float('nan')):+.3f}, "
        f"KL {after.get('kl', float('nan')):.3f} nats/answer " + ("[green]ok[/]" if ok_ppo else "[red]no gain[/]")
    )
    print(
        json.dumps(
            {
                "sft_eval_loss": sft_loss,
                "rm_accuracy": rm.get("accuracy"),
                "true_score_sft": before.get("true_score"),
                "true_score_ppo": after.get("true_score"),
                "kl": after.get("kl"),
            }
        )
    )
    return 0 if ok_rm and ok_ppo else 1


def _report_method(results: dict[str, list[dict[str, Any]]], console: Console, stage: str) -> int:
    """DPO's or GRPO's true score before and after (and DPO's held-out preference accuracy); 1 below the bar."""
    evals = [e["metrics"] for e in results[stage] if e["type"] == "eval"]
    before, after = (evals[0], evals[-1]) if evals else ({}, {})
    ok = after.get("true_score", 0) > before.get("true_score", 1)
    name = stage.upper()
    extra = f"held-out preference accuracy {after.get('accuracy', 0):.3f}, " if stage == "dpo" else ""
    console.print(f"\n[bold]demo results[/] (SFT -> {name})")
    console.print(
        f"  {name}  {extra}true score {before.get('true_score', float('nan')):.3f} (SFT model) -> "
        f"{after.get('true_score', float('nan')):.3f} ({name} model) " + ("[green]ok[/]" if ok else "[red]no gain[/]")
    )
    figures = {f"true_score_{stage}": after.get("true_score"), "true_score_sft": before.get("true_score")}
    if stage == "dpo":
        figures["dpo_accuracy"] = after.get("accuracy")
    print(json.dumps(figures))
    return 0 if ok else 1
