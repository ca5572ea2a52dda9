"""The machine panel: GPUs and RAM as bars, cores, disk, and which stacks are installed. It posts
``MachinePanel.Drawn`` once a profile it was given has been drawn (Home plans after that frame)."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text
from textual.app import RenderResult
from textual.message import Message
from textual.widgets import Static

from coati_tui.core.hardware import Profile
from coati_tui.core.units import fmt_bytes


def bar(used: int, total: int, width: int = 16) -> Text:
    """'██████░░░░ 7.5 / 12.0 GiB', coloured by how full it is."""
    frac = 0.0 if total <= 0 else min(1.0, used / total)
    filled = round(frac * width)
    style = "green" if frac < 0.7 else "yellow" if frac < 0.9 else "red"
    text = Text("█" * filled, style=style)
    text.append("░" * (width - filled), style="grey37")
    text.append(f" {fmt_bytes(used)} / {fmt_bytes(total)}")
    return text


class MachinePanel(Static):
    DEFAULT_CSS = """
    MachinePanel { height: auto; padding: 0 1; border: round $primary; }
    """

    class Drawn(Message):
        """The profile given to ``show`` is on screen."""

    def __init__(self, **kwargs) -> None:
        super().__init__("Profiling…", **kwargs)
        self.border_title = "Machine"
        self._drawn_pending = False

    def render(self) -> RenderResult:
        if self._drawn_pending:  # rendering for the frame that shows it: say so once that frame is out
            self._drawn_pending = False
            self.post_message(self.Drawn())
        return super().render()

    def show(self, prof: Profile) -> None:
        t = Table.grid(padding=(0, 1))
        t.add_column(style="bold", no_wrap=True)
        t.add_column()
        if prof.gpus:
            for g in prof.gpus:
                t.add_row(f"GPU {g.index}", f"{g.name}  cc {g.compute_capability}  {'bf16' if g.bf16 else 'fp16 only'}")
                t.add_row("", bar(g.total_bytes - g.free_bytes, g.total_bytes))
        else:
            t.add_row("GPU", Text(f"none: training runs on the CPU ({prof.nvml_error})", style="yellow"))
        c = prof.cpu
        t.add_row("RAM", bar(c.ram_total_bytes - c.ram_available_bytes, c.ram_total_bytes))
        t.add_row("CPU", f"{c.cores} cores, {c.threads} threads")
        t.add_row("Disk", f"{fmt_bytes(prof.disk_free_bytes)} free at {prof.disk_path}")
        stacks = Text()
        for name, s in prof.stacks.items():
            if name == "textual":
                continue
            ok = s["installed"]
            stacks.append(f"{'✓' if ok else '✗'} {name}", style="green" if ok else "grey50")
            if ok:
                stacks.append(f" {s['version']}", style="dim")
            stacks.append("  ")
        t.add_row("Stacks", stacks)
        self.update(t)
        self._drawn_pending = True
