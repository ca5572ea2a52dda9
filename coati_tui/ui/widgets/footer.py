"""Textual's Footer, composed with its screen and recomposed only when the keys it shows change.

The stock Footer draws no keys until the screen's bindings are first refreshed, then rebuilds all of
them on every refresh (each focus change, the screen's mount, the app's focus): with Home's eleven keys
each rebuild costs ~20-40 ms, and start-up did three of them before the first frame. This one builds
its keys once with the screen and again only when what it shows changes, and gives each key the
footer's compact setting before it mounts; what it draws is the stock Footer's.
"""

from __future__ import annotations

from textual.app import ComposeResult
from textual.screen import Screen
from textual.widgets import Footer
from textual.widgets._footer import FooterKey


class KeyFooter(Footer):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._drawn: tuple | None = None

    def compose(self) -> ComposeResult:
        self._bindings_ready = True  # the stock Footer waits for the first bindings refresh
        self._drawn = shown_keys(self.screen)
        for widget in super().compose():
            if isinstance(widget, FooterKey) and not widget.has_class("-command-palette"):
                # a key is born compact and then bound to the footer's setting (two restyles each): set
                # it now (the palette's key is not bound, and stays compact)
                widget.set_reactive(FooterKey.compact, self.compact)
            yield widget

    def bindings_changed(self, screen: Screen) -> None:
        if shown_keys(screen) != self._drawn:
            super().bindings_changed(screen)


def shown_keys(screen: Screen) -> tuple:
    """What a Footer draws of the screen's active bindings (the shown ones and the palette's key): key,
    label, action, enabled, tooltip. Focus moving between widgets changes only hidden ones."""
    palette = screen.app.COMMAND_PALETTE_BINDING
    return tuple(
        (key, b.key_display, b.description, b.action, enabled, tooltip, b.group)
        for key, (_, b, enabled, tooltip) in screen.active_bindings.items()
        if b.show or key == palette
    )
