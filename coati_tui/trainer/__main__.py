"""The trainer child: ``python -m coati_tui.train RUN_DIR`` (the stage is in RUN_DIR/config.toml).

The CLI and the app start it (through torchrun for several processes); a user can run it by hand on a
run folder too. Events go to stdout and RUN_DIR/events.jsonl; logs to stderr and RUN_DIR/train.log.
"""

from __future__ import annotations

import argparse

from coati_tui.core.run_config import RunConfig


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m coati_tui.train", description=__doc__)
    # a positional: torchrun would take "--run" for an abbreviation of its own --run-path
    ap.add_argument("run", help="run folder holding config.toml")
    args = ap.parse_args(argv)
    stage = RunConfig.read(args.run).stage
    if stage == "sft":
        from coati_tui.trainer.sft import main as run
    elif stage == "rm":
        from coati_tui.trainer.rm import main as run
    else:
        from coati_tui.trainer.ppo import main as run
    run(args.run)


if __name__ == "__main__":
    main()
