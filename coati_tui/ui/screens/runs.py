"""Runs: every run folder, newest first; Enter opens one (live runs re-attach, past ones redraw);
n pre-fills the next stage from the highlighted run's output (SFT -> RM -> PPO)."""

from __future__ import annotations

from pathlib import Path

from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header

from coati_tui.host import runs

STYLE = {"completed": "green", "running": "cyan", "cancelled": "yellow", "failed": "red", "stopped": "yellow"}


class RunsScreen(Screen):
    BINDINGS = [Binding("escape", "app.pop_screen", "Back", id="back"),
                Binding("n", "next_stage", "Next stage", id="next_stage"),
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
        from coati_tui.ui.screens.train import TrainScreen

        self.app.push_screen(TrainScreen(Path(event.row_key.value)))

    async def action_next_stage(self) -> None:
        import json

        from coati_tui.ui.screens.home import HomeScreen

        table = self.query_one(DataTable)
        if table.row_count == 0:
            self.notify("No runs yet.", severity="warning")
            return
        run = Path(table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value)
        info = runs.status(run)
        if not info["final"]:
            self.notify(f"{run.name} has no final model yet (status: {info['status']}).", severity="warning")
            return
        final = run / "final"
        if info["stage"] == "ppo":  # the loop's next step: talk to it (Chat), then compare its answers (Rank)
            await self.app.switch_mode("chat")
            chat = self.app.screen
            chat.query_one("#chat-model").value = str(final)
            chat.action_load()
            self.notify(f"Chat with {run.name}; F3 Rank compares its answers and labels them for the next "
                        "reward model.", timeout=10)
            return
        while not isinstance(self.app.screen, HomeScreen):
            self.app.pop_screen()
        home = self.app.screen
        if info["stage"] == "sft":
            home.prefill(str(run), hint="Reward model next: choose preference pairs (d), pick a preset, press w.")
        else:
            base = json.loads((final / "coati.json").read_text()).get("base", "") if (final / "coati.json").is_file() else ""
            home.prefill(base, str(run), hint="PPO next: the SFT model and this reward model are set; choose "
                                              "prompts (d), pick a preset, press p.")
