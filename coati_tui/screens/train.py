"""Train: one run, live or past. Loss plot, memory, throughput, progress and ETA, log tail; cancel, resume.

The screen never reads the child's pipes: it tails the run's events.jsonl (the same lines the CLI
prints), so a live run, a finished one and a run re-attached after the app restarted look the same.
A timer drains new events ten times a second, so a fast trainer cannot flood the event loop.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import Screen
from textual.widgets import Footer, Header, ProgressBar, RichLog, Static

from coati_tui import runs
from coati_tui.units import fmt_bytes
from coati_tui.widgets.loss_plot import LossPlot
from coati_tui.widgets.memory import MemoryPanel

OOM_HINT = {"gpu_oom": "Out of GPU memory: pick a smaller preset in the plan (Home), or lower batch size / max_len.",
            "cpu_oom": "Out of RAM: a preset with less offload, or a smaller batch.",
            "data": "Fix the record named above and start again.",
            "missing_dependency": "Install what the message names, then resume (r)."}


class TrainScreen(Screen):
    BINDINGS = [
        Binding("c", "cancel", "Cancel (checkpoint)", id="cancel"),
        Binding("r", "resume", "Resume", id="resume"),
        Binding("l", "log_scale", "Log scale", id="log_scale"),
        Binding("escape", "app.pop_screen", "Back", id="back"),
    ]

    def __init__(self, run_dir: Path, start: bool = False, gpu_total: int = 0, ram_total: int = 0) -> None:
        super().__init__()
        self.run_dir = Path(run_dir)
        self.start_now = start
        self.gpu_total, self.ram_total = gpu_total, ram_total
        self.tail = runs.Tail(self.run_dir)
        self.proc = None
        self.status = "waiting"
        self.total = None

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
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#run-title", Static).update(str(self.run_dir))
        self.query_one("#log").border_title = "Log"
        if self.start_now:
            self._launch()
        self.drain()
        self.set_interval(0.1, self.drain)

    # ---- child -------------------------------------------------------------------------------
    def _launch(self) -> None:
        self.proc = runs.launch(self.run_dir, detached=True)
        self.status = "running"
        self.query_one("#problem", Static).update("")

    def action_cancel(self) -> None:
        pid = self.proc.pid if self.proc and self.proc.poll() is None else runs.alive(self.run_dir)
        if pid is None:
            self.notify("No trainer is running for this run.", severity="warning")
            return
        os.kill(pid, signal.SIGINT)
        self.notify("Cancelling: the trainer finishes its step and writes a checkpoint.")

    def action_resume(self) -> None:
        if self.status in ("running", "waiting") and (
                (self.proc and self.proc.poll() is None) or runs.alive(self.run_dir)):
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
        self.app.call_from_thread(self._launch)
        self.app.call_from_thread(self.notify, "Resuming from the last checkpoint.")

    def action_log_scale(self) -> None:
        plot = self.query_one(LossPlot)
        plot.log_scale = not plot.log_scale
        plot.redraw()

    # ---- events ------------------------------------------------------------------------------
    def drain(self) -> None:
        new = self.tail.read()
        if not new:
            if self.proc and self.proc.poll() not in (None, 0) and self.status == "running":
                self.status = "failed"
                self._problem("crash", f"the trainer exited with {self.proc.returncode}; see {self.run_dir}/child.log",
                              [])
            return
        plot = self.query_one(LossPlot)
        log = self.query_one(RichLog)
        last_step = None
        for ev in new:
            kind = ev["type"]
            if kind == "start":
                self.total = ev["total_steps"]
                self.query_one(ProgressBar).update(total=self.total, progress=ev.get("resumed_from", 0))
                self.query_one("#run-title", Static).update(Text.assemble(
                    (f"{ev['stage'].upper()} ", "bold"), f"{ev['strategy']} · {ev['device']} · {ev['precision']} · ",
                    f"{ev['trainable_params']:,} of {ev['params']:,} params train · ", (str(self.run_dir), "dim")))
                if ev.get("resumed_from"):  # a resumed run redraws from its first step: drop the cut tail
                    keep = [i for i, s in enumerate(plot.steps) if s <= ev["resumed_from"]]
                    plot.steps, plot.values = plot.steps[: len(keep)], plot.values[: len(keep)]
            elif kind == "step":
                plot.add(ev["step"], ev["loss"])
                last_step = ev
            elif kind == "eval":
                log.write(f"eval @ {ev['step']}: " + ", ".join(f"{k} {v:.4g}" for k, v in ev["metrics"].items()))
            elif kind == "checkpoint":
                log.write(f"checkpoint {ev['path']}")
            elif kind == "log":
                log.write(ev["message"])
            elif kind == "done":
                self.status = ev["status"]
                msg = f"{ev['status']} at step {ev['step']}" + (
                    f": {ev['final']}" if ev.get("final") else " — press r to resume")
                log.write(Text(msg, style="green" if ev["status"] == "completed" else "yellow"))
            elif kind == "error":
                self.status = "failed"
                self._problem(ev["kind"], ev["message"], ev["log_tail"])
        if last_step:
            self.status = "running" if self.status == "waiting" else self.status
            self.query_one(ProgressBar).update(progress=last_step["step"])
            self.query_one(MemoryPanel).show(last_step)
            self.query_one("#speed", Static).update(
                f"{last_step['tokens_per_s']:,.0f} tok/s · {last_step['samples_per_s']:.1f} samples/s\n"
                f"step {last_step['step']}/{last_step['total_steps']} · loss {last_step['loss']:.4f}\n"
                f"lr {last_step['lr']:.2e} · ETA {last_step['eta_s']:.0f} s · RSS {fmt_bytes(last_step['cpu_rss'])}")
        plot.redraw()

    def _problem(self, kind: str, message: str, tail: list[str]) -> None:
        text = Text.assemble((f"{kind.replace('_', ' ')}: ", "bold red"), message)
        if kind in OOM_HINT:
            text.append("\n" + OOM_HINT[kind], style="yellow")
        for line in tail[-6:]:
            text.append("\n  " + line, style="dim")
        self.query_one("#problem", Static).update(text)
