"""Loss over steps: raw and smoothed (exponential moving average), optional log scale."""

from __future__ import annotations

import math

from textual_plotext import PlotextPlot


class LossPlot(PlotextPlot):
    DEFAULT_CSS = """
    LossPlot { height: 1fr; min-height: 8; border: round $primary; }
    """

    def __init__(self, title: str = "loss", **kwargs) -> None:
        super().__init__(**kwargs)
        self.border_title = title
        self.steps: list[int] = []
        self.values: list[float] = []
        self.log_scale = False
        self.ylabel = title

    def reset(self, title: str) -> None:
        self.steps, self.values = [], []
        self.border_title = self.ylabel = title
        self.log_scale = False

    def add(self, step: int, value: float) -> None:
        self.steps.append(step)
        self.values.append(value)

    def smoothed(self, alpha: float = 0.1) -> list[float]:
        out, ema = [], None
        for v in self.values:
            ema = v if ema is None else (1 - alpha) * ema + alpha * v
            out.append(ema)
        return out

    def redraw(self) -> None:
        plt = self.plt
        plt.clear_data()
        plt.clear_figure()
        if self.values:
            ys = self.values
            smooth = self.smoothed()
            if self.log_scale:
                ys = [math.log10(max(v, 1e-12)) for v in ys]
                smooth = [math.log10(max(v, 1e-12)) for v in smooth]
            plt.plot(self.steps, ys, label="raw", marker="braille")
            plt.plot(self.steps, smooth, label="smoothed", marker="braille")
            plt.xlabel("step")
            plt.ylabel(f"log10 {self.ylabel}" if self.log_scale else self.ylabel)
        self.refresh()
