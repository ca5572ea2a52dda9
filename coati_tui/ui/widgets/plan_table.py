"""The plan as a table: one row per preset, one column per stage, the recommended preset starred."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import DataTable


class PlanTable(DataTable):
    DEFAULT_CSS = """
    PlanTable { height: auto; max-height: 12; }
    """

    def __init__(self, **kwargs) -> None:
        super().__init__(cursor_type="row", zebra_stripes=True, **kwargs)
        self.plan = None
        self.presets = {}

    def show(self, plan, presets) -> None:
        from coati_tui.host.render import STATUS_STYLE, SYMBOL, method, short_bytes  # after the first frame

        self.plan, self.presets = plan, presets
        self.clear(columns=True)
        stages = list(dict.fromkeys(r.stage for r in plan.rows))
        self.add_columns("preset", "method", *[s.upper() for s in stages])
        for name in dict.fromkeys(r.preset for r in plan.rows):
            cells = []
            for st in stages:
                r = next(x for x in plan.rows if x.preset == name and x.stage == st)
                size = short_bytes(r.cpu_bytes)
                if r.device == "cuda":
                    size = f"{short_bytes(r.gpu_bytes)}/{size}"
                mark = "*" if r.fits and r.changes else ""  # fits with the settings the detail names
                cells.append(Text(f"{size} {SYMBOL[r.status]}{mark}", style=STATUS_STYLE[r.status]))
            label = Text(
                name + (" ★" if name == plan.recommended else ""), style="bold" if name == plan.recommended else ""
            )
            self.add_row(label, method(presets[name]), *cells, key=name)
        if plan.recommended:
            self.move_cursor(row=self.get_row_index(plan.recommended))

    def rows_for(self, name: str):
        return [r for r in self.plan.rows if r.preset == name] if self.plan else []
