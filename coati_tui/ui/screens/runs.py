"""Runs: every run folder, newest first; Enter opens one (live runs re-attach, past ones redraw);
n pre-fills the next stage from the highlighted run's output (SFT -> RM -> PPO). It asks the App for
the other screens with messages (ui/messages.py)."""

from __future__ import annotations

import json
from pathlib import Path

from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import DataTable, Header

from coati_tui.host import runs
from coati_tui.ui.messages import ChatWith, OpenRun, PrefillStage
from coati_tui.ui.widgets.footer import KeyFooter

STYLE = {"completed": "green", "running": "cyan", "cancelled": "yellow", "failed": "red", "stopped": "yellow"}


class RunsScreen(Screen):
    BINDINGS = [
        Binding("escape", "app.pop_screen", "Back", id="back"),
        Binding("n", "next_stage", "Next stage", id="next_stage"),
        Binding("f5", "reload", "Reload", id="reload"),
    ]

    def compose(self) -> ComposeResult:
        yield Header()
        yield DataTable(id="runs-table", cursor_type="row", zebra_stripes=True)
        yield KeyFooter()

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        table.add_columns("run", "stage", "status", "step", "loss", "final")
        self.action_reload()
        table.focus()

    def action_reload(self) -> None:
        table = self.query_one(DataTable)
        table.clear()
        for r in runs.list_runs():
            loss = f"{r['loss']:.4f}" if r["loss"] is not None else "-"
            table.add_row(
                Path(r["run"]).name,
                r["stage"] or "?",
                f"[{STYLE.get(r['status'], 'dim')}]{r['status']}[/]" + _resumable(r),
                str(r["step"]),
                loss,
                "yes" if r["final"] else "-",
                key=r["run"],
            )

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        self.post_message(OpenRun(Path(event.row_key.value)))

    def action_next_stage(self) -> None:
        table = self.query_one(DataTable)
        if table.row_count == 0:
            self.notify("No runs yet.", severity="warning")
            return
        run = Path(table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value)
        info = runs.status(run)
        if not info["final"]:
            self.notify(f"{run.name} has no final model yet (status: {info['status']}).", severity="warning")
            return
        self.post_message(next_stage(run, info["stage"]))


def next_stage(run: Path, stage: str | None) -> ChatWith | PrefillStage:
    """What follows a finished run in the loop: after SFT a reward model or DPO on it, after RM PPO with
    its SFT model and this reward model, after PPO or a preference method talking to it (Chat), then
    comparing its answers (Rank)."""
    final = run / "final"
    if stage in ("ppo", "dpo", "orpo", "kto"):
        return ChatWith(
            str(final),
            hint=f"Chat with {run.name}; F3 Rank compares its answers and labels them "
            "for the next round (ctrl+r there makes a finished DPO run model A).",
        )
    if stage == "sft":
        return PrefillStage(
            str(run), hint="Reward model (w) or DPO (o) next: choose preference pairs (d), pick a preset, press w or o."
        )
    meta = final / "coati.json"
    base = json.loads(meta.read_text()).get("base", "") if meta.is_file() else ""
    return PrefillStage(
        base,
        reward=str(run),
        hint="PPO next: the SFT model and this reward model are set; choose prompts (d), pick a preset, press p.",
    )


def _resumable(r: dict) -> str:
    """A run that was stopped (cancelled, killed) and where a resume (open it, press r) starts."""
    if r["status"] not in ("stopped", "cancelled") or r["final"]:
        return ""
    n = r.get("resume_from") or 0
    return f" [dim]· resumable from step {n}[/]" if n else " [dim]· resumable (from the start)[/]"
