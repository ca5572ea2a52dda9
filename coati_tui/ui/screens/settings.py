"""Hyperparameters of the chosen preset, editable, each with its help text; the values become the run's
overrides (and the headless command's flags, core.flags). Validation is the presets module's own."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Grid, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Input, Label, Static

from coati_tui.core.presets import Preset, PresetError, field_help

# What a user tunes most, in the order they think of it; everything else stays in preset files.
EDITABLE = (
    "train.batch_size",
    "train.accumulation_steps",
    "train.max_len",
    "train.lr",
    "train.max_epochs",
    "train.grad_checkpointing",
    "lora.rank",
    "ppo.rollout_batch",
    "ppo.max_new_tokens",
    "ppo.kl_coef",
    "ppo.ptx_coef",
    "ppo.temperature",
)


def current(preset: Preset, key: str):
    section, name = key.split(".")
    return getattr(getattr(preset, section), name)


def parse(text: str, like):
    text = text.strip()
    if isinstance(like, bool):
        if text.lower() in ("true", "yes", "on", "1"):
            return True
        if text.lower() in ("false", "no", "off", "0"):
            return False
        raise ValueError("true or false")
    try:
        return int(text) if isinstance(like, int) else float(text)
    except ValueError:
        kind = "a whole number" if isinstance(like, int) else "a number"
        raise ValueError(f"expected {kind}, got {text!r}") from None


class SettingsScreen(ModalScreen):
    """Dismisses with the overrides that differ from the preset (a dict), or None when cancelled."""

    BINDINGS = [Binding("escape", "dismiss(None)", "Cancel"), Binding("ctrl+s", "apply", "Apply")]
    DEFAULT_CSS = """
    SettingsScreen { align: center middle; }
    #settings { width: 90%; max-width: 120; height: 90%; border: round $accent; background: $surface; }
    #settings Grid { grid-size: 3; grid-columns: 26 12 1fr; grid-rows: auto; height: auto; grid-gutter: 0 1; }
    #settings Input { width: 12; }
    #settings-error { color: $error; height: auto; }
    """

    def __init__(self, preset: Preset, overrides: dict) -> None:
        super().__init__()
        self.preset, self.overrides = preset, dict(overrides)

    def compose(self) -> ComposeResult:
        helps = field_help()
        with VerticalScroll(id="settings"):
            yield Static(
                Text.assemble(
                    ("Settings for ", ""), (self.preset.name, "bold"), ("  enter or ctrl+s applies, esc cancels", "dim")
                )
            )
            with Grid():
                for key in EDITABLE:
                    value = self.overrides.get(key, current(self.preset, key))
                    yield Label(key)
                    yield Input(
                        str(value).lower() if isinstance(value, bool) else str(value),
                        id=key.replace(".", "__"),
                        compact=True,
                    )
                    yield Label(Text(helps.get(key, ""), style="dim"))
            yield Static(id="settings-error")

    def on_mount(self) -> None:
        self.query_one("#settings").border_title = "Hyperparameters"

    def on_input_submitted(self, _event) -> None:
        self.action_apply()

    def action_apply(self) -> None:
        chosen = {}
        try:
            for key in EDITABLE:
                like = current(self.preset, key)
                value = parse(self.query_one(f"#{key.replace('.', '__')}", Input).value, like)
                if value != like:
                    chosen[key] = value
            self.preset.with_overrides(chosen, "settings")  # the presets' own checks, naming the key
        except (ValueError, PresetError) as exc:
            where = f"{key}: " if not isinstance(exc, PresetError) else ""
            self.query_one("#settings-error", Static).update(f"{where}{exc}")
            return
        self.dismiss(chosen)


def apply_all(presets: dict[str, Preset], overrides: dict) -> dict[str, Preset]:
    """Each preset with the overrides it accepts (e.g. Gemini keeps lora.rank 0), for planning."""
    out = {}
    for name, p in presets.items():
        keep = {k: v for k, v in overrides.items() if not (k == "lora.rank" and p.strategy != "naive")}
        try:
            out[name] = p.with_overrides(keep, "settings")
        except PresetError:
            out[name] = p
        out[name].path = p.path
    return out
