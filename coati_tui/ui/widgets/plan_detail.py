"""Under the plan: the highlighted preset's verdict per stage (why, and the fix), its memory breakdown,
and the headless command that does the same run. The command is built from the choices (argv lists),
so what is shown and what is copied are the same data."""

from __future__ import annotations

import shlex

from rich.text import Text

from coati_tui.core.units import fmt_bytes

DEMO = "demo"  # Home's model when none is chosen: the built-in demo
DEMO_NOTE = "  (g runs it here: SFT -> RM -> PPO on the tiny model, about 2 minutes on a CPU)"


def headless_commands(
    model: str, data: str, reward: str, preset: str, flags: list[str], planned: dict[str, list[str]] | None = None
) -> list[list[str]]:
    """The `coati-tui` command lines for these choices: the demo's, or SFT's (and PPO's when a reward
    model is given) with the preset and the edited settings as flags, then the settings the planner chose
    for that stage (``planned``: stage -> flags); no data yet reads DATA."""
    if model == DEMO:
        return [["coati-tui", "demo"]]
    data, planned = data or "DATA", planned or {}
    out = [["coati-tui", "train", "sft", "--model", model, "--data", data, "--preset", preset, *flags]]
    if reward:
        ppo = ["coati-tui", "train", "ppo", "--model", model, "--reward", reward, "--prompts", data]
        out.append([*ppo, "--preset", preset, *flags])
    for cmd in out:
        cmd += planned.get(cmd[2], [])
    return out


def command_text(commands: list[list[str]]) -> str:
    """The commands as a shell would take them, one a line (what "copy command" copies)."""
    return "\n".join(shlex.join(c) for c in commands)


def detail_text(
    name: str, description: str, rows, commands: list[list[str]], breakdown: bool = False, note: str = ""
) -> Text:
    """A preset's name and description, its planner rows (one per stage, with their memory by part when
    ``breakdown``), its headless commands and a note after them."""
    text = Text()
    text.append(name, style="bold")
    text.append(f"  {description}\n")
    for r in rows:
        text.append(f"{r.stage.upper():4s} ", style="bold")
        text.append(f"{r.status.replace('_', ' ')}: ", style=("green" if r.fits else "red"))
        text.append(r.reason + (f"  Fix: {r.fix}" if r.fix else "") + "\n")
        if r.fixed:
            mine = ", ".join(f"{k} = {v}" for k, v in r.fixed.items())
            text.append(f"     fixed by you: {mine}\n", style="dim")
        if breakdown:
            for side, parts in (("GPU", r.gpu), ("RAM", r.cpu)):
                items = ", ".join(f"{k.replace('_', ' ')} {fmt_bytes(v)}" for k, v in parts.items() if v)
                if items:
                    text.append(f"     {side}: {items}\n", style="dim")
    text.append("Headless: ", style="bold")
    for i, cmd in enumerate(commands):
        text.append(("\n          " if i else "") + shlex.join(cmd), style="cyan")
    text.append(note)
    return text
