"""Stop sequences on a stream of text pieces (pure Python; the worker's answers, an OpenAI ``stop``).

A piece is released as soon as no stop sequence can still begin inside it: text that might be the start
of a stop sequence is held back until the next piece decides. On a hit, nothing from the stop sequence on
is released, and ``text`` is the answer up to it.

    scan = StopScanner(["\\n\\n", "User:"])
    scan.feed("Hello Us")   # -> "Hello "  ("Us" could begin "User:")
    scan.feed("er: hi")     # -> ""        (a hit: scan.hit, scan.text == "Hello ")
"""

from __future__ import annotations

from collections.abc import Sequence


class StopScanner:
    def __init__(self, stops: Sequence[str] = ()) -> None:
        self.stops = [s for s in stops if s]
        self.longest = max((len(s) for s in self.stops), default=0)
        self.text = ""  # everything seen so far (cut at the stop sequence once hit)
        self.released = 0  # how much of ``text`` has been handed out
        self.hit: str | None = None  # the stop sequence found, if any

    def feed(self, piece: str) -> str:
        """The text that can be handed out now, ``piece`` included."""
        if self.hit is not None:
            return ""
        self.text += piece
        if not self.stops:
            return self._release(len(self.text))
        start = max(0, self.released - self.longest + 1)
        found = [(i, s) for s in self.stops if (i := self.text.find(s, start)) >= 0]
        if found:
            cut, self.hit = min(found)
            self.text = self.text[:cut]
            return self._release(cut)
        return self._release(len(self.text) - self._held())

    def finish(self) -> str:
        """At the end of the stream: whatever was held back (it began a stop sequence that never came)."""
        return self._release(len(self.text))

    def _held(self) -> int:
        """The longest end of ``text`` (not yet released) that some stop sequence begins with."""
        pending = len(self.text) - self.released
        for k in range(min(self.longest - 1, pending), 0, -1):
            tail = self.text[-k:]
            if any(s.startswith(tail) for s in self.stops):
                return k
        return 0

    def _release(self, upto: int) -> str:
        out = self.text[self.released : upto]
        self.released = max(self.released, upto)
        return out
