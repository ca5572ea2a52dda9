"""The ``coati-tui`` command. With no command it opens the app; every other command runs headless.

One module per group of commands (info: profile, plan, presets; train; demo; gen: generate, chat, rank,
quantize; serve; data: export, tiny); the typer app is assembled here. Keep them light: they are imported on
every start, so heavy work is imported inside commands.
"""

from __future__ import annotations

import typer

from coati_tui.cli import data, demo, gen, info, serve, train

app = typer.Typer(
    add_completion=False,
    no_args_is_help=False,
    rich_markup_mode="rich",
    help="coati-tui: SFT -> reward model -> PPO on one consumer GPU, from a terminal. With no command, opens the app.",
)


@app.callback(invoke_without_command=True)
def _root(
    ctx: typer.Context,
    model: str | None = typer.Option(None, "--model", help="model folder, run folder or cached hub id"),
) -> None:
    if ctx.invoked_subcommand is not None:
        return
    from coati_tui.core import hardware

    hardware.profile_early()  # overlaps the app's imports and start-up
    from coati_tui.ui.app import run_app

    run_app(model=model)


app.command()(info.profile)
app.command()(info.plan)
app.command(name="presets")(info.list_presets)
app.command(context_settings={"allow_interspersed_args": True})(train.train)
app.command()(demo.demo)
app.command()(gen.chat)
app.command()(gen.generate)
app.command()(gen.quantize)
app.command()(gen.rank)
app.command()(serve.serve)
app.add_typer(data.export_app, name="export")
app.add_typer(data.data_app, name="data")
app.command()(data.tiny)


def main() -> None:
    app()
