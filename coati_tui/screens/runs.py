"""Runs: every run folder, newest first; Enter opens one (live runs re-attach, past ones redraw)."""

from __future__ import annotations

from pathlib import Path

from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header

from coati_tui import runs

STYLE = {"completed": "green", "running": "cyan", "cancelled": "yellow", "failed": "red", "stopped": "yellow"}


class RunsScreen(Screen):
    BINDINGS = [Binding("escape", "app.pop_screen", "Back", id="back"),
                Binding("f5", "reload", "Reload", id="reload")]

    def compose(self) -> ComposeResult:
        yield Header()
        yield DataTable(id="runs-table", cursor_type="row", zebra_stripes=True)
        yield Footer()

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
            table.add_row(Path(r["run"]).name, r["stage"] or "?", f"[{STYLE.get(r['status'], 'dim')}]{r['status']}[/]",
                          str(r["step"]), loss, "yes" if r["final"] else "-", key=r["run"])

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        from coati_tui.screens.train import TrainScreen

        self.app.push_screen(TrainScreen(Path(event.row_key.value)))
