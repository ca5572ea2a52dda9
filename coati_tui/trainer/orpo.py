"""ORPO (Hong et al. 2024): the SFT loss on the chosen answer plus an odds-ratio term that pushes the
chosen answer's odds above the rejected one's, in one stage and without a reference model.

Everything but the loss is the pair recipe of ``dpo.py`` (data, concatenated batch, answer-only
log-probs, the shared loop); the knob is ``orpo.beta``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from coati_tui.trainer import prefs_math
from coati_tui.trainer.dpo import PairRecipe, _pair_metrics
from coati_tui.trainer.loop import train
from coati_tui.trainer.run import Run


class ORPO(PairRecipe):
    needs_reference = False

    def pair_loss(self, batch: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        logps, n = self.answer_logps(batch)
        c, r = logps.chunk(2)
        n_c, n_r = n.chunk(2)
        odds_loss, rc, rr, log_odds = prefs_math.orpo(c, r, n_c, n_r, self.preset.orpo.beta)
        nll = -c.sum() / n_c.sum().clamp(min=1)  # the SFT loss on the chosen answers' tokens
        return nll + odds_loss.mean(), {
            "nll": nll.detach(),
            "log_odds_ratio": log_odds.mean(),
            **_pair_metrics(rc, rr, c, r, n_c, n_r),
        }

    @property
    def loss_name(self) -> str:
        return "orpo"


def main(run_dir: str | Path) -> None:
    with Run(run_dir) as run:
        train(ORPO(run))
