"""Train: one run, live or past. Loss plot, memory, throughput, progress and ETA, log tail; cancel, resume.
PPO and GRPO runs plot the mean reward and add a health panel (PPO: reward, KL, ratio, clipping, PTX and value
loss; GRPO: reward per function, tied groups, KL, ratio), with their samples. The demo (``demo=True``) follows
its runs, SFT -> RM -> PPO, one after another.

The screen never reads the child's pipes: it tails the run's events.jsonl (the same lines the CLI
prints), so a live run, a finished one and a run re-attached after the app restarted look the same.
A timer drains new events ten times a second, so a fast trainer cannot flood the event loop.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import Screen
from textual.widgets import Header, ProgressBar, RichLog, Static

from coati_tui.core import events
from coati_tui.host import runs
from coati_tui.ui.widgets import health
from coati_tui.ui.widgets.footer import KeyFooter
from coati_tui.ui.widgets.loss_plot import LossPlot
from coati_tui.ui.widgets.memory import MemoryPanel

OOM_HINT = {
    "gpu_oom": "Out of GPU memory: pick a smaller preset in the plan (Home), or lower batch size / max_len.",
    "cpu_oom": "Out of RAM: a preset with less offload, or a smaller batch.",
    "data": "Fix the record named above and start again.",
    "missing_dependency": "Install what the message names, then resume (r).",
    "disk_full": "The disk is full: free space where the message says (old runs, checkpoints), then resume (r).",
}


PLOT_EVERY_S = 0.25


class TrainScreen(Screen):
    BINDINGS = [
        Binding("c", "cancel", "Cancel (checkpoint)", id="cancel"),
        Binding("r", "resume", "Resume", id="resume"),
        Binding("l", "log_scale", "Log scale", id="log_scale"),
        Binding("p", "retry_smaller", "Smaller preset", id="retry_smaller"),
        Binding("escape", "app.pop_screen", "Back", id="back"),
    ]

    def __init__(
        self,
        run_dir: Path | None = None,
        start: bool = False,
        gpu_total: int = 0,
        ram_total: int = 0,
        demo: bool = False,
    ) -> None:
        super().__init__()
        self.demo = demo
        self.chain = runs.demo_runs() if demo else [Path(run_dir)]
        if demo and run_dir is None:  # the first stage not yet completed
            run_dir = next((p for p in self.chain if runs.status(p)["status"] != "completed"), self.chain[-1])
        self.run_dir = Path(run_dir)
        self.stage = None
        self._plot_dirty, self._plot_drawn = False, 0.0
        self.fallback = None  # after an OOM: the planner's next smaller preset (a planner Row)
        self.start_now = start
        self.gpu_total, self.ram_total = gpu_total, ram_total
        self.tail = runs.Tail(self.run_dir)
        self.steps = events.Steps()  # the plotted steps as they stand (a resumed run redoes some)
        self.proc = None
        self.status = "waiting"
        self.total = None
        self.alarms: list[dict] = []  # reward-hacking alarms (PPO, GRPO with a reward model), on the health panel

    def compose(self) -> ComposeResult:
        yield Header()
        with Vertical(id="train"):
            yield Static(id="run-title")
            yield ProgressBar(id="progress", show_eta=True)
            with Horizontal(id="train-body"):
                yield LossPlot(id="loss")
                with Vertical(id="side"):
                    yield MemoryPanel(self.gpu_total, self.ram_total, id="memory")
                    yield Static(id="speed")
            yield Static(id="problem")
            yield RichLog(id="log", max_lines=200, wrap=True)
        yield KeyFooter()

    def on_mount(self) -> None:
        self.query_one("#run-title", Static).update(str(self.run_dir))
        self.query_one("#log").border_title = "Log"
        if self.start_now:
            self._launch()
        self.drain()
        note = "" if self.start_now or self.demo else runs.status(self.run_dir)["note"]
        if note:  # killed without a word: say where a resume starts
            self.query_one(RichLog).write(Text(f"{note} — press r to resume", style="yellow"))
        self.set_interval(0.1, self.drain)

    # ---- child -------------------------------------------------------------------------------
    def _launch(self, resume: bool = False) -> None:
        if self.demo:
            from coati_tui.core import paths

            self.proc = runs.spawn(runs.demo_command(resume=resume), paths.home() / "demo" / "demo.log")
        else:
            self.proc = runs.launch(self.run_dir, detached=True)
        self.status = "running"
        self.query_one("#problem", Static).update("")

    def action_cancel(self) -> None:
        pid = self.proc.pid if self.proc and self.proc.poll() is None else runs.alive(self.run_dir)
        if pid is None:
            self.notify("No trainer is running for this run.", severity="warning")
            return
        if self.demo and self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)  # the demo and its trainer: the trainer checkpoints, the demo stops
        else:
            os.kill(pid, signal.SIGINT)
        self.notify("Cancelling: the trainer finishes its step and writes a checkpoint.")

    def action_resume(self) -> None:
        if self.status in ("running", "waiting") and (
            (self.proc and self.proc.poll() is None) or runs.alive(self.run_dir)
        ):
            self.notify("Already running.", severity="warning")
            return
        self._resume_when_exited()

    @work(thread=True, exclusive=True, group="resume")
    def _resume_when_exited(self) -> None:
        """The last trainer said it is done; give it a moment to exit before starting the next one."""
        if self.proc is not None:
            try:
                self.proc.wait(timeout=30)
            except Exception:
                pass
        self.app.call_from_thread(self._launch, True)
        self.app.call_from_thread(self.notify, "Resuming from the last checkpoint.")

    def action_log_scale(self) -> None:
        plot = self.query_one(LossPlot)
        if self.stage in ("ppo", "grpo"):
            self.notify("The reward can be negative: no log scale for it.", severity="warning")
            return
        plot.log_scale = not plot.log_scale
        plot.redraw()

    # ---- events ------------------------------------------------------------------------------
    def drain(self) -> None:
        new = self.tail.read()
        if self._plot_dirty and time.monotonic() - self._plot_drawn >= PLOT_EVERY_S:
            self._redraw()
        if not new:
            if self.proc and self.proc.poll() not in (None, 0) and self.status == "running":
                self.status = "failed"
                self._problem(
                    "crash", f"the trainer exited with {self.proc.returncode}; see {self.run_dir}/child.log", []
                )
            return
        log = self.query_one(RichLog)
        last_step = None
        for ev in new:
            kind = ev["type"]
            if kind == "start":
                self.total = ev["total_steps"]
                if ev["stage"] != self.stage:
                    self.stage = ev["stage"]
                    self._reset_plot(events.step_view(self.stage).label)
                self.query_one(ProgressBar).update(total=self.total, progress=ev.get("resumed_from", 0))
                self.query_one("#run-title", Static).update(
                    Text.assemble(
                        (f"{ev['stage'].upper()} ", "bold"),
                        f"{ev['strategy']} · {ev['device']} · {ev['precision']} · ",
                        f"{ev['trainable_params']:,} of {ev['params']:,} params train · ",
                        (str(self.run_dir), "dim"),
                    )
                )
                self._plot_step(ev)
            elif kind == "step":
                self._plot_step(ev)
                self.query_one(MemoryPanel).record(ev)
                last_step = ev
            elif kind in ("sample", "eval", "checkpoint", "log"):
                log.write(_log_text(ev))
            elif kind == "alarm":
                self.alarms = [a for a in self.alarms if a["step"] < ev["step"]] + [ev]  # a redone step's once
                log.write(Text(events.describe(ev), style="bold red"))
            elif kind == "done" and self._next_stage(ev):
                return self.drain()  # the demo goes on with its next run
            elif kind == "done":
                self.status = ev["status"]
                text = Text(events.describe(ev), style="green" if ev["status"] == "completed" else "yellow")
                log.write(text if ev.get("final") else text + " — press r to resume")
            elif kind == "error":
                self.status = "failed"
                self._problem(ev["kind"], ev["message"], ev["log_tail"])
        if last_step:
            self.status = "running" if self.status == "waiting" else self.status
            self.query_one(ProgressBar).update(progress=last_step["step"])
            self.query_one(MemoryPanel).show(last_step)
            self.query_one("#speed", Static).update(health.panel(last_step, self.alarms, self.stage))
        self._plot_dirty = True
        if time.monotonic() - self._plot_drawn >= PLOT_EVERY_S:
            self._redraw()

    def _plot_step(self, ev: dict) -> None:
        """A step into the plot; a resumed trainer's start, or a step recorded again, drops the points of
        the steps it redoes (``events.Steps``: the later record wins)."""
        plot = self.query_one(LossPlot)
        kept = self.steps.add(ev)
        if kept < len(plot.steps):
            plot.steps, plot.values = plot.steps[:kept], plot.values[:kept]
        if ev["type"] == "step":
            plot.add(ev["step"], ev[events.step_view(self.stage, ev).metric])

    def _reset_plot(self, title: str) -> None:
        self.query_one(LossPlot).reset(title)
        self.steps = events.Steps()

    def _redraw(self) -> None:
        """Plotext redraws cost tens of ms: at most four a second, however fast events come."""
        self.query_one(LossPlot).redraw()
        self._plot_dirty, self._plot_drawn = False, time.monotonic()

    def _next_stage(self, ev: dict) -> bool:
        """The demo: when a run completes, follow the next one (the demo process starts it)."""
        if not self.demo or ev["status"] != "completed" or self.run_dir == self.chain[-1]:
            return False
        self.query_one(RichLog).write(Text(f"{self.stage} completed: {ev.get('final')}", style="green"))
        self.run_dir = self.chain[self.chain.index(self.run_dir) + 1]
        self.tail = runs.Tail(self.run_dir)
        return True

    def _problem(self, kind: str, message: str, tail: list[str], fallback: str = "") -> None:
        text = Text.assemble((f"{kind.replace('_', ' ')}: ", "bold red"), message)
        if fallback:
            text.append("\n" + fallback, style="bold yellow")
        elif kind in OOM_HINT:
            text.append("\n" + OOM_HINT[kind], style="yellow")
        for line in tail[-6:]:
            text.append("\n  " + line, style="dim")
        self.query_one("#problem", Static).update(text)
        if kind in ("gpu_oom", "cpu_oom") and not fallback:
            self._find_smaller(kind, message, tail)

    @work(thread=True, exclusive=True, group="plan")
    def _find_smaller(self, kind: str, message: str, tail: list[str]) -> None:
        """The planner's next smaller preset for this run's model and stage (no torch: config.json only)."""
        from coati_tui.core import hardware, modelinfo, planner, presets
        from coati_tui.core.run_config import RunConfig

        cfg = RunConfig.read(self.run_dir)
        arch = modelinfo.Arch.from_config(modelinfo.read_config(cfg.model))
        result = planner.plan(
            arch, presets.load_all(), planner.Machine.from_profile(hardware.profile()), (cfg.stage,), model=cfg.model
        )
        row = planner.smaller(result, cfg.stage, cfg.preset.name, kind)
        self.fallback = row
        note = (
            f"Next smaller preset: {row.preset} ({row.reason}). Press p to retry with it."
            if row
            else "No smaller preset fits this machine: lower train.batch_size or max_len."
        )
        self.app.call_from_thread(self._problem, kind, message, tail, note)

    def action_retry_smaller(self) -> None:
        if self.fallback is None:
            self.notify("Only after an out-of-memory error, when a smaller preset fits.", severity="warning")
            return
        new, resumed = runs.retry_with(self.run_dir, self.fallback.preset)
        self.notify(
            f"{self.fallback.preset}: "
            + ("resuming from the last checkpoint" if resumed else "starting over (its checkpoints differ)")
            + f" in {new.name}"
        )
        self.run_dir, self.tail, self.fallback, self.stage = new, runs.Tail(new), None, None
        self.chain = [new]
        self._reset_plot("loss")
        self._launch()


def _log_text(ev: dict) -> Text:
    """An event's line in the log: the CLI's words (events.describe), a sample's parts set off."""
    text = Text(events.describe(ev))
    if ev["type"] == "sample":
        text.stylize("bold", 0, len(f"sample @{ev['step']} "))
        start = len(f"sample @{ev['step']} {ev['prompt']} → ")
        text.stylize("cyan", start, start + len(ev["response"]))
    return text
