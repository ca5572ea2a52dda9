"""The trainer child: ``python -m coati_tui.train RUN_DIR`` (the stage is in RUN_DIR/config.toml).

The CLI and the app start it (through torchrun for several processes); a user can run it by hand on a
run folder too. Events go to stdout and RUN_DIR/events.jsonl; logs to stderr and RUN_DIR/train.log.
A stage is a recipe class (``trainer.recipe.Recipe``) run by the one loop; this table names them.
"""

from __future__ import annotations

import argparse
import importlib

from coati_tui.core.run_config import RunConfig

RECIPES = {  # stage -> (module, class)
    "sft": ("coati_tui.trainer.sft", "SFT"),
    "rm": ("coati_tui.trainer.rm", "RewardModel"),
    "ppo": ("coati_tui.trainer.ppo.recipe", "PPO"),
    "dpo": ("coati_tui.trainer.dpo", "DPO"),
    "orpo": ("coati_tui.trainer.orpo", "ORPO"),
    "kto": ("coati_tui.trainer.kto", "KTO"),
    "grpo": ("coati_tui.trainer.grpo", "GRPO"),
}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m coati_tui.train", description=__doc__)
    # a positional: torchrun would take "--run" for an abbreviation of its own --run-path
    ap.add_argument("run", help="run folder holding config.toml")
    args = ap.parse_args(argv)
    stage = RunConfig.read(args.run).stage
    module, name = RECIPES[stage]
    recipe = getattr(importlib.import_module(module), name)

    from coati_tui.trainer.loop import train
    from coati_tui.trainer.run import Run

    with Run(args.run) as run:
        train(recipe(run))


if __name__ == "__main__":
    main()
