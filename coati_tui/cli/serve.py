"""`serve`: a model or a run's output behind an OpenAI-compatible API (coati_tui.serve, FastAPI + uvicorn)."""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path
from typing import Any

import typer

from coati_tui.cli.common import fail
from coati_tui.cli.gen import QUANT_HELP, _check_quant


def default_name(model: str) -> str:
    """What /v1/models calls the model: its folder's name (a run's name for its final/)."""
    path = Path(model).expanduser()
    if path.name == "final" and path.parent.name:
        return path.parent.name
    return path.name or model


def serve(
    model: str = typer.Argument(..., help="model folder, run folder (its final/) or cached hub id"),
    quant: str = typer.Option("none", "--quant", help=QUANT_HELP),
    host: str = typer.Option("127.0.0.1", "--host", help="address to listen on (0.0.0.0: every interface)"),
    port: int = typer.Option(8000, "--port", min=0, max=65535, help="0: any free port (the start-up line says)"),
    api_key: str | None = typer.Option(
        None, "--api-key", envvar="COATI_TUI_API_KEY", help="require `Authorization: Bearer KEY` (or set the env var)"
    ),
    max_queue: int = typer.Option(16, "--max-queue", min=0, help="requests that may wait; beyond them, 429"),
    name: str | None = typer.Option(None, "--name", help="the model's id in /v1/models (default: its folder's name)"),
) -> None:
    """Serve MODEL on /v1/chat/completions and /v1/completions, as the OpenAI client expects."""
    _check_quant(quant)
    try:
        import uvicorn

        from coati_tui.serve.app import create_app
        from coati_tui.serve.broker import Broker
    except ImportError as exc:
        fail(f"serving needs FastAPI and uvicorn ({exc.name} is missing): pip install fastapi uvicorn", 1)
    from coati_tui.core import paths

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    if host not in ("127.0.0.1", "localhost", "::1") and not api_key:
        logging.getLogger("coati_tui.serve").warning(
            "listening on %s without --api-key: anyone who can reach this machine can use the model", host
        )
    broker = Broker(model, quant, log_path=paths.home() / "logs" / "serve-worker.log", max_queue=max_queue)
    shown = name or default_name(model)
    server = uvicorn.Server(
        uvicorn.Config(create_app(broker, shown, api_key), host=host, port=port, log_level="warning", access_log=False)
    )
    failure = asyncio.run(_serve(server, broker, shown))
    if failure is not None:
        typer.secho(f"error: {model} did not load: {failure}", fg=typer.colors.RED, err=True)
        for line in failure.log_tail[-8:]:
            typer.secho(f"  {line}", dim=True, err=True)
        typer.secho(f"the worker's log: {broker.log_path}", dim=True, err=True)
        raise typer.Exit(1)


async def _serve(server: Any, broker: Any, name: str) -> Any:
    """Load the model, then listen; the WorkerFailed when it does not load (nothing listens then)."""
    from coati_tui.serve.broker import WorkerFailed

    try:
        info = await broker.start()
    except WorkerFailed as exc:
        await broker.close()
        return exc
    task = asyncio.create_task(server.serve())
    while not server.started and not task.done():
        await asyncio.sleep(0.05)
    if server.started:
        host, port = server.servers[0].sockets[0].getsockname()[:2]
        where = f"[{host}]" if ":" in host else host
        print(
            f"serving {name} ({info['model']}: {info['quant']}, {info['memory_bytes'] / 2**20:.1f} MiB on "
            f"{info['device']}, loaded in {info['load_s']:.1f} s) at http://{where}:{port}/v1",
            flush=True,
        )
    await task
    return None
