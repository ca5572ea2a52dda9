"""The Rank pane's part in the loop: export the labels, train the next reward model or a DPO run on them,
and start the next labeling round with the model that run produced. A mixin of ``RankScreen`` (it uses the
screen's store and model fields); the screen itself shows and judges pairs."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from textual.widgets import Input

from coati_tui.core import paths
from coati_tui.data import prefstore
from coati_tui.host.runs import rm_base
from coati_tui.ui.messages import PrefillStage

if TYPE_CHECKING:
    from textual.screen import Screen

    _Base = Screen
else:
    _Base = object


class RankLoop(_Base):
    store: Any

    def action_export(self) -> None:
        if self.store is None:
            return
        out_dir = paths.home() / "exports"
        stamp = time.strftime("%Y%m%d-%H%M%S")
        written = []
        for fmt in ("coati", "trl"):
            out = out_dir / f"prefs-{stamp}-{fmt}.jsonl"
            n, left_out = prefstore.export(self.store.path, fmt, out)
            written.append(str(out))
        self.notify(
            f"{n} pairs written (ties {left_out['tie']}, skips {left_out['skip']}, conflicts "
            f"{left_out['conflict']} left out):\n" + "\n".join(written),
            title="Exported",
            timeout=15,
        )

    def action_train_rm(self) -> None:
        """Train the next reward model on the labels so far: the Train mode's Home, set up and started
        (the planner picks the preset as for any run; the run snapshots the store at its start)."""
        if self.store is None:
            return
        records, _ = self.store.preferences()
        if len(records) < 2:
            self.notify("Label at least two pairs (A or B) first.", severity="warning")
            return
        model = self.query_one("#rank-model", Input).value.strip()
        if not model:
            self.notify("Model A decides the reward model's starting point: give it first.", severity="warning")
            return
        base = rm_base(model)
        self.post_message(
            PrefillStage(
                base,
                data=str(self.store.path),
                then="rm",
                hint=f"Reward model on {len(records)} labeled pairs from {self.store.path.name}, starting from {base}.",
            )
        )

    def action_train_dpo(self) -> None:
        """DPO on the labels so far, from model A itself (the policy the labels judged): Home, set up and
        started; when it finishes, ctrl+r makes it model A of the next round."""
        if self.store is None:
            return
        records, _ = self.store.preferences()
        model = self.query_one("#rank-model", Input).value.strip()
        if len(records) < 2 or not model:
            self.notify("Give model A and label at least two pairs (A or B) first.", severity="warning")
            return
        self.post_message(
            PrefillStage(
                model,
                data=str(self.store.path),
                then="dpo",
                hint=f"DPO on {len(records)} labeled pairs from {self.store.path.name}, "
                f"from {model}; when it is done, ctrl+r in Rank labels its answers.",
            )
        )

    def action_next_round(self) -> None:
        """The newest finished preference run (DPO / ORPO / KTO) becomes model A, model A becomes B, a new
        round starts in the store and generation restarts."""
        from coati_tui.host.runs import newest_output

        if self.store is None:
            return
        final = newest_output(("dpo", "orpo", "kto"))
        field_a, field_b = self.query_one("#rank-model", Input), self.query_one("#rank-model-b", Input)
        if final is None or final == field_a.value.strip():
            self.notify("No newer DPO / ORPO / KTO run has finished: train one first (ctrl+o).", severity="warning")
            return
        previous = field_a.value.strip()
        field_a.value, field_b.value = final, previous
        n = self.store.next_round(final, previous)
        self.notify(f"Round {n}: A = {final}\nB = {previous or '(none)'}", title="Next round", timeout=10)
        self.action_start()
