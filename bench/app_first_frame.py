"""The app's first frame against a bare Textual app's, in the same run.

    OMP_NUM_THREADS=1 python bench/app_first_frame.py [-n 7] [--compare DIR] [--imports]

Each sample is a fresh `python -c ...` process, timed (wall clock) from just before it is started, so
the interpreter's start is included, to its first frame:
- bare: a Textual App with Header + DataTable + Footer; its first frame;
- app: `coati-tui` as the console script starts it (``hardware.profile_early()``, then the app); the
  first frame with Home's machine panel filled.
Two figures per kind: "written" is when that frame went to the (headless) driver (``App._display``
returns); "pilot" is when an auto-pilot that waits for it (the app: polls for Home's profile, then
``pilot.pause(0)``; the bare app: ``pilot.pause(0)``) gets control back: the earlier measure
(bench/app_speed.py), which also counts whatever work was queued just after that frame.
The kinds run in rotation, each taking each place in turn, so that drift in the machine's load hits each;
the figures are medians of ``-n`` samples each and their ratio to bare (goal: app <= 1.3x bare).
``--compare DIR`` times a second checkout the same way, in the same rotation (bare, DIR, this one): a
before/after in one run, e.g. ``git worktree add /tmp/before HEAD`` then ``--compare /tmp/before``.
Both trees' coati_tui is byte-compiled first (``compileall``), as pip does when it installs a wheel and as
Python does on a first start: Textual's modules come compiled from its wheel, and where the environment sets
PYTHONDONTWRITEBYTECODE (as these sandboxes do) an editable checkout would otherwise be compiled from source
on every start, which is not what a user's second start costs.
``--imports`` also prints which coati_tui / textual_plotext / markdown modules the app had imported
by its first frame (what a lazy import could still take off it).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

FRAME = r"""
import sys, time
import textual.app
_display, FRAME = textual.app.App._display, {}
def display(self, screen, update):  # the frame is written when this returns
    _display(self, screen, update)
    if "t" not in FRAME and READY(self):
        FRAME["t"], FRAME["modules"] = time.time(), list(sys.modules)
textual.app.App._display = display
"""

BARE = (
    FRAME
    + r"""
from textual.app import App
from textual.widgets import DataTable, Footer, Header
READY = lambda app: True
class Bare(App):
    def compose(self):
        yield Header()
        yield DataTable()
        yield Footer()
async def pilot_fn(pilot):
    await pilot.pause(0)
    print(FRAME["t"], time.time(), flush=True)
    pilot.app.exit()
Bare().run(headless=True, auto_pilot=pilot_fn, size=(100, 30))
"""
)

APP = (
    FRAME
    + r"""
from coati_tui.core import hardware
hardware.profile_early()  # as `coati-tui` does before importing the app
from coati_tui.ui.app import CoatiApp
READY = lambda app: getattr(app.screen, "profile", None) is not None  # Home fills the machine panel with it
async def pilot_fn(pilot):
    app = pilot.app
    while not READY(app):
        await pilot.pause(0.005)
    await pilot.pause(0)  # the frame with the panel filled
    print(FRAME["t"], time.time(), flush=True)
    if "--imports" in sys.argv:
        names = sorted(m for m in FRAME["modules"] if m.startswith(("coati_tui", "textual_plotext", "plotext",
                                                                      "markdown_it", "rich.markdown")))
        print(" ".join(names), flush=True)
    app.exit()
CoatiApp().run(headless=True, auto_pilot=pilot_fn, size=(100, 30))
"""
)


def sample(code: str, *args: str, tree: str = "") -> tuple[tuple[float, float], list[str]]:
    """(written, pilot) seconds from the process's start, and what it printed."""
    # `python -c` puts its working folder first on sys.path, ahead of the installed (editable) package
    cwd = tree or os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    t0 = time.time()
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=60, cwd=cwd)
    if proc.returncode != 0:
        raise SystemExit(proc.stderr[-2000:])
    lines = proc.stdout.strip().splitlines()
    written, pilot = (float(x) - t0 for x in lines[0].split())
    return (written, pilot), lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=7, help="fresh processes of each kind (default 7)")
    ap.add_argument("--imports", action="store_true", help="list the app's imports at its first frame")
    ap.add_argument("--compare", metavar="DIR", help="another coati-tui checkout to time alongside")
    args = ap.parse_args()
    os.environ.setdefault("COATI_TUI_HOME", tempfile.mkdtemp())  # no runs to re-attach, no user presets
    kinds = {"bare": (BARE, ""), **({"compare": (APP, args.compare)} if args.compare else {}), "app": (APP, "")}
    times: dict[str, list[tuple[float, float]]] = {k: [] for k in kinds}
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for tree in {here, args.compare or here}:  # as an installed wheel or a second start has them
        subprocess.run([sys.executable, "-m", "compileall", "-q", os.path.join(tree, "coati_tui")], check=True)
    for code, tree in kinds.values():  # warm the file cache for each before timing
        sample(code, tree=tree)
    order = list(kinds)
    for _ in range(args.n):
        for kind in order:
            code, tree = kinds[kind]
            times[kind].append(sample(code, tree=tree)[0])
        order = order[1:] + order[:1]  # each kind takes each place in the rotation in turn
    labels = {
        "bare": "bare Textual app (Header + DataTable + Footer)",
        "compare": f"coati-tui at {args.compare}, machine filled",
        "app": "coati-tui, first frame with the machine filled",
    }
    width = max(len(v) for v in labels.values())
    for i, what in enumerate(("written", "pilot")):
        med = {k: statistics.median(t[i] for t in v) for k, v in times.items()}
        print(f"first frame, {what}:")
        for kind, v in times.items():
            ratio = "" if kind == "bare" else f"  {med[kind] / med['bare']:.2f}x bare"
            print(f"  {labels[kind]:{width}s} median {med[kind]:.3f} s (min {min(t[i] for t in v):.3f}){ratio}")
    print(f"goal: app <= 1.3x bare; {args.n} fresh processes each, in rotation, wall time from process start")
    if args.imports:
        print("app modules imported by the first frame:", sample(APP, "--imports")[1][-1])


if __name__ == "__main__":
    main()
