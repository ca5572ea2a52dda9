"""`generate`, `chat`, `rank` and `quantize`: talking to a model, labeling its answers, making it smaller.
Answers come from the generation worker (a child process), through coati_tui.host.gen_client."""

from __future__ import annotations

from pathlib import Path

import typer

from coati_tui.cli.common import fail
from coati_tui.core.events import QUANTS

TRUST_HELP = "let the model folder run its own Python code (its config.json's auto_map): read it first"
QUANT_HELP = "none | 8bit | 4bit (bitsandbytes) | gptq (a `coati-tui quantize` folder; they load as such anyway)"


def _check_quant(quant: str) -> None:
    if quant not in QUANTS:
        fail(f"--quant must be one of {', '.join(QUANTS)}")


def generate_log() -> Path:
    """Where `coati-tui generate` keeps its worker's stderr: ~/coati-tui/logs/generate.log (one run's)."""
    from coati_tui.core import paths

    return paths.home() / "logs" / "generate.log"


def chat(
    model: str = typer.Argument(..., help="model folder, run folder (its final/) or cached hub id"),
    quant: str = typer.Option("none", "--quant", help=QUANT_HELP),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help=TRUST_HELP),
) -> None:
    """Open the app on its chat screen with this model loaded (in a child process)."""
    from coati_tui.core import hardware

    _check_quant(quant)
    hardware.profile_early()
    from coati_tui.ui.app import run_app

    run_app(model=model, mode="chat", quant=quant, trust_remote_code=trust_remote_code)


def generate(
    model: str = typer.Argument(..., help="model folder, run folder (its final/) or cached hub id"),
    prompt: str = typer.Option(..., "--prompt", help="the user's message"),
    system: str = typer.Option("", "--system", help="a system prompt"),
    quant: str = typer.Option("none", "--quant", help=QUANT_HELP),
    max_new_tokens: int = typer.Option(256, "--max-new-tokens", min=1),
    temperature: float = typer.Option(0.7, "--temperature", min=0.0, help="0 = greedy"),
    top_p: float = typer.Option(0.9, "--top-p", min=0.01, max=1.0),
    top_k: int = typer.Option(0, "--top-k", min=0),
    repetition_penalty: float = typer.Option(1.0, "--repetition-penalty", min=0.1),
    seed: int | None = typer.Option(None, "--seed"),
    as_json: bool = typer.Option(False, "--json", help="print the worker's events (JSON lines)"),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help=TRUST_HELP),
) -> None:
    """Answer one prompt headless (for scripts), through the same generation worker the chat pane uses."""
    import json

    from coati_tui.host.gen_client import GenerationClient

    _check_quant(quant)
    client = GenerationClient(model, quant, log=generate_log(), trust_remote_code=trust_remote_code)
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
    code = 1
    try:
        for ev in client.events():
            if as_json:
                print(json.dumps(ev, ensure_ascii=False), flush=True)
            if ev["type"] == "loaded":
                client.generate(
                    messages,
                    rid="1",
                    max_new_tokens=max_new_tokens,
                    temperature=temperature,
                    top_p=top_p,
                    top_k=top_k,
                    repetition_penalty=repetition_penalty,
                    seed=seed,
                )
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
                    for line in ev["log_tail"][-8:]:
                        typer.secho(f"  {line}", dim=True, err=True)
                    if ev["log_tail"]:
                        typer.secho(f"the worker's log: {client.log_path}", dim=True, err=True)
                code = 2 if ev["kind"] == "config" else 1
                break
    finally:
        client.stop(timeout=30)
    raise typer.Exit(code)


def quantize(
    model: str = typer.Argument(..., help="model folder, run folder (its final/) or cached hub id"),
    bits: int = typer.Option(4, "--bits", help="2, 3, 4 or 8"),
    group_size: int = typer.Option(128, "--group-size", help="weights per scale (-1: one per row)"),
    calib: str | None = typer.Option(None, "--calib", help="calibration data (default: the run's own training data)"),
    out: Path | None = typer.Option(None, "--out", help="output folder (default: MODEL-gptq-4bit-g128 beside it)"),
    samples: int = typer.Option(128, "--samples", min=1, help="calibration texts"),
    max_len: int = typer.Option(512, "--max-len", min=16, help="tokens per calibration text"),
) -> None:
    """Write a GPTQ checkpoint with gptqmodel that plain transformers, `chat` and `generate` load."""
    import time

    from coati_tui.cli.common import console as make_console
    from coati_tui.worker import quantize as q  # runs here, with torch: the one command that does

    console = make_console()
    t0 = time.perf_counter()

    def say(message: str) -> None:
        console.print(f"[dim]{time.perf_counter() - t0:6.1f}s[/] {message}")

    try:
        out_dir = q.quantize(model, bits, group_size, calib, str(out) if out else None, samples, max_len, say)
    except q.QuantizeError as exc:
        fail(str(exc))
    say("checking that it loads as users will load it (the generation worker's loader)")
    from coati_tui.worker.generate import WorkerError, load

    try:
        _, _, info = load(str(out_dir))
    except WorkerError as exc:
        fail(f"{out_dir} was written but does not load: {exc}", 1)
    say(
        f"[green]done[/]: {out_dir} ({info['quant']}, weights {q.folder_bytes(out_dir) / 2**20:.1f} MiB on disk, "
        f"{info['memory_bytes'] / 2**20:.1f} MiB loaded on {info['device']})"
    )
    typer.echo(str(out_dir))


def rank(
    model: str | None = typer.Option(None, "--model", "-m", help="model A: a model or run folder"),
    model_b: str | None = typer.Option(None, "--model-b", help="model B (default: two samples of model A)"),
    prompts: str | None = typer.Option(None, "--prompts", help="prompt file (default: your saved chats)"),
    store: Path | None = typer.Option(None, "--store", help="preference store (default: ~/coati-tui/prefs.sqlite)"),
    annotator: str | None = typer.Option(None, "--annotator", help="who is labeling (default: your user name)"),
) -> None:
    """Open the app on its ranking pane: compare two answers, label, export, train the next reward model."""
    from coati_tui.core import hardware

    hardware.profile_early()
    from coati_tui.ui.app import run_app

    options = {
        "model": model,
        "model_b": model_b or "",
        "prompts": prompts or "",
        "annotator": annotator,
        "store": str(store) if store else None,
        "start": bool(model),
    }
    run_app(model=model, mode="rank", rank=options)
