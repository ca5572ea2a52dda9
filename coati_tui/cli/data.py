"""`export` (labels out for other tools) and `tiny` (a tiny model to try things on)."""

from __future__ import annotations

from pathlib import Path

import typer

from coati_tui.cli.common import fail

export_app = typer.Typer(help="Write labels out for other tools.", no_args_is_help=True)


@export_app.command("prefs")
def export_prefs(
    store: Path = typer.Argument(..., help="the preference store (.sqlite) the ranking pane writes"),
    fmt: str = typer.Option(
        "coati",
        "--format",
        help="coati: ColossalChat's {context, chosen, rejected}; "
        "trl: TRL's {prompt, chosen, rejected} (conversational)",
    ),
    out: Path | None = typer.Option(None, "--out", help="JSON lines file (default: STORE-FORMAT.jsonl beside it)"),
) -> None:
    """Export the pairs judged A or B (ties, skips and conflicting judgments are left out and counted)."""
    from coati_tui.data import prefstore

    if fmt not in ("coati", "trl"):
        fail("--format must be coati or trl")
    out = out or store.with_name(f"{store.stem}-{fmt}.jsonl")
    try:
        n, left_out = prefstore.export(store, fmt, out)
    except prefstore.StoreError as exc:
        fail(str(exc))
    typer.echo(
        f"{n} pairs -> {out} (left out: {left_out['tie']} ties, {left_out['skip']} skipped, "
        f"{left_out['conflict']} with conflicting judgments)"
    )


def tiny(
    out: Path = typer.Argument(..., help="folder to write"),
    reward: bool = typer.Option(False, "--reward", help="a one-label reward model instead of a causal LM"),
    layers: int = typer.Option(2, min=1, max=8),
    hidden: int = typer.Option(64, min=16),
    seed: int = typer.Option(0),
) -> None:
    """Build a tiny Llama with a freshly trained tokenizer (for trying things out; no download)."""
    from coati_tui.trainer.tiny import build_tiny_model  # runs here, with torch

    path = build_tiny_model(out, "reward" if reward else "causal", layers=layers, hidden=hidden, seed=seed)
    typer.echo(str(path))


data_app = typer.Typer(help="Make datasets from datasets.", no_args_is_help=True)


@data_app.command("prompts")
def prompts(
    dataset: Path = typer.Option(..., "--dataset", help="an SFT file (any format `train sft` reads)"),
    save_path: Path = typer.Option(..., "--save_path", "--save-path", "--out", help="the CSV to write"),
    sample_size: int = typer.Option(0, "--sample_size", "--sample-size", min=0, help="prompts to draw (0 = all)"),
    seed: int = typer.Option(42, "--seed"),
) -> None:
    """Write a PPO prompt CSV (`id,prompt`, as ColossalChat's generate_prompt_dataset.py does) from an SFT file:
    each record's last user message, a random sample of them."""
    import csv
    import random

    from coati_tui.data import formats

    try:
        convs = formats.load_sft(dataset)
    except formats.DataError as exc:
        fail(str(exc))
    texts = [
        next(m["content"] for m in reversed(c) if m["role"] == "user")
        for c in convs
        if any(m["role"] == "user" for m in c)
    ]
    if sample_size and sample_size < len(texts):
        texts = random.Random(seed).sample(texts, sample_size)
    save_path.parent.mkdir(parents=True, exist_ok=True)
    with save_path.open("w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "prompt"])
        w.writerows(enumerate(texts))
    typer.echo(f"{len(texts)} prompts -> {save_path}")
