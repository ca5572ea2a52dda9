"""Memory while training: GPU allocated / peak against the card, CPU RSS / peak against RAM, and a
sparkline of each over the run."""

from __future__ import annotations

from rich.table import Table
from textual.widgets import Static

from coati_tui.ui.widgets.machine import bar as _bar


class MemoryPanel(Static):
    DEFAULT_CSS = """
    MemoryPanel { height: auto; border: round $primary; padding: 0 1; }
    """

    def __init__(self, gpu_total: int = 0, ram_total: int = 0, **kwargs) -> None:
        super().__init__("waiting for the first step…", **kwargs)
        self.border_title = "Memory"
        self.gpu_total, self.ram_total = gpu_total, ram_total
        self.cpu_peak = 0
        self.history: dict[str, list[int]] = {"GPU": [], "RSS": []}
        self.last: dict | None = None

    def on_resize(self, _event) -> None:
        if self.last:
            self.show(self.last)

    def record(self, step: dict) -> None:
        """One step's figures into the history (every step event, so a past run's sparkline is whole)."""
        if "gpu_allocated" in step:
            self.history["GPU"].append(step["gpu_allocated"])
        self.history["RSS"].append(step["cpu_rss"])
        self.cpu_peak = max(self.cpu_peak, step["cpu_rss"], step.get("cpu_peak", 0))

    def show(self, step: dict) -> None:
        """The latest step against the totals, with the recorded history."""
        self.last = step
        width = max(3, min(16, self.size.width - 34)) if self.size.width else 16

        def bar(used, total):
            return _bar(used, total, width)

        t = Table.grid(padding=(0, 1))
        t.add_column(style="bold", no_wrap=True)
        t.add_column()
        if "gpu_allocated" in step and self.gpu_total:
            t.add_row("GPU", bar(step["gpu_allocated"], self.gpu_total))
            t.add_row("rsvd", bar(step.get("gpu_reserved", 0), self.gpu_total))
            t.add_row("peak", bar(step.get("gpu_peak", 0), self.gpu_total))
            t.add_row("", sparkline(self.history["GPU"] or [step["gpu_allocated"]], width + 14))
        t.add_row("RSS", bar(step["cpu_rss"], self.ram_total or step["cpu_rss"]))
        t.add_row("peak", bar(self.cpu_peak or step["cpu_rss"], self.ram_total or self.cpu_peak or step["cpu_rss"]))
        t.add_row("", sparkline(self.history["RSS"] or [step["cpu_rss"]], width + 14))
        self.update(t)


def sparkline(values: list[int], width: int = 30) -> str:
    """The last ``width`` values as block characters, scaled between their min and max."""
    blocks = "▁▂▃▄▅▆▇█"
    tail = values[-width:]
    lo, hi = min(tail), max(tail)
    span = (hi - lo) or 1
    return "".join(blocks[min(7, int((v - lo) / span * 8))] for v in tail)
