"""The key footer as one widget: the screen's shown keys on one line, each clickable, redrawn only when
what it shows changes.

Textual's Footer is a container of one widget per key (FooterKey): on Home that is fourteen widgets
styled, laid out and rendered before the first frame, and rebuilt on every bindings refresh (each focus
change). This draws the same keys, in the same colours (the stock Footer's component classes and theme
variables), as one line of text: a click on a key presses it (``app.simulate_key``; a disabled key
rings the bell), the command palette's key sits at the right end.
"""

from __future__ import annotations

from rich.style import Style
from rich.text import Text
from textual.screen import Screen
from textual.widget import Widget


class KeyFooter(Widget):
    ALLOW_SELECT = False
    COMPONENT_CLASSES = {"footer-key--key", "footer-key--description"}
    DEFAULT_CSS = """
    KeyFooter {
        dock: bottom;
        height: 1;
        color: $footer-foreground;
        background: $footer-background;
        text-wrap: nowrap;
        pointer: pointer;
        .footer-key--key {
            color: $footer-key-foreground;
            background: $footer-key-background;
            text-style: bold;
        }
        .footer-key--description {
            color: $footer-description-foreground;
            background: $footer-description-background;
        }
    }
    """

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.drawn: tuple = ()  # the keys the last render drew (shown_keys)

    def on_mount(self) -> None:
        self.screen.bindings_updated_signal.subscribe(self, self._bindings_changed)

    def _bindings_changed(self, screen: Screen) -> None:
        if screen is self.screen and shown_keys(screen) != self.drawn:
            self.refresh()

    def render(self) -> Text:
        self.drawn = shown_keys(self.screen)
        key_style = self.get_component_rich_style("footer-key--key")
        desc_style = self.get_component_rich_style("footer-key--description")
        palette_key = self.app.COMMAND_PALETTE_BINDING
        line, palette = Text(no_wrap=True, end=""), Text(no_wrap=True, end="")
        seen: set[str] = set()
        for key, display, description, action, enabled, _tooltip, _group in self.drawn:
            if action in seen:  # several keys for one action: the first is shown, as the stock Footer does
                continue
            seen.add(action)
            click = Style(meta={"@click": f"app.simulate_key({key!r})" if enabled else "app.bell"})
            dim = Style(dim=not enabled)
            into = palette if key == palette_key else line
            into.append(f" {display} ", key_style + dim + click)
            into.append(f"{description} ", desc_style + dim + click)
        if palette and self.app.ENABLE_COMMAND_PALETTE:  # at the right end, over the keys that do not fit
            room = max(0, self.size.width - palette.cell_len - 1)
            line.truncate(room, pad=True)
            line.append("▏", Style(dim=True))
            line.append_text(palette)
        return line


def shown_keys(screen: Screen) -> tuple:
    """What the footer draws of the screen's active bindings (the shown ones and the palette's key): key,
    key display, description, action, enabled, tooltip, group. Focus moving between widgets changes only
    hidden ones."""
    app = screen.app
    palette = app.COMMAND_PALETTE_BINDING
    return tuple(
        (key, app.get_key_display(b), b.description, b.action, enabled, tooltip, b.group)
        for key, (_, b, enabled, tooltip) in screen.active_bindings.items()
        if b.show or key == palette
    )
