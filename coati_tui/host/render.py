"""Rich output for the headless commands (the app draws the same facts with its own widgets)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table

from coati_tui.core import plan_search
from coati_tui.core.units import fmt_bytes, fmt_count

if TYPE_CHECKING:
    from coati_tui.core.hardware import Profile
    from coati_tui.core.planner import Plan, Row
    from coati_tui.core.presets import Preset

STATUS_STYLE = {"fits": "green", "tight": "yellow", "does_not_fit": "red", "unavailable": "dim"}


def print_profile(prof: Profile, console: Console | None = None) -> None:
    console = console or Console()
    if prof.gpus:
        t = Table(title="GPUs")
        for col in ("#", "name", "total", "free", "compute", "bf16", "driver"):
            t.add_column(col)
        for g in prof.gpus:
            t.add_row(
                str(g.index),
                g.name,
                fmt_bytes(g.total_bytes),
                fmt_bytes(g.free_bytes),
                g.compute_capability,
                "yes" if g.bf16 else "no",
                g.driver,
            )
        console.print(t)
    else:
        console.print(f"[yellow]No NVIDIA GPU[/] ({prof.nvml_error}): training runs on the CPU.")
    c = prof.cpu
    console.print(
        f"CPU RAM {fmt_bytes(c.ram_available_bytes)} free of {fmt_bytes(c.ram_total_bytes)}, "
        f"{c.cores} cores ({c.threads} threads); "
        f"disk {fmt_bytes(prof.disk_free_bytes)} free at {prof.disk_path}"
    )
    t = Table(title="Stacks")
    t.add_column("package")
    t.add_column("version")
    for name, s in prof.stacks.items():
        extra = ""
        if name == "torch" and s["installed"]:
            extra = " (CUDA build)" if s.get("cuda_build") else " (CPU build)"
        t.add_row(name, (s["version"] + extra) if s["installed"] else "[dim]not installed[/]")
    console.print(t)


SYMBOL = {"fits": "✓", "tight": "~", "does_not_fit": "✗", "unavailable": "-"}


def short_bytes(n: int) -> str:
    return fmt_bytes(n).replace(" GiB", "G").replace(" MiB", "M").replace(" KiB", "K").replace(" TiB", "T")


def method(p: Preset) -> str:
    if p.strategy == "naive":
        bits = f" {p.quant.bits}-bit" if p.quant.bits else ""
        return ("full" if p.full_finetune else f"LoRA r{p.lora.rank}") + bits
    return {"gemini": "Gemini", "zero2": "ZeRO-2", "zero2_cpu": "ZeRO-2"}[p.strategy] + " full"


def _own(row: Row, key: str, chosen: int) -> int:
    """The preset's own value of ``key`` (the row may have changed it to fit)."""
    return row.changes[key][0] if key in row.changes else chosen


def print_plan(result: Plan, breakdown: bool = False, console: Console | None = None) -> None:
    """One row per preset, one column per stage ("GPU/CPU verdict"); the reasons below the table."""
    console = console or Console()
    m = result.machine
    where = (
        (f"{m.gpu_name} {fmt_bytes(m.gpu_total_bytes)}" if m.device == "cuda" else "CPU only")
        + f", RAM {fmt_bytes(m.cpu_total_bytes)}"
        + (" (described)" if m.described else "")
    )
    approx = "" if result.exact_params else " (unknown family: counted as Llama)"
    console.print(f"[bold]{result.model}[/]: {result.model_type}, {fmt_count(result.params)} parameters{approx}")
    console.print(
        f"Planning for {where}. Cells: peak {'GPU/CPU' if m.device == 'cuda' else 'RAM'} and verdict; "
        "* = fits with the settings below (the preset's batch and length in the batch column)."
    )
    stages = list(dict.fromkeys(r.stage for r in result.rows))
    names = list(dict.fromkeys(r.preset for r in result.rows))
    t = Table(show_edge=False, pad_edge=False)
    t.add_column("preset", no_wrap=True)
    t.add_column("batch", no_wrap=True)
    for st in stages:
        t.add_column(st.upper(), no_wrap=True)
    why: dict[tuple[str, str], list[str]] = {}
    for name in names:
        rows = {r.stage: r for r in result.rows if r.preset == name}
        first = next(iter(rows.values()))
        cells = []
        for st in stages:
            r = rows[st]
            size = (
                f"{short_bytes(r.gpu_bytes)}/{short_bytes(r.cpu_bytes)}"
                if r.device == "cuda"
                else short_bytes(r.cpu_bytes)
            )
            mark = "*" if r.fits and r.changes else ""
            cells.append(f"[{STATUS_STYLE[r.status]}]{size} {SYMBOL[r.status]}{mark}[/]")
            if r.status != "fits":
                why.setdefault((name, r.reason + (f" Fix: {r.fix}" if r.fix else "")), []).append(st)
            elif r.changes:
                why.setdefault((name, f"* {plan_search.describe(r.changes)}"), []).append(st)
        label = f"[bold]{name}[/] ★" if name == result.recommended else name
        batch, seq = _own(first, "train.batch_size", first.batch_size), _own(first, "train.max_len", first.seq_len)
        t.add_row(label, f"{batch}x{seq}", *cells)
    console.print(t)
    for (name, reason), sts in why.items():
        console.print(f"  [dim]{name} ({', '.join(sts)}):[/] {reason}")
    if breakdown:
        for r in result.rows:
            for side, parts in (("GPU", r.gpu), ("CPU", r.cpu)):
                if parts:
                    items = ", ".join(f"{k} {short_bytes(v)}" for k, v in parts.items() if v)
                    console.print(f"  [dim]{r.preset} {r.stage} {side}:[/] {items}")
    if result.recommended:
        console.print(
            f"Recommended: [bold green]{result.recommended}[/] (the fastest preset that fits every "
            f"planned stage with a safety margin)"
        )
    else:
        console.print(
            "[red]No preset fits every stage with any setting.[/] Each row's Fix says what would make it fit."
        )


def print_presets(loaded: dict[str, Preset], console: Console | None = None) -> None:
    console = console or Console()
    t = Table()
    for col in ("name", "method", "precision", "batch x acc x len", "needs", "description"):
        t.add_column(col, no_wrap=col == "name", overflow="fold")
    for name, p in loaded.items():
        needs = ", ".join(k for k in ("cuda", "colossalai", "bitsandbytes") if getattr(p.needs, k)) or "-"
        t.add_row(
            name,
            method(p),
            p.precision,
            f"{p.train.batch_size} x {p.train.accumulation_steps} x {p.train.max_len}",
            needs,
            p.description,
        )
    console.print(t)
