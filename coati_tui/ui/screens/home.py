"""The first screen: the machine, the model, and the plan (which preset fits, and why).

It draws the machine first: the plan (planner, presets) and the look for a run still training start
after that frame. Other screens are the App's to open: Home posts messages (ui/messages.py).
"""

from __future__ import annotations

from pathlib import Path

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.screen import Screen
from textual.widgets import DataTable, Header, Input, Static

from coati_tui.core.units import fmt_count
from coati_tui.ui.messages import OpenRun, ShowRuns
from coati_tui.ui.widgets.footer import KeyFooter
from coati_tui.ui.widgets.machine import MachinePanel
from coati_tui.ui.widgets.path_input import PathSuggester
from coati_tui.ui.widgets.plan_detail import DEMO, DEMO_NOTE, command_text, detail_text, headless_commands
from coati_tui.ui.widgets.plan_table import PlanTable

DATA_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
KIND_NAMES = {"sft": "SFT conversations", "preferences": "preference pairs", "prompts": "PPO prompts"}


class HomeScreen(Screen):
    BINDINGS = [  # footer order: what a first-time user needs first (the palette has them all)
        Binding("g", "demo", "Demo", id="demo"),
        Binding("m", "focus_model", "Model", id="model"),
        Binding("d", "focus_data", "Data", id="data"),
        Binding("s", "train('sft')", "SFT", id="train_sft"),
        Binding("w", "train('rm')", "RM", id="train_rm"),
        Binding("p", "train('ppo')", "PPO", id="train_ppo"),
        Binding("o", "train('dpo')", "DPO", id="train_dpo"),
        Binding("ctrl+o", "train('orpo')", "ORPO", id="train_orpo", show=False),
        Binding("ctrl+k", "train('kto')", "KTO", id="train_kto", show=False),
        Binding("ctrl+g", "train('grpo')", "GRPO", id="train_grpo", show=False),
        Binding("u", "runs", "Runs", id="runs"),
        Binding("e", "settings", "Settings", id="settings"),
        Binding("b", "toggle_breakdown", "Breakdown", id="breakdown"),
        Binding("y", "copy_command", "Copy command", id="copy"),
        Binding("r", "refresh_profile", "Re-profile", id="refresh"),
    ]

    def __init__(self, model: str | None = None) -> None:
        super().__init__()
        self.model = model  # None: the app's --model, else the demo (resolved in compose)
        self.profile = None
        self.show_breakdown = False
        self.overrides: dict = {}  # hyperparameters edited in Settings (e), applied to the run and the plan
        self.then = ""  # a stage to start as soon as the plan is ready (prefill)
        self.looked_for_live = False  # a run still training from an earlier session is looked for once

    def compose(self) -> ComposeResult:
        self.model = self.model or getattr(self.app, "model", None) or DEMO
        yield Header()
        with VerticalScroll(id="home"):
            yield MachinePanel(id="machine")
            yield Vertical(id="model-box", classes="later")  # filled once the machine is drawn (_model_box)
            yield PlanTable(id="plan")
            yield Static(id="detail")
        yield KeyFooter()

    def _model_fields(self) -> ComposeResult:
        """The Model box: model, data and reward, each with what was found in it."""
        yield Input(
            value="" if self.model == DEMO else self.model,
            id="model-input",
            compact=True,
            placeholder="model folder, run folder or cached hub id (empty: the demo)",
            suggester=PathSuggester(dirs_only=True),
        )
        yield Static(id="model-info")
        yield Input(
            id="data-input",
            compact=True,
            suggester=PathSuggester(DATA_SUFFIXES),
            placeholder="data for the stage: SFT chats, preference pairs or PPO prompts (.jsonl .json .csv .parquet)",
        )
        yield Static(id="data-info", classes="empty")
        yield Input(
            id="reward-input",
            compact=True,
            suggester=PathSuggester(dirs_only=True),
            placeholder="PPO: the reward model (an RM run folder); GRPO: it and/or reward functions "
            "(my_rewards.py:fn, exact_answer, format, length)",
        )

    def _model_box(self) -> Vertical:
        """The Model box, its fields mounted on first use: after the frame with the machine, or sooner if
        a key needs them (the first frame draws the machine without the box's three inputs)."""
        box = self.query_one("#model-box", Vertical)
        if box.has_class("later"):
            box.remove_class("later")
            box.mount_all(self._model_fields())
        return box

    def _field(self, selector: str, kind: type[Input] | type[Static] = Input):
        self._model_box()
        return self.query_one(selector, kind)

    def on_mount(self) -> None:
        self.query_one("#model-box").border_title = "Model"
        self.query_one("#plan").border_title = "Plan"
        self.query_one("#plan").focus(scroll_visible=False)  # the screen opens at its top: the machine first
        from coati_tui.core import hardware

        early = hardware.take_early(wait=False)  # started before the app's imports: usually done by now
        if early:
            self._profiled(early)  # in the first frame
        else:
            self.action_refresh_profile()

    @work(thread=True, exclusive=True, group="live")
    def _find_live_run(self) -> None:
        """A run that kept training while the app was closed: open it again (the demo as the demo)."""
        from coati_tui.host import runs

        live = [
            Path(r["run"])
            for r in runs.list_runs()
            if r["status"] in ("running", "unknown") and runs.alive(Path(r["run"]))
        ]
        if live:
            self.app.call_from_thread(self._reattach, live[0])

    def _reattach(self, run_dir: Path) -> None:
        from coati_tui.host import runs

        demo = run_dir in runs.demo_runs()
        self._open(None if demo else run_dir, demo=demo)
        self.notify(f"{run_dir.name} kept training while the app was closed: re-attached. esc goes back.")

    # ---- actions -------------------------------------------------------------------------------
    def action_refresh_profile(self) -> None:
        self._profile()

    def action_focus_model(self) -> None:
        self._field("#model-input").focus()

    def action_toggle_breakdown(self) -> None:
        self.show_breakdown = not self.show_breakdown
        self._show_detail()

    def action_settings(self) -> None:
        from coati_tui.ui.screens.settings import SettingsScreen

        name = self._highlighted()
        if not name:
            return

        def applied(result) -> None:
            if result is not None:
                self.overrides = result
                self.notify("Settings: " + (", ".join(f"{k}={v}" for k, v in result.items()) or "preset defaults"))
                self._plan()

        self.app.push_screen(SettingsScreen(self.query_one("#plan", PlanTable).presets[name], self.overrides), applied)

    def action_copy_command(self) -> None:
        """The headless command of the highlighted preset, to the clipboard (OSC 52 terminals)."""
        name = self._highlighted()
        if name:
            plain = command_text(self._commands(name))
            self.app.copy_to_clipboard(plain)
            self.notify(plain, title="Copied")

    def action_focus_data(self) -> None:
        self._field("#data-input").focus()

    def action_runs(self) -> None:
        self.post_message(ShowRuns())

    def action_train(self, stage: str) -> None:
        preset = self._highlighted()
        data = self._field("#data-input").value.strip()
        reward = self._field("#reward-input").value.strip()
        if self.model == DEMO:
            self.notify(
                "No model chosen: press g to run the demo (SFT -> RM -> PPO on a tiny model), "
                "or choose a model folder (m).",
                severity="warning",
            )
            return
        if not data or not preset:
            self.notify("Choose the data file first (d).", severity="warning")
            self.action_focus_data()
            return
        if stage in ("ppo", "grpo") and not reward:
            need = "an RM run folder" + (
                " and/or reward functions (FILE.py:NAME, exact_answer)" if stage == "grpo" else ""
            )
            self.notify(f"{stage.upper()} needs a reward: {need}.", severity="warning")
            self._field("#reward-input").focus()
            return
        self._start(stage, self.model, data, preset, reward if stage in ("ppo", "grpo") else "")

    def action_demo(self) -> None:
        """The built-in demo: three real runs (demo-sft, demo-rm, demo-ppo) driven by `coati-tui demo`;
        a demo still running is re-attached, not restarted."""
        import shutil

        from coati_tui.host import runs

        live = [p for p in runs.demo_runs() if runs.alive(p)]
        if not live:
            for p in runs.demo_runs():
                shutil.rmtree(p, ignore_errors=True)
        self._open(live[0] if live else None, start=not live, demo=True)

    def prefill(self, model: str, reward: str = "", hint: str = "", data: str = "", then: str = "") -> None:
        """Set up the next stage from an earlier run's output (the Runs screen's "next stage"); ``then``
        (a stage) starts it with the planner's pick once the plan is made (the Rank pane's "train RM")."""
        self._field("#model-input").value = model
        self._field("#reward-input").value = reward
        self._field("#data-input").value = data
        self.model, self.then = model, then
        self._plan()
        self._field("#data-input").focus()
        if hint:
            self.notify(hint, title="Next stage", timeout=10)

    @work(thread=True, exclusive=True, group="start")
    def _start(self, stage: str, model: str, data: str, preset: str, reward: str = "") -> None:
        from coati_tui.host import runs
        from coati_tui.host.build import build, split_rewards

        try:
            extra = {}
            if stage == "grpo":  # the reward box holds an RM run folder and/or reward functions
                reward, extra["reward_fns"] = split_rewards(reward)
            cfg = build(stage, model, data, preset, self._valid_overrides(preset), reward=reward, **extra)
            why = runs.blocked(cfg.preset)
            if why:
                raise ValueError(why)
            run_dir = runs.prepare(cfg)
        except Exception as exc:  # ModelError, PresetError, DataError, ValueError: all say what is wrong
            self.app.call_from_thread(self.notify, str(exc), title="Cannot start", severity="error", timeout=15)
            return
        self.app.call_from_thread(self._open_run, run_dir)

    def _valid_overrides(self, preset: str) -> dict:
        """The edited settings this preset takes (ColossalAI's full fine-tune presets keep lora.rank 0)."""
        from coati_tui.core import presets

        strategy = presets.load(preset).strategy
        return {k: v for k, v in self.overrides.items() if not (k == "lora.rank" and strategy != "naive")}

    def _open(self, run_dir: Path | None, start: bool = False, demo: bool = False) -> None:
        """A Train screen for the run (the App opens it), its memory bars against this machine."""
        gpu = self.profile.gpus[0].total_bytes if self.profile and self.profile.gpus else 0
        ram = self.profile.cpu.ram_total_bytes if self.profile else 0
        self.post_message(OpenRun(run_dir, start=start, demo=demo, gpu_total=gpu, ram_total=ram))

    def _open_run(self, run_dir: Path) -> None:
        self._open(run_dir, start=True)

    @on(Input.Submitted, "#data-input")
    def _data_chosen(self, _event) -> None:
        self.query_one("#plan", PlanTable).focus()

    @on(Input.Changed, "#data-input")
    def _data_typed(self, event: Input.Changed) -> None:
        self._sniff(event.value.strip())

    @work(thread=True, exclusive=True, group="sniff")
    def _sniff(self, path: str) -> None:
        """Check the whole file as the trainer will (the error names file, line and field) and preview
        its first records as conversations."""
        import time

        from textual.worker import get_current_worker

        from coati_tui.data import formats

        time.sleep(0.15)  # typing goes on: only the last value is checked
        if get_current_worker().is_cancelled:
            return
        if not path:
            text = Text("")
        elif not Path(path).expanduser().exists():
            text = Text("no such file yet", style="dim")
        else:
            try:
                kind, count, first = formats.sniff(path)
                text = _preview(kind, count, first)
            except formats.DataError as exc:
                text = Text(str(exc), style="red")
            except Exception as exc:  # unreadable, a folder without a dataset: say it, keep going
                text = Text(f"{path}: {exc}", style="red")
        if not get_current_worker().is_cancelled:
            self.app.call_from_thread(self._data_info, text)

    def _data_info(self, text: Text) -> None:
        from textual.css.query import NoMatches

        try:
            info = self._field("#data-info", Static)
        except NoMatches:  # the check finished as the screen closed (the app quitting): nothing to show
            return
        info.update(text)
        info.set_class(not text.plain, "empty")

    @on(Input.Submitted, "#model-input")
    def _model_chosen(self, event: Input.Submitted) -> None:
        self.model = event.value.strip() or DEMO
        self._plan()
        self.query_one("#plan", PlanTable).focus()

    @on(DataTable.RowHighlighted, "#plan")
    def _row_changed(self, _event) -> None:
        self._show_detail()

    # ---- workers: nothing blocks the event loop ------------------------------------------------
    @work(thread=True, exclusive=True, group="profile")
    def _profile(self) -> None:
        from coati_tui.core import hardware

        prof = hardware.take_early() or hardware.profile()
        self.app.call_from_thread(self._profiled, prof)

    def _profiled(self, prof) -> None:
        self.profile = prof
        self.query_one(MachinePanel).show(prof)

    @on(MachinePanel.Drawn)
    def _machine_drawn(self) -> None:
        """After the frame with the machine: the plan (the planner and presets load then) and, once, the
        look for a run that kept training. (Textual's call_after_refresh can run before the first frame.)"""
        self._model_box()
        self._plan()
        if not self.looked_for_live:
            self.looked_for_live = True
            self._find_live_run()

    @work(thread=True, exclusive=True, group="plan")
    def _plan(self) -> None:
        from coati_tui.core import modelinfo, planner, presets
        from coati_tui.core.tiny import config_dict

        try:
            cfg = config_dict() if self.model == DEMO else modelinfo.read_config(self.model)
            arch = modelinfo.Arch.from_config(cfg)
            from coati_tui.ui.screens.settings import apply_all

            loaded = apply_all(presets.load_all(), self.overrides)
        except (modelinfo.ModelError, presets.PresetError, OSError) as exc:
            self.app.call_from_thread(self._plan_failed, str(exc))
            return
        machine = planner.Machine.from_profile(self.profile)
        result = planner.plan(arch, loaded, machine, model=self.model, fixed=set(self.overrides))
        self.app.call_from_thread(self._planned, result, loaded)

    def _plan_failed(self, message: str) -> None:
        self._field("#model-info", Static).update(Text(message, style="red"))
        self.query_one("#plan", PlanTable).clear(columns=True)
        self.query_one("#detail", Static).update("")

    def _planned(self, result, loaded) -> None:
        name = "built-in demo (tiny Llama)" if self.model == DEMO else self.model
        exact = "" if result.exact_params else " (unknown family, counted as Llama)"
        self._field("#model-info", Static).update(
            f"{name}: {result.model_type}, {fmt_count(result.params)} parameters{exact}"
        )
        self.query_one("#plan", PlanTable).show(result, loaded)
        self._show_detail()
        if self.then:
            stage, self.then = self.then, ""
            self.action_train(stage)

    def _highlighted(self) -> str | None:
        """The preset under the plan's cursor, None before there is a plan."""
        table = self.query_one("#plan", PlanTable)
        if not table.plan or table.row_count == 0:
            return None
        return table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value

    def _commands(self, preset: str) -> list[list[str]]:
        """The headless commands for the choices made here: model, data, reward, preset, settings."""
        from coati_tui.core.flags import to_flags

        rows = self.query_one("#plan", PlanTable).rows_for(preset)
        return headless_commands(
            self.model,
            self._field("#data-input").value.strip(),
            self._field("#reward-input").value.strip(),
            preset,
            to_flags(self._valid_overrides(preset)) if self.model != DEMO else [],
            {r.stage: to_flags(r.overrides) for r in rows if r.fits and r.changes},
        )

    def _show_detail(self) -> None:
        name = self._highlighted()
        if name:
            table = self.query_one("#plan", PlanTable)
            self.query_one("#detail", Static).update(
                detail_text(
                    name,
                    table.presets[name].description,
                    table.rows_for(name),
                    self._commands(name),
                    self.show_breakdown,
                    DEMO_NOTE if self.model == DEMO else "",
                )
            )


def _preview(kind: str, count: int, first: list) -> Text:
    """ "✓ 48 SFT conversations" and the first records as conversations, one line per turn."""
    text = Text.assemble(("✓ ", "green"), f"{count:,} {KIND_NAMES[kind]}")
    roles = {"user": "cyan", "assistant": "green", "system": "magenta"}

    def turn(role: str, content: str, style: str | None = None) -> None:
        line = " ".join(content.split())
        text.append(f"\n  {role:9s} ", style=style or roles.get(role, ""))
        text.append(line[:200] + ("…" if len(line) > 200 else ""))

    for i, rec in enumerate(first, 1):
        text.append(f"\n #{i}", style="bold dim")
        if kind == "preferences":
            for m in rec.prompt:
                turn(m["role"], m["content"])
            turn("chosen", rec.chosen[-1]["content"], "green")
            turn("rejected", rec.rejected[-1]["content"], "red")
        else:
            for m in rec:
                turn(m["role"], m["content"])
    return text
